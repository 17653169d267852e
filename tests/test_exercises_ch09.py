"""Chapter 9's checkers: the right answers pass, common mistakes get "not yet" with a hint that names them."""

import re

import pytest
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from shared.attention import attend, check_context, repeat_kv
from shared.exercises import check
from shared.exercises.ch09 import BUG_CONFIG
from shared.llama import LlamaAttention, LlamaModel, apply_rope, apply_rope_interleaved, halves_permutation

# -- 9.1 RMSNorm ------------------------------------------------------------------------------------


def rms_norm(x, weight, eps=1e-6):
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


def rms_norm_in_input_dtype(x, weight, eps=1e-6):  # right in float32, overflows in float16
    return weight * x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def rms_norm_not_cast_back(x, weight, eps=1e-6):  # float32 out for a float16 input
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps))


def rms_norm_centred(x, weight, eps=1e-6):  # LayerNorm without its shift
    centred = x - x.mean(dim=-1, keepdim=True)
    return weight * centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)


def rms_norm_eps_outside(x, weight, eps=1e-6):
    x32 = x.float()
    return weight * (x32 / (torch.sqrt(x32.pow(2).mean(dim=-1, keepdim=True)) + eps)).to(x.dtype)


def rms_norm_over_positions(x, weight, eps=1e-6):
    return weight * x / torch.sqrt(x.pow(2).mean(dim=-2, keepdim=True) + eps)


def rms_norm_without_weight(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def rms_norm_by_length(x, weight, eps=1e-6):
    return weight * x / x.norm(dim=-1, keepdim=True)


def rms_norm_in_place(x, weight, eps=1e-6):
    x /= torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * x


# -- 9.2 RoPE at any position -------------------------------------------------------------------------


def _rotate(x, cos, sin):  # the halves rotation, written out (the wrong answers must not call apply_rope)
    x1, x2 = rearrange(x, "... (two half) -> two ... half", two=2)
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def rope(x, positions, base=10_000.0):
    head_dim = x.shape[-1]
    frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(positions.float(), frequencies)  # (seq, head_dim / 2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = rearrange(x, "... (two half) -> two ... half", two=2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _tables(head_dim, positions, base, exponent=2):
    frequencies = base ** (-exponent * torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(positions.float(), frequencies)
    return torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)


def rope_from_zero(x, positions, base=10_000.0):
    return _rotate(x, *_tables(x.shape[-1], torch.arange(x.shape[2]), base))


def rope_over_emb_dim(x, positions, base=10_000.0):
    heads, head_dim = x.shape[1], x.shape[-1]
    frequencies = base ** (-2 * torch.arange(heads * head_dim // 2) / (heads * head_dim))
    angles = rearrange(torch.outer(positions.float(), frequencies), "t (h half) -> h t half", h=heads)
    x1, x2 = rearrange(x, "... (two half) -> two ... half", two=2)
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], dim=-1)


def rope_without_the_two(x, positions, base=10_000.0):
    return _rotate(x, *_tables(x.shape[-1], positions, base, exponent=1))


def rope_interleaved(x, positions, base=10_000.0):
    return apply_rope_interleaved(x, *_tables(x.shape[-1], positions, base))


def rope_backwards(x, positions, base=10_000.0):
    cos, sin = _tables(x.shape[-1], positions, base)
    return _rotate(x, cos, -sin)


def rope_without_rotate_half(x, positions, base=10_000.0):
    cos, sin = _tables(x.shape[-1], positions, base)
    return x * cos + x * sin


def rope_with_a_fixed_base(x, positions, base=10_000.0):
    return rope(x, positions)


# -- 9.3 Meta's layout to Hugging Face's ----------------------------------------------------------------


def to_halves_layout(weight, n_heads):
    """HF's conversion script's permute: (heads, pairs, 2) -> (heads, 2, pairs) on the rows."""
    return rearrange(weight, "(h half two) e -> (h two half) e", h=n_heads, two=2)


def to_halves_unchanged(weight, n_heads):
    return weight.clone()


def to_halves_columns_only(weight, n_heads):
    head_dim = weight.shape[0] // n_heads
    rows = rearrange(rearrange(torch.arange(weight.shape[0]), "(h d) -> h d", h=n_heads)[:, halves_permutation(
        head_dim)], "h d -> (h d)")
    return weight[:, rows]


def to_halves_as_one_head(weight, n_heads):
    return weight[halves_permutation(weight.shape[0])]


def to_halves_inverse(weight, n_heads):
    return rearrange(weight, "(h two half) e -> (h half two) e", h=n_heads, two=2)


def to_halves_fixed_heads(weight, n_heads):
    return to_halves_layout(weight, 4)


# -- 9.4 true or false -------------------------------------------------------------------------------------

RIGHT_STATEMENTS = {"a", "d", "f"}


# -- 9.6 the experiment ---------------------------------------------------------------------------------------


def without_rope(model):
    for block in model.blocks:
        block.attn.cos.fill_(1.0)
        block.attn.sin.zero_()
    return model


def without_rope_in_the_first_layer_only(model):
    model.blocks[0].attn.cos.fill_(1.0)
    model.blocks[0].attn.sin.zero_()
    return model


def without_rope_by_zeroing_everything(model):  # cos 0 as well: the queries and keys vanish
    for block in model.blocks:
        block.attn.cos.zero_()
        block.attn.sin.zero_()
    return model


def without_rope_and_new_weights(model):
    for block in model.blocks:
        block.attn.cos.fill_(1.0)
        block.attn.sin.zero_()
        torch.nn.init.normal_(block.attn.q_proj.weight)
    return model


class RMSNormOverPositions(torch.nn.Module):  # the mistake: the mean over positions (dim=-2)
    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(dim=-2, keepdim=True) + 1e-6)


def rms_over_positions_model_is_not_causal() -> bool:
    """Chapter 9's section 9.6: a norm over positions lets a later token change earlier logits."""
    from shared.exercises.ch09 import EXPERIMENT_CONFIG

    torch.manual_seed(0)
    model = LlamaModel(EXPERIMENT_CONFIG).eval()
    ids = torch.randint(0, EXPERIMENT_CONFIG.vocab_size, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % EXPERIMENT_CONFIG.vocab_size
    with torch.no_grad():
        before = torch.allclose(model(ids)[:, :-1], model(changed)[:, :-1], atol=1e-6)
        for block in model.blocks:
            block.norm1, block.norm2 = RMSNormOverPositions(), RMSNormOverPositions()
        after = torch.allclose(model(ids)[:, :-1], model(changed)[:, :-1], atol=1e-6)
    return before and not after


# -- 9.5 the cached RoPE with a bug ------------------------------------------------------------------------


class BuggyCachedAttention(LlamaAttention):  # as in the notebook: every call rotates from position 0
    def forward(self, x: Float[Tensor, "batch seq emb_dim"], cache=None) -> Float[Tensor, "batch seq emb_dim"]:
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        check_context(seq, start, self.context_length)
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        cos, sin = self.cos[:seq], self.sin[:seq]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        context = attend(q, k, v, self.mask[start : start + seq, : start + seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


class FixedCachedAttention(BuggyCachedAttention):  # the fix: rotate from the cache's length, not from 0
    def forward(self, x: Float[Tensor, "batch seq emb_dim"], cache=None) -> Float[Tensor, "batch seq emb_dim"]:
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        check_context(seq, start, self.context_length)
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        cos, sin = self.cos[start : start + seq], self.sin[start : start + seq]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        context = attend(q, k, v, self.mask[start : start + seq, : start + seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


class DelegatesToTheCourse(BuggyCachedAttention):  # hands the work to shared.llama's own forward
    def forward(self, x, cache=None):
        return LlamaAttention.forward(self, x, cache)


class NoForward(BuggyCachedAttention):
    pass


class OnlyQueriesFixed(BuggyCachedAttention):  # keys still rotated from position 0
    def forward(self, x, cache=None):
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        q = apply_rope(q, self.cos[start : start + seq], self.sin[start : start + seq])
        k = apply_rope(k, self.cos[:seq], self.sin[:seq])
        if cache is not None:
            k, v = cache.update(k, v)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        context = attend(q, k, v, self.mask[start : start + seq, : start + seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


class IgnoresTheCache(FixedCachedAttention):  # right positions, but never stores or reads the cache
    def forward(self, x, cache=None):
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        cos, sin = self.cos[start : start + seq], self.sin[start : start + seq]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        context = attend(q, k, v, self.mask[:seq, :seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


class RotatesTheValues(FixedCachedAttention):  # cached == uncached, but not LlamaAttention
    def forward(self, x, cache=None):
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        cos, sin = self.cos[start : start + seq], self.sin[start : start + seq]
        q, k, v = apply_rope(q, cos, sin), apply_rope(k, cos, sin), apply_rope(v, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        context = attend(q, k, v, self.mask[start : start + seq, : start + seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


WRONG_ANSWERS: dict[str, list] = {
    "9.1": [
        rms_norm_in_input_dtype,
        rms_norm_not_cast_back,
        rms_norm_centred,
        rms_norm_eps_outside,
        rms_norm_over_positions,
        rms_norm_without_weight,
        rms_norm_by_length,
        rms_norm_in_place,
    ],
    "9.2": [
        rope_from_zero,
        rope_over_emb_dim,
        rope_without_the_two,
        rope_interleaved,
        rope_backwards,
        rope_without_rotate_half,
        rope_with_a_fixed_base,
    ],
    "9.3": [to_halves_unchanged, to_halves_columns_only, to_halves_as_one_head, to_halves_inverse,
            to_halves_fixed_heads],
    "9.4": [{"a", "d"}, {"a", "b", "d", "f"}, {"a", "c", "d", "e", "f"}, set(), "adf", ["a", "d", "e"], {"a", "d", "g"},
            4],
    "9.5": [BuggyCachedAttention, OnlyQueriesFixed, IgnoresTheCache, RotatesTheValues,
            FixedCachedAttention(BUG_CONFIG), DelegatesToTheCourse, NoForward],
    "9.6": [(without_rope, -0.1), (without_rope, 3.0), (without_rope_in_the_first_layer_only, 0.1),
            (without_rope_by_zeroing_everything, 0.1), (without_rope_and_new_weights, 0.1), without_rope,
            (without_rope, "small")],
}


# -- the right answers pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer"),
    [("9.1", rms_norm), ("9.2", rope), ("9.3", to_halves_layout), ("9.4", RIGHT_STATEMENTS),
     ("9.4", ["A", "d", "f"]), ("9.5", FixedCachedAttention), ("9.6", (without_rope, 0.1))],
)
def test_the_right_answer_passes(number, answer):
    result = check(number, answer, quiet=True)
    assert result.passed, result


def test_a_wrong_verdict_never_says_which_statement_is_wrong():
    one_wrong = check("9.4", {"a", "d"}, quiet=True).message
    two_wrong = check("9.4", {"a", "d", "e", "f", "b"}, quiet=True).message
    assert "1 of your 6 verdicts" in one_wrong and "2 of your 6 verdicts" in two_wrong
    assert one_wrong.split("think again about")[1] == two_wrong.split("think again about")[1]  # the same pointers


def test_a_norm_over_positions_breaks_causality():
    """Section 9.6 shows this with show_error; here it is proven without the notebook."""
    assert rms_over_positions_model_is_not_causal()


def test_the_experiment_without_positions_is_worse_but_learns():
    from shared.exercises.ch09 import experiment

    runs = experiment(without_rope)
    assert runs["with RoPE"] < 6.0 and runs["without RoPE"] < 6.5  # both learned (ln 1024 = 6.93)
    assert runs["without RoPE"] - runs["with RoPE"] > -0.05


# -- the hints name the mistake ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer", "hint"),
    [
        ("9.1", rms_norm_in_input_dtype, "overflow float16"),
        ("9.1", rms_norm_not_cast_back, ".to(x.dtype)"),
        ("9.1", rms_norm_centred, "that is LayerNorm"),
        ("9.1", rms_norm_eps_outside, "outside the square root"),
        ("9.1", rms_norm_over_positions, "averaged over the positions"),
        ("9.1", rms_norm_without_weight, "learned scale is missing"),
        ("9.1", rms_norm_by_length, "mean of the squares, not their sum"),
        ("9.1", rms_norm_in_place, "in place"),
        ("9.2", rope_from_zero, "as if they sat at positions 0..5"),
        ("9.2", rope_over_emb_dim, "over the whole embedding"),
        ("9.2", rope_without_the_two, "the exponent is -2i / head_dim"),
        ("9.2", rope_interleaved, "Meta's layout"),
        ("9.2", rope_backwards, "the wrong way"),
        ("9.2", rope_without_rotate_half, "not a rotation"),
        ("9.2", rope_with_a_fixed_base, "use the base argument"),
        ("9.3", to_halves_unchanged, "unchanged"),
        ("9.3", to_halves_columns_only, "reordered the columns"),
        ("9.3", to_halves_as_one_head, "as if the matrix were one head"),
        ("9.3", to_halves_inverse, "inverse permutation"),
        ("9.3", to_halves_fixed_heads, "not for W_k"),
        ("9.1", lambda x, w, eps=1e-6: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps),
         "the course's own rms_norm"),
        ("9.2", lambda x, p, base=10_000.0: apply_rope(x, *_tables(x.shape[-1], p, base)), "course's own apply_rope"),
        ("9.4", {"a", "d"}, "1 of your 6 verdicts"),
        ("9.4", {"a", "d", "g"}, "are not statements"),
        ("9.5", BuggyCachedAttention, "where a token sits in the whole sequence"),
        ("9.5", OnlyQueriesFixed, "from position 8 on"),
        ("9.5", IgnoresTheCache, "cache.update(k, v)"),
        ("9.5", RotatesTheValues, "Without a cache, a model with your attention differs"),
        ("9.5", FixedCachedAttention(BUG_CONFIG), "Pass the class itself"),
        ("9.5", DelegatesToTheCourse, "course's own forward"),
        ("9.5", NoForward, "does not define forward"),
        ("9.6", (without_rope, -0.1), "does better"),
        ("9.6", (without_rope, 3.0), "not blind to order"),
        ("9.6", (without_rope_in_the_first_layer_only, 0.1), "still rotates"),
        ("9.6", (without_rope_and_new_weights, 0.1), "changed the model's weights"),
    ],
)
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


def test_checkers_leave_the_learners_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("9.1", rms_norm), ("9.2", rope), ("9.3", to_halves_layout), ("9.4", RIGHT_STATEMENTS),
                           ("9.5", FixedCachedAttention), ("9.6", (without_rope, 0.1))]:
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)


def test_the_halves_layout_is_hugging_faces_permute():
    """The solution is the ``permute`` of Hugging Face's conversion script for Meta's checkpoints."""
    n_heads, head_dim, emb_dim = 4, 8, 32
    w = torch.randn(n_heads * head_dim, emb_dim)
    hf = w.view(n_heads, head_dim // 2, 2, emb_dim).transpose(1, 2).reshape(n_heads * head_dim, emb_dim)
    assert torch.equal(to_halves_layout(w, n_heads), hf)


def test_the_bug_is_visible_in_the_checkers_model():
    """The checker's model has weights large enough that the bug moves the logits by far more than rounding."""
    result = check("9.5", BuggyCachedAttention, quiet=True)
    gap = float(re.search(r"differ by up to ([0-9.]+(?:e[+-]?[0-9]+)?)\. ", result.message).group(1))
    assert gap > 0.1

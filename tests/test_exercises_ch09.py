"""Chapter 9's checkers: the right answers pass, common mistakes get "not yet" with a hint that names them."""

import re

import pytest
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from shared.attention import attend, check_context, repeat_kv
from shared.exercises import check
from shared.exercises.ch09 import BUG_CONFIG, COUNT_CONFIG
from shared.llama import LlamaAttention, LlamaModel, apply_rope, apply_rope_interleaved, halves_permutation
from shared.model import count_parameters

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
    return apply_rope(x, *_tables(x.shape[-1], torch.arange(x.shape[2]), base))


def rope_over_emb_dim(x, positions, base=10_000.0):
    heads, head_dim = x.shape[1], x.shape[-1]
    frequencies = base ** (-2 * torch.arange(heads * head_dim // 2) / (heads * head_dim))
    angles = rearrange(torch.outer(positions.float(), frequencies), "t (h half) -> h t half", h=heads)
    x1, x2 = rearrange(x, "... (two half) -> two ... half", two=2)
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], dim=-1)


def rope_without_the_two(x, positions, base=10_000.0):
    return apply_rope(x, *_tables(x.shape[-1], positions, base, exponent=1))


def rope_interleaved(x, positions, base=10_000.0):
    return apply_rope_interleaved(x, *_tables(x.shape[-1], positions, base))


def rope_backwards(x, positions, base=10_000.0):
    cos, sin = _tables(x.shape[-1], positions, base)
    return apply_rope(x, cos, -sin)


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


# -- 9.4 the parameter count ---------------------------------------------------------------------------


def count_by_formula(c) -> int:
    d, kv = c.emb_dim, c.kv_heads * c.head_dim
    block = 2 * d + d * d + 2 * kv * d + d * d + 3 * c.hidden_dim * d
    return c.vocab_size * d + c.n_layers * block + d + c.vocab_size * d


RIGHT_COUNT = count_by_formula(COUNT_CONFIG)
D, V, N = COUNT_CONFIG.emb_dim, COUNT_CONFIG.vocab_size, COUNT_CONFIG.n_layers


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


class FixedCachedAttention(LlamaAttention):
    """The fix is shared.llama's own forward, which rotates from the cache's length, not from 0."""


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
    "9.4": [
        RIGHT_COUNT - V * D,  # took the head for tied
        RIGHT_COUNT + COUNT_CONFIG.context_length * D,  # a position table
        RIGHT_COUNT + N * 2 * (D - 2 * COUNT_CONFIG.head_dim) * D,  # k/v with every head
        RIGHT_COUNT - N * COUNT_CONFIG.hidden_dim * D,  # two feed-forward matrices
        RIGHT_COUNT + 1,
        float(RIGHT_COUNT) + 0.5,
        (RIGHT_COUNT,),
    ],
    "9.5": [BuggyCachedAttention, OnlyQueriesFixed, IgnoresTheCache, RotatesTheValues,
            FixedCachedAttention(BUG_CONFIG)],
}


# -- the right answers pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer"),
    [("9.1", rms_norm), ("9.2", rope), ("9.3", to_halves_layout), ("9.4", RIGHT_COUNT),
     ("9.5", FixedCachedAttention)],
)
def test_the_right_answer_passes(number, answer):
    result = check(number, answer, quiet=True)
    assert result.passed, result


def test_the_parameter_formula_agrees_with_count_parameters():
    assert count_parameters(LlamaModel(COUNT_CONFIG)) == RIGHT_COUNT == 586_080  # the solutions notebook's number
    assert "586,080" in check("9.4", 586_080, quiet=True).message


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
        ("9.4", RIGHT_COUNT - V * D, "untied"),
        ("9.4", RIGHT_COUNT + COUNT_CONFIG.context_length * D, "position table"),
        ("9.4", RIGHT_COUNT + N * 2 * (D - 2 * COUNT_CONFIG.head_dim) * D, "one head per query head"),
        ("9.4", RIGHT_COUNT - N * COUNT_CONFIG.hidden_dim * D, "SwiGLU has three"),
        ("9.4", RIGHT_COUNT + (2 * N + 1) * D - V * D, "shift"),
        ("9.4", 1, "Count part by part"),
        ("9.5", BuggyCachedAttention, "starts at cache.seq_len"),
        ("9.5", OnlyQueriesFixed, "from position 8 on"),
        ("9.5", IgnoresTheCache, "cache.update(k, v)"),
        ("9.5", RotatesTheValues, "Without a cache, a model with your attention differs"),
        ("9.5", FixedCachedAttention(BUG_CONFIG), "Pass the class itself"),
    ],
)
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


def test_checkers_leave_the_learners_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("9.1", rms_norm), ("9.2", rope), ("9.3", to_halves_layout), ("9.4", RIGHT_COUNT),
                           ("9.5", FixedCachedAttention)]:
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

"""Chapter 9's exercises: RMSNorm in float32, RoPE at any position, Meta's checkpoint layout turned
into Hugging Face's, true or false about the Llama's parts, a bug hunt in RoPE with a KV cache, and an
experiment: a tiny Llama trained with and without RoPE.

Every checker makes its own seeded inputs (in a forked random state, so the learner's random
stream is left as it was) and compares the answer with ``shared.llama`` or with a property only
the right answer has. Where a wrong answer matches a common mistake, the hint names the mistake.
"""

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from shared.attention import repeat_kv
from shared.exercises import (
    NotYet,
    as_number,
    describe,
    exercise,
    expect,
    own_work,
    run_answer,
    seeded,
    true_statements,
)
from shared.llama import (
    LlamaAttention,
    LlamaConfig,
    LlamaModel,
    RMSNorm,
    apply_rope,
    apply_rope_interleaved,
    halves_permutation,
    load_llama_from_hf,
    rope_angles,
    rotate_half,
)

__all__ = ["BUG_CONFIG", "EXPERIMENT_CONFIG", "STATEMENTS", "experiment"]

# 9.5: small, with grouped-query attention, so that a fix must keep repeat_kv working too.
BUG_CONFIG = LlamaConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                         hidden_dim=96)


def _near(a: Tensor, b: Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=atol))


# -- 9.1 ---------------------------------------------------------------------------------------------

EMB = 32


def _rms_inputs() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(91)
    x = 2.0 + 5.0 * torch.randn(2, 4, EMB, generator=generator)  # an offset: centring would change it
    # One token of tiny features: its mean square (about 1e-8) is far below eps = 1e-6, so only
    # there does it matter whether eps sits under the square root.
    x[1, 2] = 1e-4 * torch.randn(EMB, generator=generator)
    weight = 1.0 + 0.5 * torch.randn(EMB, generator=generator)
    # float16 with features around 300: their squares (about 90,000) exceed float16's largest
    # number, 65,504, so a norm computed in float16 overflows.
    big = (300.0 + 30.0 * torch.randn(2, 3, EMB, generator=generator)).half()
    return x, weight, big


def _rms_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    norm = RMSNorm(x.shape[-1], eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@exercise("9.1", "RMSNorm by hand, in float32", level=1, minutes=10)
def check_rms_norm(rms_norm) -> str:
    expect(callable(rms_norm), f"Pass your function itself, not {type(rms_norm).__name__}.")
    own_work(rms_norm, RMSNorm, nn.RMSNorm, F.rms_norm)
    x, weight, big = _rms_inputs()
    eps = 1e-6
    x_given = x.clone()
    out = run_answer(rms_norm, x_given, weight, eps)
    expect(isinstance(out, Tensor) and tuple(out.shape) == tuple(x.shape),
           f"rms_norm of a {tuple(x.shape)} tensor (batch, seq, emb_dim) should keep that shape; yours returned "
           f"{describe(out)}. Take the mean over the last axis with keepdim=True, so it broadcasts back.")
    expect(torch.equal(x_given, x), "Your function changed its input x in place; compute a new tensor instead.")
    expected = _rms_reference(x, weight, eps)
    if not _near(out, expected, 1e-4):
        ms = x.pow(2).mean(dim=-1, keepdim=True)
        mistakes = [
            ((x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + eps)
             * weight, "You centred the features (subtracted their mean): that is LayerNorm. RMSNorm only divides "
                       "by the root mean square sqrt(mean(x²) + eps), so an offset survives."),
            (x / (torch.sqrt(ms) + eps) * weight,
             "You added eps outside the square root. It belongs inside, sqrt(mean(x²) + eps): the two differ only "
             "for a token whose mean square is near eps, like the tiny token at [1, 2] of the checker's input."),
            (x / torch.sqrt(x.pow(2).mean(dim=-2, keepdim=True) + eps) * weight,
             "You averaged over the positions (dim=-2). The mean runs over each token's features, the last axis: "
             "a norm over positions lets every token see the others, future ones included (section 9.6)."),
            (x / torch.sqrt(ms + eps), "The learned scale is missing: multiply by weight at the end."),
            (x / (ms + eps) * weight, "You divided by the mean square; divide by its square root."),
            (x / x.norm(dim=-1, keepdim=True) * weight,
             f"You divided by the length ||x||, which is sqrt(emb_dim) = {math.sqrt(EMB):.2f} times the root mean "
             "square: take the mean of the squares, not their sum."),
        ]
        for candidate, hint in mistakes:
            if _near(out, candidate, 1e-4):
                raise NotYet(hint)
        wrong = (out - expected).abs().amax(dim=-1) > 1e-4  # (batch, seq): which tokens are off
        if wrong.sum() == 1 and wrong[1, 2]:
            raise NotYet("Every token is right except the tiny one at [1, 2] (its mean square is below eps): "
                         "check where eps goes, sqrt(mean(x²) + eps).")
        raise NotYet(f"The largest difference from shared.llama.RMSNorm is {(out - expected).abs().max().item():.3g}. "
                     "Per token: divide the features by sqrt(mean of their squares + eps), then multiply by weight "
                     "(section 9.2).")
    weight16 = weight.half()
    out16 = run_answer(rms_norm, big, weight16, eps)
    expected16 = _rms_reference(big, weight16, eps)
    expect(isinstance(out16, Tensor) and tuple(out16.shape) == tuple(big.shape),
           f"On a float16 input of shape {tuple(big.shape)} your function returned {describe(out16)}.")
    if not bool(torch.isfinite(out16).all()) or bool((out16 == 0).any()):
        raise NotYet("Right in float32, but on a float16 input with features around 300 your output holds zeros, "
                     "inf or NaN: the squares (about 90,000) overflow float16, whose largest number is 65,504. Do "
                     "the arithmetic in float32 (x.float()), as Llama does, and cast back before the scale.")
    expect(out16.dtype == expected16.dtype,
           f"On a float16 input (and float16 weight) your output is {out16.dtype}; return float16, like the model "
           "around the norm: cast the normalised values back with .to(x.dtype) before multiplying by weight.")
    expect(_near(out16, expected16, 1e-2),
           f"On the float16 input your output differs from shared.llama.RMSNorm by up to "
           f"{(out16.float() - expected16.float()).abs().max().item():.3g}: compute in float32, cast back, then scale.")
    return ("Matches shared.llama.RMSNorm on float32 tokens (one of them tiny: eps matters) and on float16 tokens "
            "whose squares overflow float16.")


# -- 9.2 ---------------------------------------------------------------------------------------------

ROPE_SHAPE = (2, 4, 6, 16)  # batch, heads, seq, head_dim
ROPE_POSITIONS = torch.arange(37, 43)  # a chunk after 37 cached tokens


def _rope_expected(x: Tensor, positions: Tensor, base: float) -> Tensor:
    cos, sin = rope_angles(x.shape[-1], int(positions.max()) + 1, base)
    return apply_rope(x, cos[positions], sin[positions])


def _rope_over_emb_dim(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Section 9.6's mistake: frequencies over the whole embedding, split across the heads."""
    heads, head_dim = x.shape[1], x.shape[-1]
    emb_dim = heads * head_dim
    frequencies = base ** (-2 * torch.arange(emb_dim // 2) / emb_dim)
    angles = rearrange(torch.outer(positions.float(), frequencies), "t (h half) -> h t half", h=heads)
    x1, x2 = rearrange(x, "... (two half) -> two ... half", two=2)
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], dim=-1)


def _rope_without_the_two(x: Tensor, positions: Tensor, base: float) -> Tensor:
    head_dim = x.shape[-1]
    angles = torch.outer(positions.float(), base ** (-torch.arange(head_dim // 2) / head_dim))
    return apply_rope(x, torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1))


@exercise("9.2", "RoPE at any position", level=2, minutes=15)
def check_rope(rope) -> str:
    expect(callable(rope), f"Pass your function itself, not {type(rope).__name__}.")
    own_work(rope, apply_rope, rope_angles, rotate_half)
    x = torch.randn(*ROPE_SHAPE, generator=torch.Generator().manual_seed(92))
    positions = ROPE_POSITIONS.clone()
    x_given = x.clone()
    out = run_answer(rope, x_given, positions, 10_000.0)
    expect(isinstance(out, Tensor) and tuple(out.shape) == tuple(x.shape),
           f"rope of a {tuple(x.shape)} tensor (batch, heads, seq, head_dim) should keep its shape; yours returned "
           f"{describe(out)}.")
    expect(torch.equal(x_given, x), "Your function changed its input x in place; compute a new tensor instead.")
    expected = _rope_expected(x, positions, 10_000.0)
    if not _near(out, expected, 1e-4):
        cos, sin = rope_angles(x.shape[-1], 64)
        here = (cos[positions], sin[positions])
        at_zero = (cos[: len(positions)], sin[: len(positions)])
        mistakes = [
            (apply_rope(x, *at_zero),
             f"You rotated the tokens as if they sat at positions 0..{len(positions) - 1}; use the positions given "
             f"(here {positions[0].item()}..{positions[-1].item()}): angle = position × frequency."),
            (_rope_over_emb_dim(x, positions, 10_000.0),
             "You computed the frequencies over the whole embedding (heads × head_dim) and split them across the "
             "heads, so each head got its own band. Every head uses the same head_dim / 2 frequencies, "
             "base^(-2i / head_dim) (section 9.6)."),
            (_rope_without_the_two(x, positions, 10_000.0),
             "Your frequencies are base^(-i / head_dim): the exponent is -2i / head_dim, so that the slowest pair "
             "turns at about 1/base per position."),
            (apply_rope_interleaved(x, *here),
             "You paired neighbouring features (x[0], x[1]), (x[2], x[3]), ...: Meta's layout. Here, as in Hugging "
             "Face and shared.llama, pair i is (x[i], x[i + head_dim/2]): the two halves of the head."),
            (apply_rope(x, here[0], -here[1]),
             "You rotated the wrong way (by minus the angle). The first member of a pair becomes x1·cos - x2·sin, "
             "the second x1·sin + x2·cos: rotate_half maps (x1, x2) to (-x2, x1)."),
            (x * here[0] + x * here[1],
             "Without rotate_half, x·cos + x·sin is not a rotation (it changes the lengths of the vectors). The "
             "second term needs the partner of each feature: x·cos + rotate_half(x)·sin."),
        ]
        for candidate, hint in mistakes:
            if _near(out, candidate, 1e-4):
                raise NotYet(hint)
        raise NotYet(f"The largest difference from shared.llama.apply_rope at positions {positions.tolist()} is "
                     f"{(out - expected).abs().max().item():.3g}. Pair i = (x[i], x[i + head_dim/2]) turns by "
                     "position × base^(-2i / head_dim).")
    out_llama3 = run_answer(rope, x.clone(), positions, 500_000.0)
    expect(isinstance(out_llama3, Tensor) and _near(out_llama3, _rope_expected(x, positions, 500_000.0), 1e-4),
           "Right with base 10,000, but not with base 500,000 (Llama 3's rope_theta): use the base argument.")
    return ("Matches shared.llama.apply_rope at positions 37..42, with base 10,000 and with Llama 3's 500,000; every "
            "head uses the same frequencies.")


# -- 9.3 ---------------------------------------------------------------------------------------------

HEADS, KV_HEADS, HEAD_DIM, LAYOUT_EMB = 4, 2, 8, 32


def _rows_per_head(n_heads: int, head_dim: int) -> Tensor:
    rows = rearrange(torch.arange(n_heads * head_dim), "(h d) -> h d", h=n_heads)[:, halves_permutation(head_dim)]
    return rearrange(rows, "h d -> (h d)")


def _scores(x: Tensor, w_q: Tensor, w_k: Tensor, rope) -> Tensor:
    seq = x.shape[1]
    cos, sin = rope_angles(HEAD_DIM, seq)
    q = rope(rearrange(F.linear(x, w_q), "b t (h d) -> b h t d", h=HEADS), cos, sin)
    k = rope(rearrange(F.linear(x, w_k), "b t (h d) -> b h t d", h=KV_HEADS), cos, sin)
    return q @ rearrange(repeat_kv(k, HEADS // KV_HEADS), "b h t d -> b h d t")


@exercise("9.3", "Meta's checkpoint layout to Hugging Face's", level=2, minutes=15)
def check_to_halves(to_halves_layout) -> str:
    expect(callable(to_halves_layout), f"Pass your function itself, not {type(to_halves_layout).__name__}.")
    own_work(to_halves_layout, load_llama_from_hf)
    generator = torch.Generator().manual_seed(93)
    w_q = torch.randn(HEADS * HEAD_DIM, LAYOUT_EMB, generator=generator) / math.sqrt(LAYOUT_EMB)
    w_k = torch.randn(KV_HEADS * HEAD_DIM, LAYOUT_EMB, generator=generator) / math.sqrt(LAYOUT_EMB)
    x = torch.randn(1, 7, LAYOUT_EMB, generator=generator)
    given = w_q.clone()
    got_q = run_answer(to_halves_layout, given, HEADS)
    expect(torch.equal(given, w_q), "Your function changed the matrix it was given; return a new one instead.")
    expect(isinstance(got_q, Tensor) and tuple(got_q.shape) == tuple(w_q.shape),
           f"W_q has shape {tuple(w_q.shape)} (n_heads * head_dim, emb_dim) and keeps it; yours returned "
           f"{describe(got_q)}.")
    expected_q = w_q[_rows_per_head(HEADS, HEAD_DIM)]
    if not torch.equal(got_q, expected_q):
        perm = halves_permutation(HEAD_DIM)
        inverse = torch.argsort(perm)
        mistakes = [
            (w_q, "You returned the matrix unchanged: the rows of each head must be reordered from interleaved "
                  "pairs to halves."),
            (w_q[:, _rows_per_head(HEADS, HEAD_DIM)],
             "You reordered the columns. The columns are the input features (emb_dim), which RoPE never touches; "
             "the rotation pairs *output* features, the rows of W_q."),
            (w_q[halves_permutation(HEADS * HEAD_DIM)],
             "You reordered all the rows at once, as if the matrix were one head, which mixes rows of different "
             "heads. Reorder within each head: its head_dim rows take the order of halves_permutation(head_dim)."),
            (w_q[rearrange(rearrange(torch.arange(HEADS * HEAD_DIM), "(h d) -> h d", h=HEADS)[:, inverse],
                           "h d -> (h d)")],
             "You applied the inverse permutation, which turns halves into interleaved pairs. The new row j of a "
             "head is its old row halves_permutation(head_dim)[j]."),
        ]
        for candidate, hint in mistakes:
            if torch.equal(got_q, candidate):
                raise NotYet(hint)
        raise NotYet("Not the expected order yet. Within each head, the new row j is the old row "
                     "halves_permutation(head_dim)[j]; the heads keep their places, one block of head_dim rows each.")
    got_k = run_answer(to_halves_layout, w_k.clone(), KV_HEADS)
    expect(isinstance(got_k, Tensor) and torch.equal(got_k, w_k[_rows_per_head(KV_HEADS, HEAD_DIM)]),
           f"Right for W_q with {HEADS} heads, but not for W_k with {KV_HEADS} key/value heads "
           f"({tuple(w_k.shape)}): work out head_dim from the n_heads argument, not from a fixed number of heads.")
    meta, hugging_face = _scores(x, w_q, w_k, apply_rope_interleaved), _scores(x, got_q, got_k, apply_rope)
    expect(_near(meta, hugging_face, 1e-5), "Your rows are in the expected order, but the scores still differ.")
    return (f"With your W_q ({HEADS} heads) and W_k ({KV_HEADS} key/value heads), halves-layout RoPE gives the same "
            "attention scores as Meta's interleaved RoPE with the original matrices.")


# -- 9.4 ---------------------------------------------------------------------------------------------

# Statements about this chapter's parts; the answer is the set of letters of the true ones.
STATEMENTS = {
    "a": "With RoPE, the score of a query at position m and a key at position n depends on m and n only "
         "through m - n.",
    "b": "RoPE learns one rotation angle per position, so a longer context adds parameters.",
    "c": "Rotating the values as well would keep attention's output unchanged when the whole sequence shifts.",
    "d": "Every head of a layer uses the same RoPE frequencies, computed over head_dim.",
    "e": "Grouped-query attention shrinks the KV cache by reducing the number of query heads.",
    "f": "RMSNorm computes its statistic over the features of one token, never over positions.",
}
_TRUE = {"a", "d", "f"}
_WHY = {  # what to think about, per statement, without saying which way it goes
    "a": "section 9.3's table of scores and its diagonals",
    "b": "what rope_angles computes from, and whether count_parameters changes with context_length",
    "c": "section 9.6's first mistake and its shift check",
    "d": "section 9.6's frequencies over emb_dim, and what goes wrong there",
    "e": "which projections get fewer rows in section 9.5's GQA cell",
    "f": "section 9.6's norm over positions and the causality check",
}


@exercise("9.4", "True or false: the Llama's parts", level=1, minutes=5)
def check_statements(answer) -> str:
    true_statements(answer, STATEMENTS, _TRUE, _WHY)
    return ("a, d and f are true. b: RoPE's angles are computed, not learned; c: rotated values carry absolute "
            "positions into the output; e: GQA keeps every query head and shares fewer key/value heads.")


# -- 9.5 ---------------------------------------------------------------------------------------------


def _large_weights_(model: nn.Module, generator: torch.Generator) -> None:
    """Weights far larger than at initialisation, so that attention is sharp and every position matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(("norm1.weight", "norm2.weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]) * 2.0)


def _with_attention(reference: LlamaModel, attention_class: type) -> LlamaModel:
    model = LlamaModel(reference.config)
    model.load_state_dict(reference.state_dict())
    for block in model.blocks:
        attention = attention_class(reference.config)
        try:
            attention.load_state_dict(block.attn.state_dict())
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[-1].strip()
            raise NotYet("LlamaAttention's weights do not load into your class: keep its __init__ (subclass "
                         f"LlamaAttention and override forward only). PyTorch says: {detail}") from None
        block.attn = attention
    return model.eval()


@exercise("9.5", "Find the bug: RoPE with a KV cache", level=3, minutes=20)
def check_cached_rope(attention_class) -> str:
    expect(isinstance(attention_class, type) and issubclass(attention_class, nn.Module),
           f'Pass the class itself (check("9.5", FixedCachedAttention)), not {type(attention_class).__name__}.')
    expect("forward" in vars(attention_class), "Your class does not define forward: write the corrected forward in it.")
    own_work(attention_class, LlamaAttention.forward)  # super().forward would be the buggy one, or the course's
    config, prompt = BUG_CONFIG, 8
    generator = torch.Generator().manual_seed(95)
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=generator)
    with seeded(95), torch.no_grad():
        reference = LlamaModel(config).eval()
        _large_weights_(reference, generator)
        model = _with_attention(reference, attention_class)
        expected = reference(ids)
        uncached = run_answer(model, ids)
        expect(isinstance(uncached, Tensor) and uncached.shape == expected.shape,
               f"The model with your attention returned {describe(uncached)} for ids of shape {tuple(ids.shape)}; "
               f"expected logits of shape {tuple(expected.shape)}.")
        gap = (uncached - expected).abs().max().item()
        expect(gap < 1e-4,
               f"Without a cache, a model with your attention differs from LlamaModel by up to {gap:.3g}: the bug is "
               "only in how cached calls are rotated, so leave the rest of LlamaAttention's forward as it is.")
        # The prompt in one call, then three tokens in one call, then one token per call.
        cache = model.new_cache()
        pieces = [run_answer(model, ids[:, :prompt], cache), run_answer(model, ids[:, prompt : prompt + 3], cache)]
        pieces += [run_answer(model, ids[:, t : t + 1], cache) for t in range(prompt + 3, ids.shape[1])]
        cached = torch.cat(pieces, dim=1)
    stored = [layer.seq_len for layer in cache.layers]
    expect(stored == [ids.shape[1]] * config.n_layers,
           f"After {ids.shape[1]} tokens the cache of each layer should hold {ids.shape[1]} positions; with your "
           f"attention they hold {stored}. Store every call's rotated keys and values with cache.update(k, v) and "
           "attend over everything it returns.")
    off = (cached - expected).abs().amax(dim=(0, 2)) > 1e-4  # (seq,): which positions are wrong
    if bool(off.any()):
        first = int(off.nonzero()[0])
        raise NotYet(
            f"Without a cache your model matches LlamaModel, but with one it does not: from position {first} on (the "
            f"first token fed after the {prompt}-token prompt) the logits differ by up to "
            f"{(cached - expected).abs().max().item():.3g}. Which part of the computation depends on where a token "
            "sits in the whole sequence, and where in it does a token fed after the cached ones sit?"
        )
    return ("With your attention, logits computed with a KV cache (a prompt of 8 tokens, then 3 at once, then one at a "
            "time) equal those of the whole sequence at once, with grouped-query attention.")


# -- 9.6 ---------------------------------------------------------------------------------------------

# A tiny Llama that trains in a few seconds on one thread; the experiment compares it with and without RoPE.
EXPERIMENT_CONFIG = LlamaConfig(vocab_size=1_024, context_length=32, emb_dim=64, n_heads=4, n_layers=2,
                                hidden_dim=192)
EXPERIMENT_STEPS = 80


@functools.cache
def _experiment_data() -> tuple[list[int], list[int]]:
    from shared.corpus import shakespeare_bpe, tiny_shakespeare
    from shared.datasets import train_val_split

    tokenizer = shakespeare_bpe(EXPERIMENT_CONFIG.vocab_size)
    train_text, val_text = train_val_split(tiny_shakespeare())
    return tokenizer.encode(train_text[:200_000]), tokenizer.encode(val_text[:30_000])


def _validation_loss(change, seed: int = 0) -> float:
    """Train the tiny Llama (changed by ``change`` right after it is built) and return its validation loss."""
    from shared.datasets import create_dataloader
    from shared.shapes import shape_checks
    from shared.train import TrainConfig, evaluate_loss, train

    train_ids, val_ids = _experiment_data()
    context = EXPERIMENT_CONFIG.context_length
    with seeded(seed), shape_checks(False):
        model = change(LlamaModel(EXPERIMENT_CONFIG))
        loader = create_dataloader(train_ids, batch_size=16, context_length=context, stride=context, seed=seed)
        val = create_dataloader(val_ids, batch_size=64, context_length=context, shuffle=False)
        train(model, loader, None, TrainConfig(max_steps=EXPERIMENT_STEPS, lr=1e-2, warmup_steps=8,
                                               eval_every=EXPERIMENT_STEPS, progress=False), device="cpu")
        return evaluate_loss(model, val)


_RUNS: dict[str, float] = {}


def experiment(without_rope) -> dict[str, float]:
    """9.6's experiment: the tiny Llama trained for 80 steps as it is and changed by ``without_rope``;
    returns each one's validation loss (nats per token). A few seconds per run on one thread."""
    if "with RoPE" not in _RUNS:
        _RUNS["with RoPE"] = _validation_loss(lambda model: model)
    return {"with RoPE": _RUNS["with RoPE"], "without RoPE": _validation_loss(without_rope)}


def _rotation_is_identity(model: nn.Module) -> bool:
    attention = [m for m in model.modules() if isinstance(m, LlamaAttention)]
    return bool(attention) and all(bool((a.cos == 1).all()) and bool((a.sin == 0).all()) for a in attention)


@exercise("9.6", "Experiment: a Llama without positions", level=2, minutes=15)
def check_experiment(answer) -> str:
    expect(isinstance(answer, tuple) and len(answer) == 2,
           'Pass a tuple: check("9.6", (without_rope, predicted_gap)).')
    without_rope, predicted = answer
    expect(callable(without_rope), f"The first item should be your function without_rope, not "
                                   f"{type(without_rope).__name__}.")
    if predicted is ...:
        raise NotImplementedError  # the prediction is still a stub
    predicted = as_number(predicted, "predicted_gap")
    with seeded(96), torch.no_grad():
        reference = LlamaModel(EXPERIMENT_CONFIG)
        weights = {k: v.clone() for k, v in reference.state_dict().items()}
        changed = run_answer(without_rope, reference)
    expect(isinstance(changed, LlamaModel),
           f"without_rope should return the model; yours returned {describe(changed)}.")
    expect(_rotation_is_identity(changed),
           "In the model your function returns, some attention layer still rotates: make every layer's rotation "
           "the identity (an angle of 0 at every position: cos 1, sin 0), so that no position enters anywhere.")
    expect(all(torch.equal(v, changed.state_dict()[k]) for k, v in weights.items()),
           "Your function changed the model's weights; change only the rotations.")
    if predicted < 0:
        raise NotYet("You predict that the model without positions does better. Think about what a causal model "
                     "without positions can still tell apart, and what it cannot: 'dog bites man' and 'man bites "
                     "dog' end the same way for it.")
    if predicted > 1.0:
        raise NotYet("You predict a large gap. A causal model without positions is not blind to order: the mask "
                     "still lets each token see only what came before it, so it can still count and recall.")
    runs = experiment(without_rope)
    gap = runs["without RoPE"] - runs["with RoPE"]
    expect(gap > -0.05, f"The run gave a gap of {gap:+.3f} nats per token, outside what the experiment gives on any "
                        "machine: check that your function changes only the rotations.")
    return (f"Without RoPE the tiny Llama's validation loss was {runs['without RoPE']:.3f} nats per token, with RoPE "
            f"{runs['with RoPE']:.3f}: a gap of {gap:+.3f}. You predicted {predicted:+.3f}. Explain the size of the "
            "gap to yourself: what can the mask alone tell the model about order, and what is left for RoPE?")

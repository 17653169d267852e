"""Chapter 5's exercises: splitting and merging heads, what ablating a head changes, a bug hunt in the
merge, grouped-query attention's ``repeat_kv``, and the memory of the attention weights.
"""

import copy
import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from shared.attention import (
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    attend,
    attention_weights,
    causal_mask,
    repeat_kv,
)
from shared.exercises import NotYet, close, exercise, expect, own_work, rounded, run_answer, seeded

# -- 5.1 ---------------------------------------------------------------------------------------------


@exercise("5.1", "Split and merge the heads", level=1, minutes=10)
def check_split_and_merge(answer: object) -> str:
    expect(isinstance(answer, (tuple, list)) and len(answer) == 2,
           "Pass both functions as a pair: check(\"5.1\", (split_heads, merge_heads)).")
    split_heads, merge_heads = answer
    batch, seq, n_heads, head_dim = 2, 5, 3, 4
    # Each number is its own position in memory, so a hint can say where a value came from.
    x = torch.arange(batch * seq * n_heads * head_dim, dtype=torch.float32).reshape(batch, seq, n_heads * head_dim)
    expected = rearrange(x, "b t (h d) -> b h t d", h=n_heads)
    got = run_answer(split_heads, x, n_heads)
    expect(isinstance(got, Tensor) and tuple(got.shape) == tuple(expected.shape),
           f"split_heads of a (2, 5, 12) tensor into 3 heads should give (2, 3, 5, 4) = (batch, heads, seq, "
           f"head_dim); yours gives {tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}.")
    if not torch.equal(got, expected):
        head_1 = f"The input's numbers are their own positions in memory; head 1 of position 0 holds " \
                 f"{rounded(got[0, 1, 0], 1)} in yours. Which block of position 0's row should it own?"
        if torch.equal(got, x.reshape(batch, n_heads, seq, head_dim)):
            raise NotYet(f"A plain reshape to (batch, heads, seq, head_dim) has the right shape but reads the memory "
                         f"in the wrong order, mixing positions and heads. {head_1} Split the last axis, then move "
                         "the head axis: \"b t (h d) -> b h t d\".")
        if torch.equal(got, rearrange(x, "b t (d h) -> b h t d", h=n_heads)):
            raise NotYet(f"Your heads take every third number (interleaved): in \"(d h)\" the head index varies "
                         f"fastest. Each head owns a contiguous block of head_dim numbers: \"(h d)\". {head_1}")
        raise NotYet(f"split_heads puts the numbers in the wrong places. {head_1}")
    merged = run_answer(merge_heads, expected)
    expect(isinstance(merged, Tensor) and tuple(merged.shape) == tuple(x.shape),
           f"merge_heads of a (2, 3, 5, 4) tensor should give (2, 5, 12) = (batch, seq, d_out); yours gives "
           f"{tuple(merged.shape) if isinstance(merged, Tensor) else type(merged).__name__}.")
    if not torch.equal(merged, x):
        order = f"Position 0 should read head 0's four numbers, then head 1's, then head 2's; yours reads " \
                f"{rounded(merged[0, 0], 1)}."
        if torch.equal(merged, rearrange(expected, "b h t d -> b t (d h)")):
            raise NotYet(f"Your merge interleaves the heads (\"(d h)\"). {order}")
        raise NotYet(f"merge_heads(split_heads(x)) should give x back. {order}")
    with seeded(51):
        mha = MultiHeadAttention(12, 12, n_heads, context_length=8)
    g = torch.Generator().manual_seed(52)
    inputs = torch.randn(2, 5, 12, generator=g)
    with torch.no_grad():
        q, k, v = mha.qkv(inputs).chunk(3, dim=-1)  # qkv's rows: all queries, then all keys, then all values
        context = attend(split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads), causal_mask(5))
        ours, theirs = mha.out_proj(merge_heads(context)), mha(inputs)
    expect(close(ours, theirs), "Your functions match the patterns on one tensor but not inside multi-head "
                                "attention; do they use the n_heads argument rather than a fixed 3?")
    return ("Your split and merge equal the patterns \"b t (h d) -> b h t d\" and back, and with them attend + "
            "out_proj reproduces shared.attention.MultiHeadAttention.")


# -- 5.2 ---------------------------------------------------------------------------------------------

ABLATION_CHOICES = {
    "A": "the attention weights of head 0",
    "B": "the attention weights of head 1",
    "C": "the context vectors of head 2",
    "D": "the output at position 0",
    "E": "the output at the last position",
}


def _ablation_effects() -> set[str]:
    """Which of ABLATION_CHOICES change when head 1's query and key rows of qkv are set to zero, measured."""
    n_heads, head_dim, seq = 3, 4, 6
    d = n_heads * head_dim
    with seeded(55):  # building initialises weights: keep the learner's generator as it was
        module = MultiHeadAttention(d, d, n_heads, context_length=8)
    ablated = copy.deepcopy(module)
    with torch.no_grad():
        head_1 = slice(head_dim, 2 * head_dim)
        ablated.qkv.weight[:d][head_1] = 0  # head 1's query rows
        ablated.qkv.weight[d : 2 * d][head_1] = 0  # head 1's key rows
    x = torch.randn(2, seq, d, generator=torch.Generator().manual_seed(56))

    def parts(m: MultiHeadAttention) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            q, k, v = rearrange(m.qkv(x), "b t (three h d) -> three b h t d", three=3, h=n_heads)
            return attention_weights(q, k, causal_mask(seq)), attend(q, k, v, causal_mask(seq)), m(x)

    (w0, c0, out0), (w1, c1, out1) = parts(module), parts(ablated)
    changed = {
        "A": w0[:, 0], "B": w0[:, 1], "C": c0[:, 2], "D": out0[:, 0], "E": out0[:, -1],
    }
    after = {"A": w1[:, 0], "B": w1[:, 1], "C": c1[:, 2], "D": out1[:, 0], "E": out1[:, -1]}
    return {key for key in changed if not torch.allclose(changed[key], after[key], atol=1e-6)}


def _letters(prediction: object) -> set[str] | None:
    if isinstance(prediction, str):
        prediction = [c for c in prediction if not c.isspace() and c != ","]
    if isinstance(prediction, (set, frozenset, list, tuple)) and all(isinstance(p, str) for p in prediction):
        return {p.strip().upper() for p in prediction}
    return None


@exercise("5.2", "Predict what ablating a head changes", level=2, minutes=10)
def check_ablation_prediction(prediction: object) -> str:
    letters = _letters(prediction)
    expect(letters is not None, 'Write the prediction as a set of letters, e.g. {"A", "C"} (or {} if nothing changes).')
    expect(letters <= set(ABLATION_CHOICES), f"Choose among the letters {sorted(ABLATION_CHOICES)}; you wrote "
                                             f"{sorted(letters - set(ABLATION_CHOICES))}.")
    truth = _ablation_effects()
    hints = [
        (("A" in letters) != ("A" in truth) or ("C" in letters) != ("C" in truth),
         "Each head has its own rows of qkv. Which heads' queries, keys and values did the ablation touch, and can "
         "a head's weights or context depend on another head's rows?"),
        (("B" in letters) != ("B" in truth),
         "Head 1's queries and keys are now all zero. What are its scores, and what does a softmax make of a row "
         "of equal scores? Compare that with the weights it had."),
        (("D" in letters) != ("D" in truth),
         "Think about position 0: how many keys may it attend to, and does its weight depend on the scores at "
         "all?"),
        (("E" in letters) != ("E" in truth),
         "Follow head 1's weights on: they average its values into its context vectors, and out_proj mixes every "
         "head into every output dimension. What happens at the last position, which sees all six keys?"),
    ]
    for wrong, hint in hints:
        if wrong:
            raise NotYet(f"Not quite: at least one letter is off. {hint}")
    return ("Zero queries and keys give head 1 scores of 0 everywhere, so its weights become uniform over the "
            "past (B). Heads 0 and 2 have their own rows of qkv and do not notice (not A, not C). Position 0 "
            "attends only to itself, with weight 1 whatever the scores, so its output stays (not D); the last "
            "position now averages head 1's values evenly, and out_proj carries that into its output (E).")


# -- 5.3 ---------------------------------------------------------------------------------------------


@exercise("5.3", "Bug hunt: heads merged in the wrong order", level=2, minutes=15)
def check_fixed_merge(answer: Callable) -> str:
    own_work(answer, MultiHeadAttention, MultiHeadAttentionWrapper)
    d, n_heads, context_length = 12, 3, 8
    with seeded(53):
        reference = MultiHeadAttention(d, d, n_heads, context_length)
    with seeded(0):
        module = run_answer(answer, d, d, n_heads, context_length)
    expect(isinstance(module, nn.Module), f"Your class should build an nn.Module; it built {type(module).__name__}.")
    wanted = {name: tuple(p.shape) for name, p in reference.state_dict().items()}
    have = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    expect(have == wanted, f"Keep the layers as they were (qkv and out_proj), so that shared's weights load: "
                           f"expected {wanted}, found {have}.")
    module.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(54)
    x = torch.randn(2, 5, d, generator=g)
    got = run_answer(module, x)
    with torch.no_grad():
        expected = reference(x)
    expect(isinstance(got, Tensor) and tuple(got.shape) == (2, 5, d),
           f"For x of shape (2, 5, 12) the output should be (2, 5, 12); yours is "
           f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}.")
    if not close(got, expected):
        with torch.no_grad():
            q, k, v = rearrange(reference.qkv(x), "b t (three h d) -> three b h t d", three=3, h=n_heads)
            context = attend(q, k, v, causal_mask(5))
            interleaved = reference.out_proj(rearrange(context, "b h t d -> b t (d h)"))
        if close(got, interleaved):
            raise NotYet("Still the buggy output: \"(d h)\" interleaves the heads, so out_proj receives head 0's first "
                         "number, then head 1's first number, ... Its columns expect head 0's four numbers, then "
                         "head 1's, as torch.cat puts them in the wrapper.")
        difference = (got - expected).abs().max().item()
        raise NotYet(f"Your output differs from shared.attention.MultiHeadAttention with the same weights by up to "
                     f"{difference:.4f}. Only the merge was wrong; leave the split as it was.")
    torch_mha = nn.MultiheadAttention(d, n_heads, batch_first=True)
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(reference.qkv.weight)
        torch_mha.in_proj_bias.zero_()
        torch_mha.out_proj.load_state_dict(reference.out_proj.state_dict())
        torch_output, _ = torch_mha(x, x, x, attn_mask=causal_mask(5), need_weights=False)
    expect(close(got, torch_output), "Your module equals shared's but not torch.nn.MultiheadAttention?")
    return ("With the same weights your module equals shared.attention.MultiHeadAttention and "
            "torch.nn.MultiheadAttention on a (2, 5, 12) batch.")


# -- 5.4 ---------------------------------------------------------------------------------------------


@exercise("5.4", "Grouped-query attention: repeat_kv", level=2, minutes=10)
def check_repeat_kv(answer: Callable) -> str:
    own_work(answer, repeat_kv)
    batch, kv_heads, seq, head_dim = 2, 2, 3, 4
    x = torch.arange(batch * kv_heads * seq * head_dim, dtype=torch.float32).reshape(batch, kv_heads, seq, head_dim)
    for groups in [2, 3, 1]:
        got = run_answer(answer, x, groups)
        expected = repeat_kv(x, groups)
        call = f"repeat_kv(x, groups={groups}) for x of shape {tuple(x.shape)}"
        expect(isinstance(got, Tensor) and tuple(got.shape) == tuple(expected.shape),
               f"{call} should have shape {tuple(expected.shape)} = (batch, kv_heads * groups, seq, head_dim); yours "
               f"has {tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}.")
        if torch.equal(got, expected):
            continue
        owners = [h // groups for h in range(kv_heads * groups)]
        if torch.equal(got, x.repeat(1, groups, 1, 1)):
            raise NotYet(f"{call}: you tiled the heads (kv0, kv1, kv0, kv1, ...), so query head 1 would use key head "
                         f"1. Each key/value head must serve {groups} *consecutive* query heads: query head h uses "
                         f"key/value head h // groups, here {owners}: repeat each head in place, not the whole "
                         "stack of heads.")
        raise NotYet(f"{call}: the heads are in the wrong places. Query head h should get key/value head h // groups, "
                     f"here {owners}.")
    return ("Your function equals shared.attention.repeat_kv for groups = 2, 3 and 1: query head h gets key/value "
            "head h // groups.")


# -- 5.5 ---------------------------------------------------------------------------------------------


def _megabytes(batch: int, heads: int, seq: int) -> float:
    return batch * heads * seq * seq * torch.finfo(torch.float32).bits / 8 / 1e6


@exercise("5.5", "Predict the memory of the attention weights", level=2, minutes=10)
def check_weights_memory(prediction: object) -> str:
    expect(isinstance(prediction, (tuple, list)) and len(prediction) == 2
           and all(isinstance(p, (int, float)) for p in prediction),
           "Write the prediction as two numbers of megabytes: (at seq = 1024, at seq = 2048).")
    at_1024, at_2048 = _megabytes(8, 12, 1024), _megabytes(8, 12, 2048)
    mebi = 1e6 / 2**20  # someone who counts in MiB (2**20 bytes) is right too

    def near(guess: float, truth: float) -> bool:
        return math.isclose(guess, truth, rel_tol=0.02) or math.isclose(guess, truth * mebi, rel_tol=0.02)

    guess_1024, guess_2048 = (float(p) for p in prediction)
    if not near(guess_1024, at_1024):
        why = next((hint for factor, hint in [
            (4, "Too low by a factor of 4: did you forget the 4 bytes of a float32, or scale the weights of a "
                "shorter sequence linearly? Both seq axes grow."),
            (12, "Every head has its own (seq, seq) weights: multiply by 12 heads."),
            (8, "Every sequence of the batch has its own weights: multiply by 8."),
            (1024, "Each head's weights are seq × seq, one row per query and one column per key."),
        ] if near(guess_1024 * factor, at_1024)), "")
        if near(guess_1024 / 1e6, at_1024):
            why = "Give megabytes (10⁶ bytes), not bytes."
        size = "too high" if guess_1024 > at_1024 else "too low"
        why = why or "Multiply all the sizes of the tensor's shape, then the bytes per number."
        raise NotYet(f"Your number at seq = 1024 is {size}. {why}")
    if not near(guess_2048, at_2048):
        why = ("Doubling seq changes both the number of rows (queries) and the number of columns (keys)."
               if near(guess_2048, 2 * at_1024)
               else "How does the size of a (batch, heads, seq, seq) tensor grow with seq?")
        size = "too high" if guess_2048 > at_2048 else "too low"
        raise NotYet(f"Your first number is right; the one at seq = 2048 is {size}. {why}")
    return (f"{at_1024:.1f} MB at seq = 1024 and {at_2048:.1f} MB at seq = 2048, for one tensor of one layer: "
            "quadratic in seq. Fused kernels such as SDPA's never store it whole.")

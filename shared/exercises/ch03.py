"""Chapter 3's exercises: attention weights, their shapes, why the scores are scaled, a bug hunt,
and a self-attention module.

Every checker makes its own seeded inputs, with sizes that all differ (4 queries, 6 keys, 8
dimensions), so that a transposed or mixed-up result cannot match by accident.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from shared.attention import CausalAttention, MultiHeadAttention, SelfAttention, attend, attention_weights, sdpa_attend
from shared.exercises import NotYet, as_shape, close, exercise, expect, own_work, rounded, run_answer, seeded


def _tensor(result: object, what: str) -> Tensor:
    expect(isinstance(result, Tensor), f"{what} should return a tensor; it returned {type(result).__name__}.")
    return result


# -- 3.1 ---------------------------------------------------------------------------------------------


@exercise("3.1", "Scaled dot-product attention weights", level=1, minutes=10)
def check_attention_weights(answer: Callable) -> str:
    own_work(answer, attention_weights, attend, sdpa_attend)
    g = torch.Generator().manual_seed(31)
    queries, keys = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    got = _tensor(run_answer(answer, queries, keys), "Your function")
    expected = attention_weights(queries, keys)
    shape = tuple(got.shape)
    if shape == (6, 4):
        raise NotYet("For 4 queries and 6 keys your weights have shape (6, 4), the transpose of (4, 6) = "
                     "(seq, kv_seq): one row per query. Multiply queries @ keys.T, not keys @ queries.T.")
    expect(shape == (4, 6), f"For 4 queries and 6 keys (head_dim 8) the weights should have shape (4, 6) = "
                            f"(seq, kv_seq), one row per query and one column per key; yours have shape {shape}.")
    if close(got, expected):
        return "Your weights equal shared.attention.attention_weights for 4 queries and 6 keys of dimension 8."
    sums = got.sum(dim=-1)
    expect(torch.allclose(sums, torch.ones(4), atol=1e-5),
           f"Each row should sum to 1 (one query's weights over the 6 keys); your rows sum to {rounded(sums)}. "
           "Take the softmax along the last dimension, dim=-1.")
    scores = queries @ keys.T
    for wrong, hint in [
        (scores, "These are the weights of the unscaled scores: divide q kᵀ by √head_dim = √8 before the softmax."),
        (scores / 8, "You divided the scores by head_dim = 8; divide by its square root, √8 ≈ 2.83."),
        (scores * math.sqrt(8), "You multiplied the scores by √head_dim; divide by it."),
        (scores / 2, "You divided by 2 = √4, the dimension of the chapter's example. Use the dimension of the "
                     "keys you are given: keys.shape[-1]."),
    ]:
        if close(got, torch.softmax(wrong, dim=-1)):
            raise NotYet(hint)
    difference = (got - expected).abs().max().item()
    raise NotYet(f"Your weights differ from softmax(q kᵀ / √head_dim) by up to {difference:.4f}. Compute the scores "
                 "queries @ keys.T, divide them by √head_dim, then take the softmax over the last dimension.")


# -- 3.2 ---------------------------------------------------------------------------------------------


@exercise("3.2", "Predict the shapes for a batch", level=1, minutes=5)
def check_batch_shapes(prediction: object) -> str:
    expect(isinstance(prediction, (tuple, list)) and len(prediction) == 2,
           "Write the prediction as two shapes, (weights shape, context shape), e.g. ((1, 2, 3), (1, 2, 3)).")
    weights_shape, context_shape = (as_shape(p) for p in prediction)
    expect(weights_shape is not None and context_shape is not None,
           "Each shape should be a tuple of whole numbers, e.g. (1, 2, 3).")
    queries, keys, values = torch.zeros(2, 5, 8), torch.zeros(2, 7, 8), torch.zeros(2, 7, 3)
    true_weights = tuple(attention_weights(queries, keys).shape)
    true_context = tuple(attend(queries, keys, values).shape)
    if weights_shape != true_weights:
        why = {
            (2, 7, 5): "Check the order of the last two axes: is a row one query's weights, or one key's?",
            (2, 5, 5): "The weights need not be square: count the queries and the keys separately.",
            (2, 7, 7): "The weights need not be square: count the queries and the keys separately.",
            (5, 7): "What happens to the batch axis: does every sequence get its own weights?",
            (2, 5, 8): "The head dimension is summed over in q · k: does it survive in the weights?",
        }.get(weights_shape, "The weights have one axis for the batch, one for the queries and one for the keys.")
        raise NotYet(f"The weights shape {weights_shape} is not what attention_weights returns. {why}")
    if context_shape != true_context:
        why = {
            (2, 5, 8): "The context averages the *values*: which width do they have?",
            (2, 7, 3): "Is there one context vector per query, or one per key?",
            (5, 3): "What happens to the batch axis?",
        }.get(context_shape, "The context is the weights times the values: which axes survive the product?")
        raise NotYet(f"Your weights shape is right, but the context shape {context_shape} is not what attend "
                     f"returns. {why}")
    return (f"attention_weights gives {true_weights}: one row per query, one column per key, batch in front; "
            f"attend gives {true_context}: one value-width vector per query.")


# -- 3.3 ---------------------------------------------------------------------------------------------


@exercise("3.3", "Predict the variance of the scores", level=2, minutes=10)
def check_score_variance(prediction: object) -> str:
    expect(isinstance(prediction, (tuple, list)) and len(prediction) == 2
           and all(isinstance(p, (int, float)) for p in prediction),
           "Write the prediction as two numbers: (variance of q·k, variance of q·k / √64).")
    unscaled, scaled = (float(p) for p in prediction)
    d, std_q, std_k = 64, 1.0, 3.0
    g = torch.Generator().manual_seed(33)  # float64, so the measured numbers print the same on every machine
    q = std_q * torch.randn(20_000, d, generator=g, dtype=torch.float64)
    k = std_k * torch.randn(20_000, d, generator=g, dtype=torch.float64)
    dots = (q * k).sum(dim=-1)
    measured = f"Measured on 20,000 random pairs: var(q·k) = {dots.var().item():.1f}, " \
               f"var(q·k / √64) = {(dots / math.sqrt(d)).var().item():.2f}."
    true_unscaled = d * std_q**2 * std_k**2  # 576
    true_scaled = true_unscaled / d  # 9
    if not math.isclose(unscaled, true_unscaled, rel_tol=0.1):
        why = {
            64.0: "That is right for unit-variance entries, but the keys' entries have standard deviation 3.",
            192.0: "The variance of a key entry is the square of its standard deviation, not the deviation itself.",
            24.0: "24 = √576 is the standard deviation of q·k, its typical size; the exercise asks for its "
                  "variance.",
        }.get(unscaled, "Each term q_i k_i has variance Var(q_i) · Var(k_i), and the variances of independent "
                        "terms add up.")
        size = "too high" if unscaled > true_unscaled else "too low"
        raise NotYet(f"Your variance of q·k is {size}. {why}")
    if not math.isclose(scaled, true_scaled, rel_tol=0.1):
        why = ("You divided the variance by √64, as if it were the dot product itself. Var(c X) = c² Var(X)."
               if math.isclose(scaled, true_unscaled / 8, rel_tol=0.1)
               else "Var(c X) = c² Var(X): what does dividing q·k by √64 do to its variance?")
        size = "too high" if scaled > true_scaled else "too low"
        raise NotYet(f"Your unscaled variance is right; the scaled one is {size}. {why}")
    return (f"{measured} Theory: 64 terms of variance 1 × 3² = 9 give 576, and dividing by √64 divides the "
            "variance by 64, leaving 9. The scale undoes the growth with d, not the size of the entries.")


# -- 3.4 ---------------------------------------------------------------------------------------------


@exercise("3.4", "Bug hunt: context vectors that do not add up", level=2, minutes=15)
def check_fixed_context_vectors(answer: Callable) -> str:
    own_work(answer, attend, attention_weights, sdpa_attend, SelfAttention)
    seq, d_in, d_out = 5, 3, 8  # seq != d_out, so mixing them up shows
    g = torch.Generator().manual_seed(34)
    x = torch.randn(seq, d_in, generator=g)
    W_query, W_key, W_value = (torch.rand(d_in, d_out, generator=g) for _ in range(3))
    got = _tensor(run_answer(answer, x, W_query, W_key, W_value), "Your function")
    queries, keys, values = x @ W_query, x @ W_key, x @ W_value
    expected = attend(queries, keys, values)
    expect(tuple(got.shape) == (seq, d_out),
           f"For 5 positions and d_out = 8 the context vectors should have shape (5, 8); yours have "
           f"{tuple(got.shape)}.")
    if close(got, expected):
        return "Your context vectors equal shared.attention.attend on 5 positions with d_out = 8."
    scores = queries @ keys.T
    over_queries = "Each *column* of your weights sums to 1, not each row: which axis holds one query's weights " \
                   "over the keys?"
    wrong_scale = "The scores are divided by √seq (keys.shape[0] = 5 positions): which dimension sets the size of " \
                  "a dot product q·k?"
    for wrong, hint in [
        (torch.softmax(scores / math.sqrt(seq), dim=0), f"Both bugs are still there. The first: {over_queries}"),
        (torch.softmax(scores / math.sqrt(d_out), dim=0), over_queries),
        (torch.softmax(scores / math.sqrt(seq), dim=-1), f"One bug left. {wrong_scale}"),
    ]:
        if close(got, wrong @ values):
            raise NotYet(hint)
    difference = (got - expected).abs().max().item()
    raise NotYet(f"Your context vectors differ from shared.attention.attend by up to {difference:.4f}. Check each "
                 "step: the scores, their scale (which dimension?), and the axis of the softmax.")


# -- 3.5 ---------------------------------------------------------------------------------------------


@exercise("3.5", "A self-attention module for batches", level=2, minutes=20)
def check_self_attention_module(answer: Callable) -> str:
    own_work(answer, SelfAttention, CausalAttention, MultiHeadAttention, attend, attention_weights, sdpa_attend)
    d_in, d_out = 3, 8
    with seeded(0):  # the module's own initial weights are replaced below; keep the learner's generator as it was
        module = run_answer(answer, d_in, d_out)
    expect(isinstance(module, nn.Module), f"Your class should build an nn.Module; it built {type(module).__name__}.")
    with seeded(35):
        reference = SelfAttention(d_in, d_out)
    wanted = {name: tuple(p.shape) for name, p in reference.state_dict().items()}
    have = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    expect(have == wanted,
           f"Your module's state_dict should hold {wanted} (three nn.Linear(d_in, d_out, bias=False) named W_query, "
           f"W_key and W_value), so that shared's weights can be copied in; it holds {have}.")
    module.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(36)
    x = torch.randn(5, d_in, generator=g)
    got = _tensor(run_answer(module, x), "forward")
    with torch.no_grad():
        expected = reference(x)
    expect(tuple(got.shape) == (5, d_out), f"For x of shape (5, 3) the output should be (5, 8); yours is "
                                           f"{tuple(got.shape)}.")
    if not close(got, expected):
        with torch.no_grad():
            q, k, v = reference.W_query(x), reference.W_key(x), reference.W_value(x)
        if close(got, torch.softmax(q @ k.T, dim=-1) @ v):
            raise NotYet("Your module leaves out the scale: divide the scores by √d_out before the softmax.")
        difference = (got - expected).abs().max().item()
        raise NotYet(f"On one sequence of shape (5, 3) your output differs from shared.attention.SelfAttention "
                     f"with the same weights by up to {difference:.4f}.")
    batch = torch.randn(2, 5, d_in, generator=g)
    try:
        got_batch = _tensor(run_answer(module, batch), "forward")
    except NotYet:
        raise
    except Exception as e:
        raise NotYet(f"Right for one sequence, but a batch of shape (2, 5, 3) raised {type(e).__name__}. `.T` "
                     "reverses *all* dimensions of a 3-D tensor; swap only the last two: keys.transpose(-2, -1), "
                     "or rearrange(keys, '... seq d -> ... d seq').") from None
    with torch.no_grad():
        expected_batch = reference(batch)
    expect(close(got_batch, expected_batch),
           f"Right for one sequence, but for a batch of shape (2, 5, 3) your output (shape "
           f"{tuple(got_batch.shape)}) differs from shared's {tuple(expected_batch.shape)}. Each sequence must "
           "attend only to its own keys: transpose only the last two dimensions of the keys.")
    return ("With shared's weights copied in, your module equals shared.attention.SelfAttention on one sequence "
            "(5, 3) and on a batch (2, 5, 3).")

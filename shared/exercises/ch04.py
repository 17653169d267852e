"""Chapter 4's exercises: the causal mask with a cache, a causality test, dropout, and two bug hunts
(a mask that does not mask, a product that broadcasts).
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from shared.attention import CausalAttention, SelfAttention, attend, attention_weights, causal_mask, sdpa_attend
from shared.exercises import NotYet, close, exercise, expect, own_work, rounded, run_answer, seeded

# -- 4.1 ---------------------------------------------------------------------------------------------


def _as_grid(mask: Tensor) -> list[str]:
    return ["".join("x" if v else "." for v in row) for row in mask.tolist()]


@exercise("4.1", "The causal mask, with a cache", level=2, minutes=15)
def check_causal_mask(answer: Callable) -> str:
    own_work(answer, causal_mask)
    for seq, kv_seq in [(4, 4), (3, 7), (1, 5), (2, 3)]:
        got = run_answer(answer, seq, kv_seq)
        expect(isinstance(got, Tensor), f"causal_mask({seq}, {kv_seq}) should return a tensor; it returned "
                                        f"{type(got).__name__}.")
        expected = causal_mask(seq, kv_seq)
        call = f"causal_mask({seq}, {kv_seq})"
        expect(tuple(got.shape) == (seq, kv_seq),
               f"{call} should have shape ({seq}, {kv_seq}) = (seq, kv_seq): one row per query, one column per "
               f"key; yours has {tuple(got.shape)}.")
        expect(got.dtype == torch.bool, f"{call} should be a boolean tensor (masked_fill needs one); yours is "
                                        f"{got.dtype}. Use dtype=torch.bool, or compare: ... > 0.")
        if torch.equal(got, expected):
            continue
        shown = f"Yours: {_as_grid(got)} (x = masked, one string per query)."
        if torch.equal(got, ~expected):
            raise NotYet(f"{call}: True should mark the keys a query may *not* see, the future; yours marks "
                         f"the ones it may see. {shown}")
        if torch.equal(got, torch.ones(seq, kv_seq, dtype=torch.bool).triu(1)):
            raise NotYet(f"{call}: right when seq == kv_seq, but with a cache the {seq} queries are the *last* "
                         f"{seq} of the {kv_seq} positions. At which position does query 0 sit, and which keys may "
                         f"it see? torch.triu's diagonal argument can shift the triangle. {shown}")
        ones = torch.ones(seq, kv_seq, dtype=torch.bool)
        if torch.equal(got, ones.triu(kv_seq - seq)) or torch.equal(got, ones.triu(0)):
            raise NotYet(f"{call}: a query may always look at its own position, so the entry where query i "
                         f"meets its own key must be False. {shown}")
        raise NotYet(f"{call} differs from the causal mask. {shown}")
    return "Your masks equal shared.attention.causal_mask for (seq, kv_seq) = (4, 4), (3, 7), (1, 5) and (2, 3)."


# -- 4.2 ---------------------------------------------------------------------------------------------


class _Masked(nn.Module):
    """Attention with fixed random projections and any mask: the layers the causality test must judge."""

    def __init__(self, mask: Tensor | None, seed: int):
        super().__init__()
        with seeded(seed):
            self.inner = SelfAttention(3, 4)
        self.register_buffer("custom_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.shape[-2]
        mask = None if self.custom_mask is None else self.custom_mask[:seq, :seq]
        return attend(self.inner.W_query(x), self.inner.W_key(x), self.inner.W_value(x), mask)


def _peeks_at_position_1(context_length: int) -> Tensor:
    mask = causal_mask(context_length)
    mask[0, 1] = False  # position 0 alone may see position 1
    return mask


@exercise("4.2", "A test for causality", level=3, minutes=25)
def check_causality_test(answer: Callable) -> str:
    with seeded(42):
        causal, linear = CausalAttention(3, 4, context_length=8).eval(), nn.Linear(3, 4)
    layers = [
        ("chapter 4's CausalAttention", causal, True, "Compare only the outputs at positions *before* the one you "
         "changed: the output at the changed position itself, and after it, may change."),
        ("nn.Linear(3, 4), which looks at each position alone", linear, True, "A layer that never mixes "
         "positions is causal. Compare only the outputs at positions before the one you changed."),
        ("SelfAttention, with no mask at all", _Masked(None, 1), False, "Change one token, run the layer again, "
         "and compare the outputs at the positions before it."),
        ("attention in which each position also sees the next one", _Masked(causal_mask(8).triu(2), 2), False,
         "Change one token and compare the outputs at the positions before it; here the one just before changes."),
        ("attention in which only position 0 peeks at position 1", _Masked(_peeks_at_position_1(8), 3), False,
         "Changing only the last token cannot reveal this leak. Change each position t in turn and compare the "
         "outputs at positions 0 to t - 1."),
    ]
    g = torch.Generator().manual_seed(43)
    x = torch.randn(2, 6, 3, generator=g)
    for name, layer, truth, hint in layers:
        said = run_answer(answer, layer, x.clone())
        expect(isinstance(said, (bool, torch.Tensor)) and (not isinstance(said, Tensor) or said.numel() == 1),
               f"Your test should return True or False; for {name} it returned {type(said).__name__}.")
        said = bool(said)
        expect(said == truth, f"Your test says {name} is {'causal' if said else 'not causal'}, but it is "
                              f"{'causal' if truth else 'not'}. {hint}")
    return ("Your test tells causal layers (CausalAttention, a Linear layer) from three leaky ones, including a "
            "leak from position 1 to position 0 only.")


# -- 4.3 ---------------------------------------------------------------------------------------------


def _value_set(values: object) -> set[float] | None:
    if isinstance(values, (int, float)):
        values = [values]
    if isinstance(values, (set, frozenset, list, tuple)) and all(isinstance(v, (int, float)) for v in values):
        return {round(float(v), 4) for v in values}
    return None


@exercise("4.3", "Predict what dropout does", level=1, minutes=5)
def check_dropout_prediction(prediction: object) -> str:
    expect(isinstance(prediction, (tuple, list)) and len(prediction) == 2,
           "Write the prediction as two sets of numbers: (values in training mode, values in eval mode), "
           "e.g. ({1.0, 2.0}, {3.0}).")
    train_values, eval_values = (_value_set(p) for p in prediction)
    expect(train_values is not None and eval_values is not None,
           "Each part should be a set of numbers, e.g. {1.0, 2.0}.")
    dropout = nn.Dropout(p=0.25)
    threes = torch.full((1000,), 3.0)
    with seeded(44):
        seen_train = {round(v, 4) for v in dropout.train()(threes).tolist()}
    seen_eval = {round(v, 4) for v in dropout.eval()(threes).tolist()}
    seen = f"nn.Dropout(0.25) on 1,000 threes gives {sorted(seen_train)} in training mode and {sorted(seen_eval)} " \
           "in eval mode."
    if train_values != seen_train:
        why = {
            frozenset({0.0, 3.0}): "The survivors are scaled, so that the mean of the output stays 3.",
            frozenset({0.0, 2.25}): "You scaled the survivors down; with a quarter of the entries gone, would the mean "
                                    "stay 3?",
            frozenset({0.0, 12.0}): "The scale comes from the probability of *keeping* an entry, not of dropping it.",
            frozenset({4.0}): "Some entries are dropped: what do they become?",
            frozenset({0.0}): "Only a quarter of the entries are dropped (p = 0.25); what happens to the others?",
        }.get(frozenset(train_values), "Each entry is either dropped, with probability 0.25, or kept and scaled so "
                                       "that the mean stays 3.")
        raise NotYet(f"Your training-mode values are not all right. {why}")
    if eval_values != seen_eval:
        raise NotYet("Your training-mode values are right, but not the eval-mode ones. Why does eval mode exist? A "
                     "trained model should give the same output for the same input, every time.")
    return f"{seen} Scaling the survivors by 1/(1 - p) keeps the mean at 3 in both modes."


# -- 4.4 ---------------------------------------------------------------------------------------------


@exercise("4.4", "Bug hunt: a mask that does not mask", level=2, minutes=10)
def check_fixed_causal_weights(answer: Callable) -> str:
    own_work(answer, attention_weights, attend, sdpa_attend)
    seq, head_dim = 5, 4
    g = torch.Generator().manual_seed(45)
    queries, keys = torch.randn(seq, head_dim, generator=g), torch.randn(seq, head_dim, generator=g)
    got = run_answer(answer, queries, keys)
    expect(isinstance(got, Tensor) and tuple(got.shape) == (seq, seq),
           f"For 5 queries and keys the weights should be a (5, 5) tensor; yours is "
           f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}.")
    expected = attention_weights(queries, keys, causal_mask(seq))
    if close(got, expected):
        return "Your weights equal shared.attention.attention_weights with the causal mask: zero on the future, " \
               "rows summing to 1."
    future = got.masked_select(causal_mask(seq))
    if future.abs().max() > 1e-6:
        raise NotYet(f"The weights on the future are not zero: query 0 gives key 1 a weight of {got[0, 1].item():.4f}."
                     f" A masked score of 0 is an ordinary score: what is e^0, and which score would the "
                     f"softmax turn into exactly 0?")
    sums = got.sum(dim=-1)
    if not torch.allclose(sums, torch.ones(seq), atol=1e-5):
        raise NotYet(f"The future weights are zero, but the rows no longer sum to 1 (they sum to {rounded(sums)}): "
                     "zeroing weights after the softmax needs a renormalisation. Mask the scores with -inf *before* "
                     "the softmax instead.")
    difference = (got - expected).abs().max().item()
    raise NotYet(f"Zero on the future and rows summing to 1, but the weights differ from the causal softmax by up to "
                 f"{difference:.4f}. Is the scale √head_dim = 2, and is the diagonal allowed?")


# -- 4.5 ---------------------------------------------------------------------------------------------


@exercise("4.5", "Bug hunt: a silent broadcast", level=2, minutes=15)
def check_refuses_broadcast(answer: Callable) -> str:
    own_work(answer, attend, attention_weights, sdpa_attend, CausalAttention)
    batch, seq, d = 2, 5, 4
    g = torch.Generator().manual_seed(46)
    queries, keys, values = (torch.randn(batch, seq, d, generator=g) for _ in range(3))
    got = run_answer(answer, queries, keys, values)
    expected = attend(queries, keys, values, causal_mask(seq))
    expect(isinstance(got, Tensor) and close(got, expected),
           "For queries, keys and values of shape (2, 5, 4) your function should still return the causal context "
           "vectors (shared.attention.attend with causal_mask); it returns something else.")
    for name, k, v in [("keys", keys[:1], values), ("values", keys, values[:1])]:
        try:
            with torch.no_grad():
                wrong = answer(queries, k, v)
        except Exception:  # refusing, with any error, is the point
            continue
        raise NotYet(f"With {name} of shape (1, 5, 4) for queries of shape (2, 5, 4), your function returned a "
                     f"{tuple(wrong.shape) if isinstance(wrong, Tensor) else type(wrong).__name__} result instead of "
                     f"refusing: `@` repeats the one sequence's {name} for both. Multiply with "
                     "shared.shapes.strict_matmul, which refuses to broadcast.")
    return ("Your function computes causal attention for a batch and refuses keys or values that have fewer "
            "sequences than the queries.")

"""Chapter 3's checkers: they accept a right answer, reject the common mistakes with the hint that
names them, and report a stub as not attempted."""

import math

import pytest
import torch
from einops import rearrange
from torch import nn

from shared.attention import SelfAttention, attend, attention_weights
from shared.exercises import check

# -- right answers (the solutions notebook has the same, with explanations) -------------------------


def weights(queries, keys):
    return torch.softmax(queries @ keys.T / math.sqrt(keys.shape[-1]), dim=-1)


def context_vectors(x, W_query, W_key, W_value):
    queries, keys, values = x @ W_query, x @ W_key, x @ W_value
    scores = queries @ keys.T / math.sqrt(keys.shape[-1])
    return torch.softmax(scores, dim=-1) @ values


class BatchedSelfAttention(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=False)
        self.W_key = nn.Linear(d_in, d_out, bias=False)
        self.W_value = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ rearrange(keys, "... seq d -> ... d seq") / math.sqrt(keys.shape[-1])
        return torch.softmax(scores, dim=-1) @ values


RIGHT = {
    "3.1": weights,
    "3.2": ((2, 5, 7), (2, 5, 3)),
    "3.3": (576, 9),
    "3.4": context_vectors,
    "3.5": BatchedSelfAttention,
}

# -- plausible mistakes ------------------------------------------------------------------------------


def unscaled(queries, keys):
    return torch.softmax(queries @ keys.T, dim=-1)


def divided_by_d(queries, keys):
    return torch.softmax(queries @ keys.T / keys.shape[-1], dim=-1)


def softmax_over_queries(queries, keys):
    return torch.softmax(queries @ keys.T / math.sqrt(keys.shape[-1]), dim=0)


def transposed(queries, keys):
    return torch.softmax(keys @ queries.T / math.sqrt(keys.shape[-1]), dim=0)


def buggy_context_vectors(x, W_query, W_key, W_value):  # the notebook's planted bugs, unfixed
    queries, keys, values = x @ W_query, x @ W_key, x @ W_value
    scores = queries @ keys.T / math.sqrt(keys.shape[0])
    return torch.softmax(scores, dim=0) @ values


def only_softmax_fixed(x, W_query, W_key, W_value):
    queries, keys, values = x @ W_query, x @ W_key, x @ W_value
    return torch.softmax(queries @ keys.T / math.sqrt(keys.shape[0]), dim=-1) @ values


def only_scale_fixed(x, W_query, W_key, W_value):
    queries, keys, values = x @ W_query, x @ W_key, x @ W_value
    return torch.softmax(queries @ keys.T / math.sqrt(keys.shape[-1]), dim=0) @ values


class WithDotT(BatchedSelfAttention):  # chapter 3's `.T`: right for one sequence, wrong for a batch
    def forward(self, x):
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(queries @ keys.T / math.sqrt(keys.shape[-1]), dim=-1) @ values


class WithoutScale(BatchedSelfAttention):
    def forward(self, x):
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(queries @ keys.transpose(-2, -1), dim=-1) @ values


class BorrowsSharedModule(SelfAttention):  # the course's own module, under another name
    pass


def borrows_attend(x, W_query, W_key, W_value):
    return attend(x @ W_query, x @ W_key, x @ W_value)


class OtherNames(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.query = nn.Linear(d_in, d_out, bias=False)
        self.key = nn.Linear(d_in, d_out, bias=False)
        self.value = nn.Linear(d_in, d_out, bias=False)


WRONG_ANSWERS = {
    "3.1": [unscaled, divided_by_d, softmax_over_queries, transposed, attention_weights,
            lambda q, k: attention_weights(q, k)],
    "3.2": [((2, 5, 5), (2, 5, 3)), ((2, 7, 5), (2, 5, 3)), ((2, 5, 7), (2, 5, 8)), ((5, 7), (5, 3))],
    "3.3": [(64, 1), (576, 72), (192, 3), (576, 576)],
    "3.4": [buggy_context_vectors, only_softmax_fixed, only_scale_fixed, borrows_attend],
    "3.5": [WithDotT, WithoutScale, OtherNames, BorrowsSharedModule],
}

HINTS = {  # the word each mistake's hint must contain: it names the symptom
    ("3.1", 0): "unscaled",
    ("3.1", 1): "square root",
    ("3.1", 2): "sum to 1",
    ("3.1", 3): "transpose",
    ("3.2", 1): "order of the last two axes",
    ("3.2", 2): "values",
    ("3.3", 0): "standard deviation 3",
    ("3.3", 1): "c² Var(X)",
    ("3.4", 0): "Both bugs",
    ("3.4", 1): "√seq",
    ("3.4", 2): "column",
    ("3.5", 0): "batch",
    ("3.5", 1): "scale",
    ("3.5", 2): "W_query",
    ("3.1", 4): "course's own attention_weights",
    ("3.1", 5): "course's own attention_weights",
    ("3.4", 3): "course's own attend",
    ("3.5", 3): "course's own SelfAttention",
}


@pytest.mark.parametrize("number", sorted(RIGHT))
def test_the_right_answer_passes(number):
    result = check(number, RIGHT[number], quiet=True)
    assert result.passed, result


@pytest.mark.parametrize(("number", "index"), sorted(HINTS))
def test_each_mistake_gets_the_hint_that_names_it(number, index):
    result = check(number, WRONG_ANSWERS[number][index], quiet=True)
    assert result.status == "not yet" and HINTS[number, index] in result.message, result


@pytest.mark.parametrize("number", sorted(RIGHT))
def test_a_stub_is_not_attempted(number):
    def stub(*args):
        raise NotImplementedError

    class Stub(nn.Module):
        def __init__(self, *args):
            super().__init__()
            raise NotImplementedError

    answer = ... if isinstance(RIGHT[number], tuple) else Stub if isinstance(RIGHT[number], type) else stub
    assert check(number, answer, quiet=True).status == "not attempted"


def test_a_failed_shape_check_becomes_a_hint_not_a_traceback():
    from beartype import beartype
    from jaxtyping import Float, jaxtyped
    from torch import Tensor

    @jaxtyped(typechecker=beartype)
    def annotated(queries: Float[Tensor, "seq d"], keys: Float[Tensor, "kv_seq d"]) -> Float[Tensor, "seq kv_seq"]:
        return torch.softmax(keys @ queries.T, dim=-1)  # (kv_seq, seq): fails the return annotation

    result = check("3.1", annotated, quiet=True)
    assert result.status == "not yet"
    assert "return value" in result.message and "f32[6,4]" in result.message and "kv_seq=6" in result.message


def test_checks_leave_the_learners_random_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check("3.5", BatchedSelfAttention, quiet=True)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("number", "truth"), [
    ("3.2", ["(2, 5, 7)", "(2, 5, 3)"]),
    ("3.3", ["576", "= 9", "var(q·k)", "× 3²"]),
])
def test_a_wrong_prediction_never_gives_the_answer_away(number, truth):
    for wrong in WRONG_ANSWERS[number]:
        result = check(number, wrong, quiet=True)
        assert result.status == "not yet"
        assert not any(t in result.message for t in truth), result


def test_a_wrong_variance_is_told_whether_it_is_too_high_or_too_low():
    assert "too low" in check("3.3", (300, 9), quiet=True).message
    assert "too high" in check("3.3", (576, 20), quiet=True).message

"""Chapter 5's checkers: they accept a right answer, reject the common mistakes with the hint that
names them, and report a stub as not attempted."""

import pytest
import torch
from einops import rearrange, repeat
from torch import nn

from shared import attention as course
from shared.attention import attend, causal_mask
from shared.exercises import check

# -- right answers (the solutions notebook has the same, with explanations) -------------------------


def split_heads(x, n_heads):
    return rearrange(x, "b t (h d) -> b h t d", h=n_heads)


def merge_heads(x):
    return rearrange(x, "b h t d -> b t (h d)")


class FixedMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, n_heads, context_length):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=False)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x):
        seq = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        context = attend(q, k, v, self.mask[:seq, :seq])
        return self.out_proj(rearrange(context, self.merge))

    merge = "b h t d -> b t (h d)"


def repeat_kv(x, groups):
    return repeat(x, "b kv_heads t d -> b (kv_heads groups) t d", groups=groups)


RIGHT = {
    "5.1": (split_heads, merge_heads),
    "5.2": {"B", "E"},
    "5.3": FixedMultiHeadAttention,
    "5.4": repeat_kv,
    "5.5": (402.65, 1610.61),
}

# -- plausible mistakes ------------------------------------------------------------------------------


def split_by_reshape(x, n_heads):
    batch, seq, d_out = x.shape
    return x.reshape(batch, n_heads, seq, d_out // n_heads)


def split_interleaved(x, n_heads):
    return rearrange(x, "b t (d h) -> b h t d", h=n_heads)


def merge_interleaved(x):
    return rearrange(x, "b h t d -> b t (d h)")


def merge_by_reshape(x):
    batch, heads, seq, head_dim = x.shape
    return x.reshape(batch, seq, heads * head_dim)


class BuggyMultiHeadAttention(FixedMultiHeadAttention):  # the notebook's planted bug, unfixed
    merge = "b h t d -> b t (d h)"


def tiled(x, groups):
    return x.repeat(1, groups, 1, 1)


class BorrowsSharedModule(course.MultiHeadAttention):  # the course's own module, under another name
    pass


WRONG_ANSWERS = {
    "5.1": [(split_by_reshape, merge_heads), (split_interleaved, merge_interleaved), (split_heads, merge_interleaved),
            (split_heads, merge_by_reshape)],
    "5.2": [{"B"}, {"E"}, {"B", "D", "E"}, {"A", "B", "E"}, {"B", "C", "E"}, set(), "BF"],
    "5.3": [BuggyMultiHeadAttention, BorrowsSharedModule],
    "5.4": [tiled, course.repeat_kv, lambda x, groups: course.repeat_kv(x, groups)],
    "5.5": [(100.66, 201.33), (402.65, 805.31), (33.55, 134.22), (402_653_184, 1_610_612_736)],
}

HINTS = {  # a phrase each mistake's hint must contain: it names the symptom
    ("5.1", 0): "plain reshape",
    ("5.1", 1): "every third number",
    ("5.1", 2): "interleaves",
    ("5.1", 3): "give x back",
    ("5.2", 0): "last position",
    ("5.2", 1): "softmax",
    ("5.2", 2): "position 0",
    ("5.2", 3): "own rows of qkv",
    ("5.2", 4): "own rows of qkv",
    ("5.2", 6): "Choose among",
    ("5.3", 0): "interleaves the heads",
    ("5.4", 0): "tiled",
    ("5.4", 1): "course's own repeat_kv",
    ("5.4", 2): "course's own repeat_kv",
    ("5.3", 1): "course's own MultiHeadAttention",
    ("5.5", 0): "factor of 4",
    ("5.5", 1): "both the number of rows",
    ("5.5", 2): "12 heads",
    ("5.5", 3): "megabytes",
}


@pytest.mark.parametrize("number", sorted(RIGHT))
def test_the_right_answer_passes(number):
    result = check(number, RIGHT[number], quiet=True)
    assert result.passed, result


@pytest.mark.parametrize(("number", "index"), sorted(HINTS))
def test_each_mistake_gets_the_hint_that_names_it(number, index):
    result = check(number, WRONG_ANSWERS[number][index], quiet=True)
    assert result.status == "not yet" and HINTS[number, index] in result.message, result


def test_megabytes_counted_in_mebibytes_are_right_too():
    assert check("5.5", (384.0, 1536.0), quiet=True).passed


@pytest.mark.parametrize("number", sorted(RIGHT))
def test_a_stub_is_not_attempted(number):
    def stub(*args):
        raise NotImplementedError

    class Stub(nn.Module):
        def __init__(self, *args):
            super().__init__()
            raise NotImplementedError

    answers = {"5.1": (stub, stub), "5.3": Stub, "5.4": stub}
    assert check(number, answers.get(number, ...), quiet=True).status == "not attempted"


def test_the_ablation_prediction_accepts_letters_written_as_a_list_or_a_string():
    assert check("5.2", ["e", "b"], quiet=True).passed
    assert check("5.2", "B, E", quiet=True).passed


@pytest.mark.parametrize(("number", "truth"), [
    ("5.2", ["{'B', 'E'}", "B and E", "(B)", "(E)"]),
    ("5.5", ["402", "1610", "1,610", "100,663,296", "four times"]),
])
def test_a_wrong_prediction_never_gives_the_answer_away(number, truth):
    for wrong in WRONG_ANSWERS[number]:
        result = check(number, wrong, quiet=True)
        assert result.status == "not yet"
        assert not any(t in result.message for t in truth), result


def test_a_wrong_split_shows_the_learners_numbers_but_not_the_expected_ones():
    message = check("5.1", (split_by_reshape, merge_heads), quiet=True).message
    assert "[4.0, 5.0, 6.0, 7.0]" not in message


def test_the_ablation_check_leaves_the_learners_random_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    check("5.2", RIGHT["5.2"], quiet=True)
    assert torch.equal(torch.rand(1), expected)

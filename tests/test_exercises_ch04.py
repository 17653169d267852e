"""Chapter 4's checkers: they accept a right answer, reject the common mistakes with the hint that
names them, and report a stub as not attempted."""

import math

import pytest
import torch
from einops import rearrange

from shared import attention as course
from shared.exercises import check
from shared.shapes import strict_matmul

# -- right answers (the solutions notebook has the same, with explanations) -------------------------


def causal_mask(seq, kv_seq):
    return torch.ones(seq, kv_seq, dtype=torch.bool).triu(diagonal=kv_seq - seq + 1)


def is_causal(layer, x):
    before = layer(x)
    for t in range(x.shape[1]):
        changed = x.clone()
        changed[:, t] += 1.0
        if not torch.equal(layer(changed)[:, :t], before[:, :t]):
            return False
    return True


def causal_weights(queries, keys):
    seq = queries.shape[0]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    scores = (queries @ keys.T / math.sqrt(queries.shape[-1])).masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def batched_context(queries, keys, values):
    seq = queries.shape[-2]
    scores = strict_matmul(queries, rearrange(keys, "b t d -> b d t")) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(causal_mask(seq, seq), float("-inf"))
    return strict_matmul(torch.softmax(scores, dim=-1), values)


RIGHT = {
    "4.1": causal_mask,
    "4.2": is_causal,
    "4.3": ({0.0, 4.0}, {3.0}),
    "4.4": causal_weights,
    "4.5": batched_context,
}

# -- plausible mistakes ------------------------------------------------------------------------------


def mask_without_cache_offset(seq, kv_seq):
    return torch.ones(seq, kv_seq, dtype=torch.bool).triu(diagonal=1)


def mask_inverted(seq, kv_seq):
    return torch.ones(seq, kv_seq, dtype=torch.bool).tril(diagonal=kv_seq - seq)


def mask_hides_the_diagonal(seq, kv_seq):
    return torch.ones(seq, kv_seq, dtype=torch.bool).triu(diagonal=kv_seq - seq)


def mask_as_floats(seq, kv_seq):
    return torch.ones(seq, kv_seq).triu(diagonal=kv_seq - seq + 1)


def compares_every_position(layer, x):
    changed = x.clone()
    changed[:, -1] += 1.0
    return torch.equal(layer(changed), layer(x))


def changes_only_the_last_token(layer, x):
    changed = x.clone()
    changed[:, -1] += 1.0
    return torch.equal(layer(changed)[:, :-1], layer(x)[:, :-1])


def includes_the_changed_position(layer, x):
    for t in range(x.shape[1]):
        changed = x.clone()
        changed[:, t] += 1.0
        if not torch.equal(layer(changed)[:, : t + 1], layer(x)[:, : t + 1]):
            return False
    return True


def masked_with_zero(queries, keys):  # the notebook's planted bug, unfixed
    seq = queries.shape[0]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    return torch.softmax((queries @ keys.T / math.sqrt(queries.shape[-1])).masked_fill(mask, 0.0), dim=-1)


def zeroed_after_softmax(queries, keys):
    seq = queries.shape[0]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    return torch.softmax(queries @ keys.T / math.sqrt(queries.shape[-1]), dim=-1).masked_fill(mask, 0.0)


def broadcasting_context(queries, keys, values):  # the notebook's planted bug, unfixed
    seq = queries.shape[-2]
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(causal_mask(seq, seq), float("-inf"))
    return torch.softmax(scores, dim=-1) @ values


def strict_for_keys_only(queries, keys, values):
    seq = queries.shape[-2]
    scores = strict_matmul(queries, rearrange(keys, "b t d -> b d t")) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(causal_mask(seq, seq), float("-inf"))
    return torch.softmax(scores, dim=-1) @ values


def borrows_attention_weights(queries, keys):
    return course.attention_weights(queries, keys, course.causal_mask(queries.shape[0]))


def borrows_attend(queries, keys, values):
    return course.attend(queries, keys, values, course.causal_mask(queries.shape[-2]))


WRONG_ANSWERS = {
    "4.1": [mask_without_cache_offset, mask_inverted, mask_hides_the_diagonal, mask_as_floats, course.causal_mask],
    "4.2": [compares_every_position, changes_only_the_last_token, includes_the_changed_position],
    "4.3": [({0.0, 3.0}, {3.0}), ({0.0, 2.25}, {3.0}), ({0.0, 4.0}, {0.0, 4.0}), ({0.0, 12.0}, {3.0})],
    "4.4": [masked_with_zero, zeroed_after_softmax, borrows_attention_weights],
    "4.5": [broadcasting_context, strict_for_keys_only, borrows_attend],
}

HINTS = {  # a phrase each mistake's hint must contain: it names the symptom
    ("4.1", 0): "*last*",
    ("4.1", 1): "*not* see",
    ("4.1", 2): "its own key",
    ("4.1", 3): "boolean",
    ("4.2", 0): "*before*",
    ("4.2", 1): "Change each position t in turn",
    ("4.2", 2): "*before*",
    ("4.3", 0): "mean of the output stays 3",
    ("4.3", 1): "scaled the survivors down",
    ("4.3", 2): "eval mode",
    ("4.3", 3): "*keeping*",
    ("4.4", 0): "what is e^0",
    ("4.4", 1): "renormalisation",
    ("4.5", 0): "keys of shape (1, 5, 4)",
    ("4.5", 1): "values of shape (1, 5, 4)",
    ("4.1", 4): "course's own causal_mask",
    ("4.4", 2): "course's own attention_weights",
    ("4.5", 2): "course's own attend",
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

    answer = ... if isinstance(RIGHT[number], tuple) else stub
    assert check(number, answer, quiet=True).status == "not attempted"


def test_a_causality_test_that_changes_its_input_in_place_is_still_judged_fairly():
    def in_place(layer, x):
        before = layer(x)
        for t in range(x.shape[1]):
            saved = x[:, t].clone()
            x[:, t] += 1.0  # the checker hands each layer its own copy, so this cannot leak between layers
            if not torch.equal(layer(x)[:, :t], before[:, :t]):
                return False
            x[:, t] = saved
        return True

    assert check("4.2", in_place, quiet=True).passed


def test_a_wrong_mask_is_shown_but_the_expected_one_is_not():
    result = check("4.1", mask_without_cache_offset, quiet=True)
    assert "Yours:" in result.message and "Expected" not in result.message


def test_a_wrong_dropout_prediction_never_gives_the_answer_away():
    for wrong in WRONG_ANSWERS["4.3"]:
        result = check("4.3", wrong, quiet=True)
        assert result.status == "not yet"
        assert "4.0" not in result.message and "[0.0" not in result.message and "does nothing" not in result.message

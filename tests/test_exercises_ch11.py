"""Chapter 11's checkers: the right answers pass, common mistakes get "not yet" with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet".
"""

import pytest
import torch

import shared.exercises.ch11
from shared.classify import SequenceClassifier
from shared.exercises import check
from shared.lora import apply_lora, count_trainable

# -- 11.1 the last real token ----------------------------------------------------------------------


def last_token_states(hidden, lengths):
    return hidden[torch.arange(hidden.shape[0]), lengths - 1]


def last_position(hidden, lengths):
    return hidden[:, -1]


def one_too_far(hidden, lengths):
    return hidden[torch.arange(hidden.shape[0]), lengths.clamp(max=hidden.shape[1] - 1)]


def mean_of_all(hidden, lengths):
    return hidden.mean(dim=1)


def with_the_courses_pool(hidden, lengths):
    return SequenceClassifier.pool(None, hidden, lengths)


# -- 11.2 a LoRA forward ---------------------------------------------------------------------------


def lora_layer_output(x, linear, A, B, alpha):
    return linear(x) + (alpha / A.shape[0]) * (x @ A.T @ B.T)


def unscaled(x, linear, A, B, alpha):
    return linear(x) + x @ A.T @ B.T


def update_only(x, linear, A, B, alpha):
    return (alpha / A.shape[0]) * (x @ A.T @ B.T)


def no_bias(x, linear, A, B, alpha):
    return x @ linear.weight.T + (alpha / A.shape[0]) * (x @ A.T @ B.T)


# -- 11.3 the count --------------------------------------------------------------------------------

SIZES = {"qkv": (1, 3), "out_proj": (1, 1), "expand": (1, 4), "project": (4, 1)}  # (in, out) in units of emb_dim


def lora_parameter_count(config, targets, rank):
    per_block = sum(rank * (SIZES[t][0] + SIZES[t][1]) * config.emb_dim for t in targets)
    return per_block * config.n_layers


def one_block_only(config, targets, rank):
    return sum(rank * (SIZES[t][0] + SIZES[t][1]) * config.emb_dim for t in targets)


def full_matrices(config, targets, rank):
    return sum(SIZES[t][0] * SIZES[t][1] * config.emb_dim**2 for t in targets) * config.n_layers


def as_if_square(config, targets, rank):
    return 2 * rank * config.emb_dim * len(targets) * config.n_layers


def with_the_courses_count(config, targets, rank):
    from shared.model import GPTModel

    return count_trainable(apply_lora(GPTModel(config), targets, rank, 1.0))[0]


# -- 11.4 merge and unmerge ------------------------------------------------------------------------


def merge(weight, A, B, alpha):
    return weight + (alpha / A.shape[0]) * B @ A


def unmerge(weight, A, B, alpha):
    return weight - (alpha / A.shape[0]) * B @ A


def merge_unscaled(weight, A, B, alpha):
    return weight + B @ A


def unmerge_adds_again(weight, A, B, alpha):
    return weight + (alpha / A.shape[0]) * B @ A


WRONG_ANSWERS = {
    "11.1": [last_position, one_too_far, mean_of_all, with_the_courses_pool],
    "11.2": [unscaled, update_only, no_bias],
    "11.3": [one_block_only, full_matrices, as_if_square, with_the_courses_count],
    "11.4": [(merge_unscaled, unmerge), (merge, unmerge_adds_again), merge],
    "11.5": [{"a", "c"}, {"a", "b", "c", "d"}, {"c", "e"}],
}

RIGHT_ANSWERS = {
    "11.1": last_token_states,
    "11.2": lora_layer_output,
    "11.3": lora_parameter_count,
    "11.4": (merge, unmerge),
    "11.5": {"a", "c", "d"},
}


@pytest.mark.parametrize("number", RIGHT_ANSWERS)
def test_the_right_answer_passes(number):
    result = check(number, RIGHT_ANSWERS[number], quiet=True)
    assert result.passed, result


@pytest.mark.parametrize("number", RIGHT_ANSWERS)
def test_the_stub_is_not_attempted(number):
    def stub(*args):
        raise NotImplementedError

    stubs = {"11.4": (stub, stub), "11.5": ...}
    assert check(number, stubs.get(number, stub), quiet=True).status == "not attempted"


@pytest.mark.parametrize(("number", "answer", "hint"), [
    ("11.1", last_position, "padding token"),
    ("11.1", one_too_far, "one position too far"),
    ("11.1", mean_of_all, "mean pooling"),
    ("11.1", with_the_courses_pool, "course's own SequenceClassifier"),
    ("11.2", unscaled, "scale is not right"),
    ("11.2", update_only, "frozen layer's own output is missing"),
    ("11.2", no_bias, "bias is missing"),
    ("11.3", one_block_only, "right for one block"),
    ("11.3", full_matrices, "too high"),
    ("11.3", with_the_courses_count, "course's own"),
    ("11.4", (merge_unscaled, unmerge), "needs LoRA's scale"),
    ("11.4", (merge, unmerge_adds_again), "unmerge(merge(W)) is not W"),
    ("11.5", {"a", "c"}, "1 of your 5 verdicts"),
])
def test_wrong_answers_get_a_hint_that_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


def test_hints_never_give_the_answer_away():
    message = check("11.3", full_matrices, quiet=True).message
    right = lora_parameter_count(*shared.exercises.ch11._COUNT_CASES[0])
    assert str(right) not in message
    assert "a, c and d" not in check("11.5", {"a", "b"}, quiet=True).message

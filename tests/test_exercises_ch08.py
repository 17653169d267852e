"""Chapter 8's exercises: each checker accepts a right answer, and rejects common mistakes with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet".
"""

import math

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from shared.exercises import check
from shared.exercises.ch08 import (
    _SAME_AS_GREEDY,
    DECODE_CONFIG,
    GREEDY_CALLS,
    NUCLEUS_P,
    NUCLEUS_PROBS,
    _min_p_inputs,
    _penalty_inputs,
    min_p_reference,
    repetition_penalty_reference,
)
from shared.generate import generate, top_p_filter
from shared.model import GPTModel
from shared.shapes import shape_checks

# -- 8.1 min-p -------------------------------------------------------------------------------------------


def min_p_filter(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def min_p_in_logit_space(logits, min_p):  # also right: p_i >= min_p * p_max  <=>  z_i >= z_max + ln(min_p)
    return logits.masked_fill(logits < logits.amax(dim=-1, keepdim=True) + math.log(min_p), float("-inf"))


def min_p_absolute(logits, min_p):
    return logits.masked_fill(torch.softmax(logits, -1) < min_p, float("-inf"))


def min_p_returning_probabilities(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    return probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def min_p_in_place(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill_(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def min_p_over_the_batch(logits, min_p):  # the largest probability of the whole batch, not of each row
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


def min_p_zeroing(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)


def min_p_by_the_reference(logits, min_p):  # right, but the checker's own reference does the work
    return min_p_reference(logits, min_p)


# -- 8.2 top-p counts --------------------------------------------------------------------------------------

RIGHT_COUNTS = (1, 2, 5)

# -- 8.3 repetition penalty ----------------------------------------------------------------------------------


def repetition_penalty(logits, previous, penalty):
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


def penalty_dividing_everything(logits, previous, penalty):
    return logits.scatter(-1, previous, logits.gather(-1, previous) / penalty)


def penalty_per_occurrence(logits, previous, penalty):
    out = logits.clone()
    for b in range(previous.shape[0]):
        for token in previous[b].tolist():
            out[b, token] = out[b, token] / penalty if out[b, token] > 0 else out[b, token] * penalty
    return out


def penalty_in_place(logits, previous, penalty):
    seen = logits.gather(-1, previous)
    return logits.scatter_(-1, previous, torch.where(seen > 0, seen / penalty, seen * penalty))


def penalty_on_every_token(logits, previous, penalty):
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def penalty_subtracting(logits, previous, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    return logits - seen.float() * math.log(penalty)


def penalty_by_the_reference(logits, previous, penalty):
    return repetition_penalty_reference(logits, previous, penalty)


def penalty_on_the_first_row_only(logits, previous, penalty):
    out = logits.clone()
    out[:1] = repetition_penalty(logits[:1], previous[:1], penalty)
    return out


# -- 8.4 decoding several prompts -------------------------------------------------------------------------------


@torch.no_grad()
def complete_all_buggy(model, prompts, max_new_tokens):  # as in the notebook: one cache for every prompt
    cache = model.new_cache()
    results = []
    for idx in prompts:
        logits = model(idx, cache)[:, -1, :]
        for _ in range(max_new_tokens):
            next_id = logits.argmax(dim=-1)
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            logits = model(next_id[:, None], cache)[:, -1, :]
        results.append(idx)
    return results


@torch.no_grad()
def complete_all(model, prompts, max_new_tokens):
    results = []
    for idx in prompts:
        cache = model.new_cache()  # a fresh cache for every prompt
        logits = model(idx, cache)[:, -1, :]
        for _ in range(max_new_tokens):
            next_id = logits.argmax(dim=-1)
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            logits = model(next_id[:, None], cache)[:, -1, :]
        results.append(idx)
    return results


def complete_all_with_generate(model, prompts, max_new_tokens):  # right tokens, but generate writes the loop
    return [generate(model, idx, max_new_tokens) for idx in prompts]


@torch.no_grad()
def complete_all_without_cache(model, prompts, max_new_tokens):  # right tokens, but the whole prefix every step
    results = []
    for idx in prompts:
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, model(idx)[:, -1, :].argmax(dim=-1)[:, None]], dim=1)
        results.append(idx)
    return results


@torch.no_grad()
def complete_all_feeding_everything(model, prompts, max_new_tokens):
    results = []
    for idx in prompts:
        cache = model.new_cache()
        logits = model(idx, cache)[:, -1, :]
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, logits.argmax(dim=-1)[:, None]], dim=1)
            logits = model(idx, cache)[:, -1, :]  # the whole sequence again, on top of the cache
        results.append(idx)
    return results


@torch.no_grad()
def complete_all_one_token_short(model, prompts, max_new_tokens):
    return [complete_all(model, [idx], max_new_tokens - 1)[0] for idx in prompts]


# -- 8.5 which calls give greedy's tokens ----------------------------------------------------------------------

RIGHT_LETTERS = {"a", "b", "c", "f"}
assert RIGHT_LETTERS == _SAME_AS_GREEDY

WRONG_ANSWERS: dict[str, list] = {
    "8.1": [min_p_absolute, min_p_returning_probabilities, min_p_in_place, min_p_over_the_batch, min_p_zeroing,
            min_p_by_the_reference],
    "8.2": [(0, 1, 4), (1, 0, 0), (1, 2, 4), (2, 3, 5), [1, 2], (1.5, 2, 5), 8],
    "8.3": [penalty_dividing_everything, penalty_per_occurrence, penalty_in_place, penalty_on_every_token,
            penalty_subtracting, penalty_on_the_first_row_only, penalty_by_the_reference],
    "8.4": [complete_all_buggy, complete_all_without_cache, complete_all_feeding_everything,
            complete_all_one_token_short, complete_all_with_generate],
    "8.5": [
        {"b"},  # only top-k 1
        {"a", "b", "f"},  # thought a temperature of 2 reorders the tokens
        {"b", "c", "f"},  # thought the cache changes the tokens
        {"a", "b", "c"},  # thought the filters matter at temperature 0
        {"a", "b", "c", "d", "f"},  # thought a low temperature is greedy
        {"a", "b", "c", "e", "f"},  # thought top-p 0.5 keeps one token
        set("abcdef"),
        set(),
        "xyz",
        3,
    ],
}


# -- the right answers pass ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer"),
    [
        ("8.1", min_p_filter),
        ("8.1", min_p_in_logit_space),
        ("8.2", RIGHT_COUNTS),
        ("8.2", list(RIGHT_COUNTS)),
        ("8.3", repetition_penalty),
        ("8.4", complete_all),
        ("8.5", RIGHT_LETTERS),
        ("8.5", "abcf"),
        ("8.5", ["F", "c", "b", "a"]),
        ("8.5", "a, b, c, f"),
    ],
)
def test_the_right_answer_passes(number, answer):
    result = check(number, answer, quiet=True)
    assert result.passed, result


# -- the hints name the mistake ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer", "hint"),
    [
        ("8.1", min_p_absolute, "relative to the top token"),
        ("8.1", min_p_returning_probabilities, "their logits changed"),
        ("8.1", min_p_in_place, "in place"),
        ("8.2", (0, 1, 4), "token that crosses p is kept too"),
        ("8.2", (1, 0, 0), "own probability"),
        ("8.2", [1, 2], "3 whole numbers"),
        ("8.3", penalty_dividing_everything, "*more* likely"),
        ("8.3", penalty_per_occurrence, "once per occurrence"),
        ("8.3", penalty_in_place, "in place"),
        ("8.3", penalty_on_every_token, "do not appear in `previous`"),
        ("8.3", penalty_subtracting, "subtracted log(penalty)"),
        ("8.4", complete_all_buggy, "what does a later prompt's prefill find"),
        ("8.4", complete_all_without_cache, "without a cache"),
        ("8.4", complete_all_one_token_short, "should have shape"),
        ("8.1", min_p_by_the_reference, "course's own min_p_reference"),
        ("8.3", penalty_by_the_reference, "course's own repetition_penalty_reference"),
        ("8.4", complete_all_with_generate, "course's own generate"),
        ("8.5", {"a", "b", "c", "d", "f"}, "includes a call that can choose"),
        ("8.5", {"b", "c", "f"}, "leaves out a call"),
        ("8.5", 3, "set of letters"),
    ],
)
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


# -- the checkers' references are the real thing ---------------------------------------------------------------


def test_the_repetition_penalty_reference_is_hugging_faces():
    logits, previous = _penalty_inputs()
    for penalty in (1.2, 1.5, 2.0):
        theirs = RepetitionPenaltyLogitsProcessor(penalty)(previous, logits.clone())
        torch.testing.assert_close(repetition_penalty_reference(logits, previous, penalty), theirs)


def test_min_p_inputs_have_no_token_on_a_threshold():
    """A token within rounding of min_p * p_max could be kept or dropped by two right answers."""
    logits = _min_p_inputs()
    probs = torch.softmax(logits, dim=-1)
    for min_p in (0.05, 0.2, 0.5):
        threshold = min_p * probs.amax(dim=-1, keepdim=True)
        assert ((probs - threshold).abs() / threshold).min() > 1e-3
        kept = (min_p_reference(logits, min_p) > float("-inf")).sum(dim=-1)
        assert kept.min() >= 1 and (kept < logits.shape[-1]).any()


def test_the_nucleus_counts_are_what_top_p_filter_keeps():
    logits = torch.tensor(NUCLEUS_PROBS).log()[None]
    assert tuple(int((top_p_filter(logits, p) > float("-inf")).sum()) for p in NUCLEUS_P) == RIGHT_COUNTS


def test_checkers_leave_the_learners_random_state_and_threads_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("8.1", min_p_filter), ("8.3", repetition_penalty), ("8.4", complete_all)]:
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


# -- 8.5's answer is what generate does --------------------------------------------------------------------------


def test_the_greedy_calls_are_what_generate_does():
    """Each call marked True gives greedy's tokens for every prompt and seed tried; each marked False
    differs for at least one, on a small model whose distributions are neither one-hot nor flat."""
    torch.manual_seed(85)
    model = GPTModel(DECODE_CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    prompts = [torch.randint(0, DECODE_CONFIG.vocab_size, (1, n)) for n in (3, 6, 9)]
    with shape_checks(False):  # 270 generations: the checks would triple their time
        _compare_with_greedy(model, prompts)


def _compare_with_greedy(model, prompts):
    for letter, kwargs in GREEDY_CALLS.items():
        gives_greedy = letter in _SAME_AS_GREEDY
        same = []
        for prompt in prompts:
            greedy = generate(model, prompt, 20, temperature=0.0)
            for seed in range(5):
                out = generate(model, prompt, 20, **kwargs, generator=torch.Generator().manual_seed(seed))
                same.append(torch.equal(out, greedy))
        assert all(same) if gives_greedy else not all(same), letter


def test_a_wrong_prediction_never_says_which_letter_is_wrong():
    """With yes/no choices, naming the wrong letter would give its answer away: every single flip of the
    right answer gets one of two hints (something extra, something missing), the same whichever letter."""
    flips = [RIGHT_LETTERS ^ {letter} for letter in GREEDY_CALLS]
    messages = {check("8.5", answer, quiet=True).message for answer in flips}
    assert len(messages) == 2, messages

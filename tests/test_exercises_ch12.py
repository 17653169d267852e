"""Chapter 12's checkers: the right answers pass, common mistakes get "not yet" with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet"."""

import pytest
import torch
import torch.nn.functional as F

from shared.dpo import dpo_loss
from shared.exercises import check
from shared.sft import collate_instructions

# -- 12.1 the response mask ------------------------------------------------------------------------


def collate(examples, pad_id):
    seq = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), seq), pad_id)
    mask = torch.zeros((len(examples), seq), dtype=torch.bool)
    for i, (p, r) in enumerate(examples):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) : len(p) + len(r)] = True
    return ids, mask


def collate_left_padded(examples, pad_id):
    seq = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), seq), pad_id)
    mask = torch.zeros((len(examples), seq), dtype=torch.bool)
    for i, (p, r) in enumerate(examples):
        ids[i, seq - len(p) - len(r) :] = torch.tensor(p + r)
        mask[i, seq - len(r) :] = True
    return ids, mask


def collate_marking_the_prompt(examples, pad_id):
    ids, _ = collate(examples, pad_id)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, r) in enumerate(examples):
        mask[i, : len(p) + len(r)] = True
    return ids, mask


def collate_off_by_one(examples, pad_id):
    ids, mask = collate(examples, pad_id)
    return ids, mask.roll(1, dims=1)


def collate_as_int32(examples, pad_id):
    ids, mask = collate(examples, pad_id)
    return ids.int(), mask


def collate_with_the_course(examples, pad_id):
    return collate_instructions(examples, pad_id)


# -- 12.2 the DPO loss -----------------------------------------------------------------------------


def dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean()


def dpo_without_beta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)).mean()


def dpo_without_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * (policy_chosen - policy_rejected)).mean()


def dpo_backwards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * ((policy_rejected - ref_rejected) - (policy_chosen - ref_chosen))).mean()


def dpo_with_the_course(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)[0]


# -- 12.4 stop at end-of-turn ----------------------------------------------------------------------


def cut_reply(ids, end_id):
    return (ids[: ids.index(end_id)], True) if end_id in ids else (list(ids), False)


def cut_keeping_the_end(ids, end_id):
    return (ids[: ids.index(end_id) + 1], True) if end_id in ids else (list(ids), False)


def cut_at_the_last_end(ids, end_id):
    if end_id not in ids:
        return list(ids), False
    return ids[: len(ids) - 1 - ids[::-1].index(end_id)], True


def cut_always_ended(ids, end_id):
    return (ids[: ids.index(end_id)] if end_id in ids else list(ids)), True


WRONG_ANSWERS: dict[str, list] = {
    "12.1": [collate_left_padded, collate_marking_the_prompt, collate_off_by_one, collate_as_int32,
             collate_with_the_course],
    "12.2": [dpo_without_beta, dpo_without_reference, dpo_backwards, dpo_with_the_course],
    "12.3": [256, 2, 4, 1026 * 128 * 2, 512.0],
    "12.4": [cut_keeping_the_end, cut_at_the_last_end, cut_always_ended],
    "12.5": ["a", "c", "d", "B!", 2],
}


@pytest.mark.parametrize(("number", "answer"), [
    ("12.1", collate), ("12.2", dpo), ("12.3", 512), ("12.4", cut_reply), ("12.5", "b"), ("12.5", " B "),
])
def test_the_right_answer_passes(number, answer):
    assert check(number, answer, quiet=True).passed


@pytest.mark.parametrize(("number", "answer", "hint"), [
    ("12.1", collate_left_padded, "padding is on the left"),
    ("12.1", collate_as_int32, "torch.long tensor"),
    ("12.1", collate_marking_the_prompt, "marks the prompt tokens too"),
    ("12.1", collate_with_the_course, "the course's own collate_instructions"),
    ("12.2", dpo_without_beta, "beta is missing"),
    ("12.2", dpo_without_reference, "reference model is missing"),
    ("12.2", dpo_backwards, "wrong way"),
    ("12.2", dpo_with_the_course, "the course's own dpo_loss"),
    ("12.3", 256, "Too few: the output head"),
    ("12.3", 4, "counts rows, not parameters"),
    ("12.3", 10_000, "Too many"),
    ("12.4", cut_keeping_the_end, "keeps the end-of-turn token"),
    ("12.4", cut_at_the_last_end, "the last end-of-turn"),
    ("12.4", cut_always_ended, "the flag is not"),
])
def test_a_wrong_answer_gets_a_hint_that_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result.message


def test_hints_never_give_the_answer_away():
    for answer in (256, 2, 4, 1026 * 128 * 2):
        assert "512" not in check("12.3", answer, quiet=True).message
    for answer in ("a", "c", "d"):
        message = check("12.5", answer, quiet=True).message
        assert "'b'" not in message and '"b"' not in message and "(b)" not in message, message


def test_stubs_are_not_attempted():
    def stub(*args):
        raise NotImplementedError

    for number in ("12.1", "12.2", "12.4"):
        assert check(number, stub, quiet=True).status == "not attempted"
    for number in ("12.3", "12.5"):
        assert check(number, ..., quiet=True).status == "not attempted"

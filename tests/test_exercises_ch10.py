"""Chapter 10's checkers: the right answers pass, common mistakes get "not yet" with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet". The
answers to 10.1 run in two real gloo processes, so they are module-level functions (the checker
sends their source to the new processes).
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from shared.datasets import ResumableSampler
from shared.exercises import check
from shared.train.distributed import all_reduce_mean

# -- 10.1 an all-reduce by hand --------------------------------------------------------------------


def average_gradients(model):
    world_size = dist.get_world_size()
    for p in model.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world_size


def summed_gradients(model):  # forgets to divide
    for p in model.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def first_parameter_only(model):
    p = next(model.parameters())
    dist.all_reduce(p.grad)
    p.grad /= dist.get_world_size()


def with_the_courses_mean(model):  # hands the work to shared.train.distributed.all_reduce_mean
    for p in model.parameters():
        p.grad.copy_(all_reduce_mean(p.grad))


# -- 10.2 gradients of unequal shares --------------------------------------------------------------


def combine(grads, sizes):
    return sum(g * (n / sum(sizes)) for g, n in zip(grads, sizes, strict=True))


def combine_plain_mean(grads, sizes):
    return sum(grads) / len(grads)


def combine_sum(grads, sizes):
    return sum(grads)


def combine_inverse_weights(grads, sizes):
    return sum(g * (sum(sizes) - n) / sum(sizes) for g, n in zip(grads, sizes, strict=True))


# -- 10.3 gradient accumulation --------------------------------------------------------------------


def _piece_loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def accumulate(model, x, y, micro_batch_size):
    pieces = x.shape[0] // micro_batch_size
    for k in range(pieces):
        rows = slice(k * micro_batch_size, (k + 1) * micro_batch_size)
        (_piece_loss(model, x[rows], y[rows]) / pieces).backward()


def accumulate_unscaled(model, x, y, micro_batch_size):
    for k in range(x.shape[0] // micro_batch_size):
        rows = slice(k * micro_batch_size, (k + 1) * micro_batch_size)
        _piece_loss(model, x[rows], y[rows]).backward()


def accumulate_zeroing(model, x, y, micro_batch_size):  # keeps only the last piece
    pieces = x.shape[0] // micro_batch_size
    for k in range(pieces):
        model.zero_grad()
        rows = slice(k * micro_batch_size, (k + 1) * micro_batch_size)
        (_piece_loss(model, x[rows], y[rows]) / pieces).backward()


def accumulate_scaled_by_batch(model, x, y, micro_batch_size):
    for k in range(x.shape[0] // micro_batch_size):
        rows = slice(k * micro_batch_size, (k + 1) * micro_batch_size)
        (_piece_loss(model, x[rows], y[rows]) / x.shape[0]).backward()


# -- 10.4 sharding an epoch ------------------------------------------------------------------------


def shard(order, batch_size, rank, world_size):
    per_rank = batch_size // world_size
    mine = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        mine += order[start + rank * per_rank : start + (rank + 1) * per_rank]
    return mine


def shard_strided(order, batch_size, rank, world_size):  # also right: every world_size-th of each batch
    mine = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        mine += order[start : start + batch_size][rank::world_size]
    return mine


def shard_the_epoch_in_blocks(order, batch_size, rank, world_size):
    n = len(order) // world_size
    return order[rank * n : (rank + 1) * n]


def shard_with_the_sampler(order, batch_size, rank, world_size):
    return list(ResumableSampler(len(order), batch_size=batch_size, rank=rank, world_size=world_size))


def shard_overlapping(order, batch_size, rank, world_size):
    per_rank = batch_size // world_size
    mine = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        mine += order[start : start + per_rank]  # every process takes the first slice
    return mine


# Every wrong answer of 10.1 (each check starts two processes) is tested, with its hint, by
# test_the_hint_names_the_mistake below; tests/test_exercises.py skips these numbers (and checks this claim).
WRONG_ANSWERS_CHECKED_HERE = {"10.1"}

WRONG_ANSWERS: dict[str, list] = {
    "10.1": [summed_gradients, first_parameter_only, with_the_courses_mean],
    "10.2": [combine_plain_mean, combine_sum, combine_inverse_weights],
    "10.3": [accumulate_unscaled, accumulate_zeroing, accumulate_scaled_by_batch],
    "10.4": [shard_the_epoch_in_blocks, shard_with_the_sampler, shard_overlapping],
    "10.5": [(32 * 128 * 4, 2), (32 * 128 // 4, 2), (4096, 8), (4096, 1), 4096, (4096.0, 2)],
}


@pytest.mark.parametrize(("number", "answer"), [
    ("10.1", average_gradients), ("10.2", combine), ("10.3", accumulate), ("10.4", shard), ("10.4", shard_strided),
    ("10.5", (4096, 2)),
])
def test_the_right_answer_passes(number, answer):
    assert check(number, answer, quiet=True).passed


@pytest.mark.parametrize(("number", "answer", "hint"), [
    ("10.1", summed_gradients, "the sum of the two processes' gradients"),
    ("10.1", first_parameter_only, "all-reduce the gradient of every parameter"),
    ("10.1", with_the_courses_mean, "That is the course's own all_reduce_mean"),
    ("10.2", combine_plain_mean, "plain mean"),
    ("10.3", accumulate_unscaled, "4 times too large"),
    ("10.4", shard_the_epoch_in_blocks, "cut every global batch"),
    ("10.4", shard_with_the_sampler, "That is the course's own ResumableSampler"),
    ("10.5", (32 * 128 * 4, 2), "--batch-size is the global batch"),
])
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result.message


def test_a_wrong_prediction_never_gives_the_answer_away():
    for answer in WRONG_ANSWERS["10.5"]:
        message = check("10.5", answer, quiet=True).message
        assert "4,096" not in message and "4096" not in message.replace(str(answer), ""), message


def test_the_stub_is_not_attempted_and_starts_no_process():
    def stub(model):
        raise NotImplementedError

    assert check("10.1", stub, quiet=True).status == "not attempted"


def test_checkers_leave_the_learners_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("10.2", combine), ("10.3", accumulate), ("10.4", shard)]:
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)

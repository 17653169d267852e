"""Chapter 7's exercises: each checker accepts a right answer, and rejects common mistakes with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet".
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared.exercises import check
from shared.exercises.ch07 import BPC_CHARACTERS, BPC_LOSS, BPC_TOKENS, KNOB_CHANGE, final_loss, knob_run
from shared.train import TrainConfig, cross_entropy, evaluate_loss, lr_at

# -- 7.1 warmup and cosine decay ---------------------------------------------------------------------


def lr_schedule(step: int, config: TrainConfig) -> float:
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_warmup_from_zero(step, config):
    if step < config.warmup_steps:
        return config.lr * step / config.warmup_steps
    return lr_schedule(step, config)


def lr_decay_over_all_steps(step, config):
    if step < config.warmup_steps:
        return lr_schedule(step, config)
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    progress = (step - config.warmup_steps) / config.max_steps
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_to_zero(step, config):
    if step < config.warmup_steps:
        return lr_schedule(step, config)
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def lr_min_lr_none_as_zero(step, config):
    min_lr = config.min_lr or 0.0
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_without_warmup(step, config):
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * step / config.max_steps))


def lr_linear_decay(step, config):
    if step < config.warmup_steps:
        return lr_schedule(step, config)
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr - (config.lr - min_lr) * progress


# -- 7.2 cross-entropy that ignores padding -----------------------------------------------------------


def cross_entropy_ignoring(logits, targets, ignore_id):
    real = targets != ignore_id
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.masked_fill(~real, 0)[..., None])[..., 0]
    return -(picked * real).sum() / real.sum()


def ce_gathering_the_ignore_id(logits, targets, ignore_id):
    picked = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    return -picked[targets != ignore_id].mean()


def ce_dividing_by_every_position(logits, targets, ignore_id):
    real = targets != ignore_id
    picked = torch.log_softmax(logits, -1).gather(-1, targets.masked_fill(~real, 0)[..., None])[..., 0]
    return -(picked * real).sum() / real.numel()


def ce_mean_of_row_means(logits, targets, ignore_id):
    real = targets != ignore_id
    picked = torch.log_softmax(logits, -1).gather(-1, targets.masked_fill(~real, 0)[..., None])[..., 0]
    return -((picked * real).sum(-1) / real.sum(-1)).mean()


def ce_padding_counted(logits, targets, ignore_id):
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return -picked.mean()


def ce_positive(logits, targets, ignore_id):
    return -cross_entropy_ignoring(logits, targets, ignore_id)


def ce_as_float(logits, targets, ignore_id):
    return cross_entropy_ignoring(logits, targets, ignore_id).item()


def ce_modifying_targets(logits, targets, ignore_id):
    real = targets != ignore_id
    targets[~real] = 0
    picked = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    return -(picked * real).sum() / real.sum()


# -- 7.3 bits per character ---------------------------------------------------------------------------

RIGHT_BPC = BPC_LOSS * BPC_TOKENS / BPC_CHARACTERS / math.log(2)

# -- 7.4 the training step -----------------------------------------------------------------------------


def train_steps_buggy(model, optimizer, batches, max_norm=1.0):  # as in the notebook: two bugs
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_steps(model, optimizer, batches, max_norm=1.0):
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def train_steps_zeroing_first(model, optimizer, batches, max_norm=1.0):  # also right
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_steps_still_accumulating(model, optimizer, batches, max_norm=1.0):
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_steps_clipping_first(model, optimizer, batches, max_norm=1.0):
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def train_steps_zeroing_before_step(model, optimizer, batches, max_norm=1.0):
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        loss.backward()
        optimizer.zero_grad()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_steps_without_clipping(model, optimizer, batches, max_norm=1.0):
    return train_steps(model, optimizer, batches, max_norm=1e9)


def train_steps_returning_nothing(model, optimizer, batches, max_norm=1.0):
    train_steps(model, optimizer, batches, max_norm)


# -- 7.5 the evaluation ---------------------------------------------------------------------------------


def validation_loss_buggy(model, loader, max_batches):  # as in the notebook
    losses = []
    for i, (x, y) in enumerate(loader):
        if i >= max_batches:
            break
        losses.append(cross_entropy(model(x), y).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def validation_loss(model, loader, max_batches):
    was_training = model.training
    model.eval()
    losses = []
    for i, (x, y) in enumerate(loader):
        if i >= max_batches:
            break
        losses.append(cross_entropy(model(x), y).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def validation_loss_with_grad(model, loader, max_batches):
    was_training = model.training
    model.eval()
    losses = [cross_entropy(model(x), y).item() for i, (x, y) in enumerate(loader) if i < max_batches]
    model.train(was_training)
    return sum(losses) / len(losses)


@torch.no_grad()
def validation_loss_left_in_eval(model, loader, max_batches):
    model.eval()
    losses = [cross_entropy(model(x), y).item() for i, (x, y) in enumerate(loader) if i < max_batches]
    return sum(losses) / len(losses)


@torch.no_grad()
def validation_loss_always_back_to_train(model, loader, max_batches):
    model.eval()
    losses = [cross_entropy(model(x), y).item() for i, (x, y) in enumerate(loader) if i < max_batches]
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def validation_loss_every_batch(model, loader, max_batches):
    was_training = model.training
    model.eval()
    losses = [cross_entropy(model(x), y).item() for x, y in loader]
    model.train(was_training)
    return sum(losses) / len(losses)


# -- 7.6 the experiment: clipping at 0.01 -------------------------------------------------------------------


def right_knob_prediction() -> float:
    return final_loss(knob_run(**KNOB_CHANGE))


# -- the course's own versions, handed in as answers ------------------------------------------------------


def ce_handing_it_to_nll_loss(logits, targets, ignore_id):
    return F.nll_loss(torch.log_softmax(logits, -1).flatten(0, 1), targets.flatten(), ignore_index=ignore_id)


WRONG_ANSWERS: dict[str, list] = {
    "7.1": [lr_warmup_from_zero, lr_decay_over_all_steps, lr_to_zero, lr_min_lr_none_as_zero, lr_without_warmup,
            lr_linear_decay, lr_at, lambda step, config: lr_at(step, config)],
    "7.2": [ce_gathering_the_ignore_id, ce_dividing_by_every_position, ce_mean_of_row_means, ce_padding_counted,
            ce_positive, ce_as_float, ce_modifying_targets, F.cross_entropy, ce_handing_it_to_nll_loss,
            lambda logits, targets, ignore_id: F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                               ignore_index=ignore_id)],
    "7.3": [BPC_LOSS / math.log(2), BPC_LOSS * BPC_TOKENS / BPC_CHARACTERS, RIGHT_BPC + 0.05,
            BPC_LOSS * BPC_CHARACTERS / BPC_TOKENS / math.log(2), (RIGHT_BPC,), True],
    "7.4": [train_steps_buggy, train_steps_still_accumulating, train_steps_clipping_first,
            train_steps_zeroing_before_step, train_steps_without_clipping, train_steps_returning_nothing],
    "7.5": [validation_loss_buggy, validation_loss_with_grad, validation_loss_left_in_eval,
            validation_loss_always_back_to_train, validation_loss_every_batch, evaluate_loss,
            lambda model, loader, max_batches: evaluate_loss(model, loader, max_batches)],
    # 7.6: "clipping 100 times harder slows it a lot" (about the start), "it learns faster", not a number
    "7.6": [6.9, 6.5, 4.5, "5.5", (5.5,)],
}


# -- the right answers pass -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer"),
    [
        ("7.1", lr_schedule),
        ("7.2", cross_entropy_ignoring),
        ("7.3", RIGHT_BPC),
        ("7.3", round(RIGHT_BPC, 2)),
        ("7.4", train_steps),
        ("7.4", train_steps_zeroing_first),
        ("7.5", validation_loss),
        ("7.6", right_knob_prediction()),
        ("7.6", round(right_knob_prediction(), 1)),
    ],
)
def test_the_right_answer_passes(number, answer):
    result = check(number, answer, quiet=True)
    assert result.passed, result


# -- the hints name the mistake ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer", "hint"),
    [
        ("7.1", lr_warmup_from_zero, "warmup starts at 0"),
        ("7.1", lr_decay_over_all_steps, "max_steps - warmup_steps"),
        ("7.1", lr_to_zero, "falls to 0"),
        ("7.1", lr_min_lr_none_as_zero, "min_lr is None"),
        ("7.1", lr_without_warmup, "no warmup"),
        ("7.1", lr_linear_decay, "during the cosine decay"),
        ("7.2", ce_gathering_the_ignore_id, "gather cannot look up a negative index"),
        ("7.2", ce_dividing_by_every_position, "padding included"),
        ("7.2", ce_mean_of_row_means, "each row, then the rows"),
        ("7.2", ce_padding_counted, "padded positions count"),
        ("7.2", ce_positive, "negative"),
        ("7.2", ce_as_float, "scalar"),
        ("7.2", ce_modifying_targets, "in place"),
        ("7.3", BPC_LOSS / math.log(2), "bits per *token*"),
        ("7.3", BPC_LOSS * BPC_TOKENS / BPC_CHARACTERS, "nats per character"),
        ("7.3", BPC_LOSS * BPC_CHARACTERS / BPC_TOKENS / math.log(2), "multiplied by the characters per token"),
        ("7.4", train_steps_buggy, "Both bugs"),
        ("7.4", train_steps_still_accumulating, "pile up"),
        ("7.4", train_steps_clipping_first, "never clipped"),
        ("7.4", train_steps_zeroing_before_step, "have not changed"),
        ("7.4", train_steps_returning_nothing, "Return the list"),
        ("7.5", validation_loss_buggy, "dropout"),
        ("7.5", validation_loss_with_grad, "torch.no_grad()"),
        ("7.5", validation_loss_left_in_eval, "left in eval mode"),
        ("7.5", validation_loss_always_back_to_train, "restore the mode"),
        ("7.5", validation_loss_every_batch, "max_batches"),
        ("7.1", lr_at, "course's own lr_at"),
        ("7.2", ce_handing_it_to_nll_loss, "course's own nll_loss"),
        ("7.5", evaluate_loss, "course's own evaluate_loss"),
        ("7.6", 6.9, "Too high"),
        ("7.6", 4.5, "Too low"),
    ],
)
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


def test_clipping_acts_in_the_training_step_check():
    """Without this, 'clip before backward' (no clipping at all) would pass exercise 7.4."""
    assert not check("7.4", train_steps_without_clipping, quiet=True).passed


def test_checkers_leave_the_learners_random_state_and_threads_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("7.4", train_steps), ("7.5", validation_loss_buggy), ("7.5", validation_loss)]:
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(("number", "answer"), [("7.1", lr_linear_decay), ("7.3", 2.5), ("7.3", 2.0), ("7.6", 6.9),
                                                ("7.6", 4.5)])
def test_a_wrong_answer_is_told_the_direction_never_the_value(number, answer):
    expected = {"7.1": None, "7.3": RIGHT_BPC, "7.6": right_knob_prediction()}[number]
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and ("too high" in result.message.lower() or "too low" in result.message.lower())
    if expected is not None:
        for decimals in (1, 2, 3):
            assert f"{expected:.{decimals}f}" not in result.message, result


def test_a_wrong_value_in_the_evaluation_is_not_told_the_right_one():
    @torch.no_grad()
    def validation_loss_doubled(model, loader, max_batches):
        return 2 * validation_loss(model, loader, max_batches)

    result = check("7.5", validation_loss_doubled, quiet=True)
    assert result.status == "not yet" and "too high" in result.message, result
    assert not any(ch.isdigit() and ch != "3" for ch in result.message), result  # no loss value, only "first 3"


def test_the_experiment_is_the_same_at_every_call_and_clipping_acts_in_it():
    assert knob_run() == knob_run()
    assert knob_run(**KNOB_CHANGE) != knob_run()  # clipping at 0.01 changes the run, a little

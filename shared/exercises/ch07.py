"""Chapter 7's exercises: the learning-rate schedule, a loss that ignores padding, bits per
character, two bug hunts in a training run (a training step, an evaluation), and an experiment
with one knob of the training loop (gradient clipping).

Every checker makes its own seeded inputs (in a forked random state, so the learner's random
stream is left as it was) and compares the answer with ``shared.train`` or with a run of the
correct code on the same inputs. Where a wrong answer matches a common mistake, the hint names it.
A hint never prints the expected value (nor its difference to the answer): it says too high or too
low, or what to think about.
"""

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.exercises import NotYet, as_number, exercise, expect, own_work, seeded
from shared.model import GPT_CPU, GPTConfig, GPTModel
from shared.runtime import eval_mode
from shared.train import TrainConfig, cross_entropy, evaluate_loss, lr_at, train

__all__ = ["BPC_CHARACTERS", "BPC_LOSS", "BPC_TOKENS", "IGNORE_ID", "KNOB_CHANGE", "KNOB_RUN", "SCHEDULES", "knob_run"]

# 7.1: the chapter's CPU run, a default min_lr (lr / 10), and a run without warmup.
SCHEDULES = [
    TrainConfig(max_steps=300, lr=5e-3, min_lr=1e-4, warmup_steps=50),
    TrainConfig(max_steps=120, lr=1e-3, warmup_steps=12),
    TrainConfig(max_steps=40, lr=2e-3, min_lr=0.0, warmup_steps=0),
]
# 7.2: the value PyTorch (and Hugging Face) use for "no target here".
IGNORE_ID = -100
# 7.3: a validation loss, and the validation text of section 7.2 (characters, and tokens of the
# 1,024-token BPE).
BPC_LOSS, BPC_CHARACTERS, BPC_TOKENS = 3.6, 111_540, 49_422
# 7.4 and 7.5: a model small enough to train in milliseconds.
TINY = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=2, n_layers=1)


# -- 7.1 ---------------------------------------------------------------------------------------------


def _schedule(config: TrainConfig, *, warmup_from_zero: bool = False, decay_span: int | None = None,
              floor: float | None = None, warmup: bool = True) -> Callable[[int], float]:
    """``lr_at``, or a near miss of it: each keyword changes one thing."""
    peak, steps = config.lr, config.warmup_steps if warmup else 0
    low = (peak / 10 if config.min_lr is None else config.min_lr) if floor is None else floor
    span = max(1, config.max_steps - steps if decay_span is None else decay_span)

    def rate(step: int) -> float:
        if step < steps:
            return peak * (step if warmup_from_zero else step + 1) / steps
        progress = min(1.0, (step - steps) / span)
        return low + 0.5 * (peak - low) * (1.0 + math.cos(math.pi * progress))

    return rate


def _schedule_mistakes(config: TrainConfig) -> list[tuple[Callable[[int], float], str]]:
    """Schedules that are almost right, each with what it got wrong."""
    return [
        (_schedule(config, warmup_from_zero=True),
         "Your warmup starts at 0: step 0 should already get lr * 1 / warmup_steps, so that the last warmup step "
         "(warmup_steps - 1) reaches the peak: lr * (step + 1) / warmup_steps."),
        (_schedule(config, decay_span=config.max_steps),
         "Your cosine takes max_steps to fall, but it starts after the warmup: it should reach min_lr at the last "
         "step, so it spans max_steps - warmup_steps steps."),
        (_schedule(config, floor=config.min_lr or 0.0),
         "When config.min_lr is None, the floor is lr / 10 (TrainConfig's default), not 0."),
        (_schedule(config, floor=0.0),
         "Your cosine falls to 0; it should end at min_lr (and when min_lr is None, at lr / 10)."),
        (_schedule(config, warmup=False),
         "Your schedule has no warmup: for the first warmup_steps steps the rate should climb linearly to lr."),
    ]


@exercise("7.1", "Warmup and cosine decay", level=2, minutes=15)
def check_schedule(lr_schedule) -> str:
    expect(callable(lr_schedule), f"Pass your function itself, not {type(lr_schedule).__name__}.")
    own_work(lr_schedule, lr_at)
    for config in SCHEDULES:
        expected = [lr_at(step, config) for step in range(config.max_steps)]
        got = [as_number(lr_schedule(step, config), f"lr_schedule({step}, config)") for step in range(config.max_steps)]
        wrong = [s for s in range(config.max_steps)
                 if not math.isclose(got[s], expected[s], rel_tol=1e-6, abs_tol=1e-12)]
        if not wrong:
            continue
        for mistake, hint in _schedule_mistakes(config):
            if all(math.isclose(got[s], mistake(s), rel_tol=1e-6, abs_tol=1e-12) for s in range(config.max_steps)):
                raise NotYet(f"{hint} (checked on {config.max_steps} steps, warmup {config.warmup_steps}, lr "
                             f"{config.lr}, min_lr {config.min_lr})")
        s = wrong[0]
        phase = "warmup" if s < config.warmup_steps else "cosine decay"
        raise NotYet(
            f"For max_steps={config.max_steps}, warmup_steps={config.warmup_steps}, lr={config.lr}, "
            f"min_lr={config.min_lr}: your rate is too {'high' if got[s] > expected[s] else 'low'} at step {s} (during "
            f"the {phase}); {len(wrong)} of {config.max_steps} steps differ. Steps count from 0; the warmup climbs "
            "linearly to lr at its last step; then half a cosine takes the rate from lr to min_lr over the remaining "
            "steps."
        )
    return (f"Equal to shared.train.lr_at at every step of {len(SCHEDULES)} schedules (with and without a warmup, "
            "with min_lr given and left at its default).")


# -- 7.2 ---------------------------------------------------------------------------------------------


def _padded_batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(72)
    logits = 2.0 * torch.randn(3, 7, 11, generator=generator)
    targets = torch.randint(0, 11, (3, 7), generator=generator)
    # Rows padded at the end by different amounts, so that a mean of row means differs from the
    # mean over all real targets.
    targets[0, 5:] = IGNORE_ID
    targets[1, 2:] = IGNORE_ID
    return logits, targets


@exercise("7.2", "Cross-entropy that ignores padding", level=2, minutes=15)
def check_masked_cross_entropy(loss_fn) -> str:
    expect(callable(loss_fn), f"Pass your function itself, not {type(loss_fn).__name__}.")
    own_work(loss_fn, F.cross_entropy, cross_entropy, F.nll_loss, nn.CrossEntropyLoss, nn.NLLLoss)
    logits, targets = _padded_batch()
    given_logits, given_targets = logits.clone().requires_grad_(), targets.clone()
    try:
        loss = loss_fn(given_logits, given_targets, IGNORE_ID)
    except (RuntimeError, IndexError) as e:
        if "index" in str(e).lower() or "out of bounds" in str(e).lower():
            raise NotYet(
                f"Your code failed on the padding id {IGNORE_ID}: gather cannot look up a negative index. Replace "
                "the padded targets with any valid id (0, say) before gather, then leave those positions out of the "
                f"mean. (PyTorch said: {str(e).strip().splitlines()[0]})"
            ) from None
        raise
    expect(torch.equal(given_targets, targets), "Your function changed targets in place; work on a copy (clone).")
    expect(
        isinstance(loss, Tensor) and loss.ndim == 0,
        "Return the loss as a tensor with no dimensions (a scalar), so that training can call backward on it; got "
        f"{type(loss).__name__}{'' if not isinstance(loss, Tensor) else ' of shape ' + str(tuple(loss.shape))}.",
    )
    expect(loss.requires_grad, "Your loss is cut off from the logits (no gradient): do not call .item() or .detach().")
    flat_logits, flat_targets = logits.reshape(-1, 11), targets.reshape(-1)
    expected = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_ID)
    if not torch.allclose(loss.detach().float(), expected, atol=1e-5):
        real = targets != IGNORE_ID
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        near = lambda value: abs(loss.item() - float(value)) < 1e-4
        if near(-expected):
            raise NotYet("Your loss is negative: cross-entropy is minus the mean log-probability.")
        if near(-(picked * real).sum() / real.numel()):
            raise NotYet(
                f"You divided by all {real.numel()} positions, padding included: divide by the number of real "
                f"targets ({int(real.sum())}), or the padding pulls the loss toward 0."
            )
        if near(-torch.stack([picked[b][real[b]].mean() for b in range(3)]).mean()):
            raise NotYet(
                "You averaged each row, then the rows: a row with 2 real targets then weighs as much as one with 7. "
                "Average over all real targets at once (F.cross_entropy's ignore_index does that)."
            )
        if near(-picked.mean()):
            raise NotYet(
                "The padded positions count in your loss: leave out every position whose target is the ignore id."
            )
        if near(-(torch.softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0][real]).mean()):
            raise NotYet("You averaged probabilities; cross-entropy averages minus the *log*-probabilities.")
        raise NotYet(
            f"On the checker's batch (3 rows of 7 targets, {int((~real).sum())} of them padding) your loss is too "
            f"{'high' if loss.item() > expected.item() else 'low'}. Log-softmax over the vocabulary, gather each real "
            "target's log-probability, and average minus those over the real targets only."
        )
    loss.backward()
    reference = logits.clone().requires_grad_()
    F.cross_entropy(reference.reshape(-1, 11), flat_targets, ignore_index=IGNORE_ID).backward()
    expect(
        given_logits.grad is not None and torch.allclose(given_logits.grad, reference.grad, atol=1e-5),
        "The value is right but the gradient is not: compute the loss from the logits with tensor operations only.",
    )
    real = int((targets != IGNORE_ID).sum())
    return (f"{loss.item():.4f} on {real} real targets and {targets.numel() - real} padded ones, the same value and "
            "gradient as F.cross_entropy(..., ignore_index=-100).")


# -- 7.3 ---------------------------------------------------------------------------------------------


def _true_bpc() -> float:
    return BPC_LOSS * BPC_TOKENS / BPC_CHARACTERS / math.log(2)


@exercise("7.3", "Predict the bits per character", level=1, minutes=5)
def check_bpc(prediction) -> str:
    value, true = as_number(prediction, "Your prediction (bits per character)"), _true_bpc()
    if abs(value - true) <= 0.006:
        return (f"{true:.3f} bits per character: {BPC_LOSS} nats per token x {BPC_TOKENS:,} tokens / "
                f"{BPC_CHARACTERS:,} characters / ln 2. Better than nanoGPT's baby GPT (2.72).")
    per_char = BPC_TOKENS / BPC_CHARACTERS
    mistakes = [
        (BPC_LOSS / math.log(2), "That is bits per *token*: each token covers several characters, so divide by "
                                 "the characters per token as well."),
        (BPC_LOSS / per_char / math.log(2), "You multiplied by the characters per token; a token's cost is shared "
                                            "among its characters, so divide: nats per token x tokens / characters."),
        (BPC_LOSS * per_char, "That is nats per character: convert nats to bits by dividing by ln 2."),
        (BPC_LOSS * per_char * math.log(2),
         "You multiplied by ln 2; bits = nats / ln 2 (one bit is ln 2 = 0.693 nats)."),
        (BPC_LOSS * per_char / math.log(10), "You divided by ln 10; bits are base 2: divide by ln 2."),
    ]
    for wrong, hint in mistakes:
        if abs(value - wrong) <= 0.006:
            raise NotYet(hint)
    raise NotYet(
        f"{value:g} is too {'high' if value > true else 'low'}. Total nats = {BPC_LOSS} x {BPC_TOKENS:,} tokens; "
        "divide by the number of characters, then by ln 2 to turn nats into bits (section 7.3)."
    )


# -- 7.4 ---------------------------------------------------------------------------------------------

STEP_LR, STEP_MAX_NORM, N_STEPS = 1.0, 0.1, 6


def _batches() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(74)
    ids = torch.randint(0, TINY.vocab_size, (N_STEPS, 4, TINY.context_length + 1), generator=generator)
    return [(window[:, :-1], window[:, 1:]) for window in ids]


def _reference_steps(model: nn.Module, optimizer, batches, max_norm: float, *, zero_grad: bool = True,
                     clip_after_backward: bool = True, zero_between: bool = False) -> list[float]:
    """The right step (defaults), or one of the ways of getting it wrong."""
    losses = []
    for x, y in batches:
        loss = cross_entropy(model(x), y)
        if not clip_after_backward:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        loss.backward()
        if zero_between:
            optimizer.zero_grad()
        if clip_after_backward:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if zero_grad:
            optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _run_steps(step_fn, model: nn.Module, **variant) -> tuple[object, nn.Module]:
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=STEP_LR)
    with seeded(740):
        if step_fn is None:
            return _reference_steps(model, optimizer, _batches(), STEP_MAX_NORM, **variant), model
        return step_fn(model, optimizer, _batches(), STEP_MAX_NORM), model


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@exercise("7.4", "Find the bug: a training step", level=2, minutes=10)
def check_training_steps(train_steps) -> str:
    expect(callable(train_steps), f"Pass your function itself, not {type(train_steps).__name__}.")
    with seeded(74):
        start = GPTModel(TINY)
    losses, trained = _run_steps(train_steps, start)
    right_losses, right = _run_steps(None, start)
    if _same_parameters(trained, start):
        raise NotYet(
            "After your steps the parameters have not changed at all. Does optimizer.step() see the gradients? "
            "zero_grad belongs after the step (or before the backward), never between backward and step."
        )
    if not _same_parameters(trained, right):
        variants = [
            (dict(zero_grad=False, clip_after_backward=False),
             "Both bugs are still there: the gradients pile up from step to step, and the clipping runs before "
             "backward."),
            (dict(zero_grad=False),
             "The clipping is right now, but the gradients still pile up: backward adds to .grad, so every step also "
             "follows all the previous steps' gradients. Clear them once per step (optimizer.zero_grad())."),
            (dict(clip_after_backward=False),
             "The gradients no longer pile up, but the clipping still runs before backward, on gradients that do not "
             "exist yet (or on the previous step's): this step's gradient is never clipped. Clip after backward, "
             "before the optimizer's step."),
        ]
        for variant, hint in variants:
            if _same_parameters(trained, _run_steps(None, start, **variant)[1]):
                raise NotYet(hint)
        raise NotYet(
            f"After {N_STEPS} steps of SGD (lr {STEP_LR}, clipping at {STEP_MAX_NORM}) the parameters differ from "
            "those of a correct step: loss, backward, clip, optimizer step, zero_grad, once per batch."
        )
    expect(
        isinstance(losses, (list, tuple)) and len(losses) == N_STEPS,
        f"Return the list of the {N_STEPS} losses (one float per step), as train_steps_buggy does.",
    )
    expect(
        all(math.isclose(as_number(a, "each loss"), b, rel_tol=1e-5)
            for a, b in zip(losses, right_losses, strict=True)),
        "The parameters are right but the returned losses are not each step's loss (loss.item(), before the step).",
    )
    return (f"After {N_STEPS} steps the parameters equal a correct run's: gradients cleared once per step, and "
            "clipped after backward.")


# -- 7.5 ---------------------------------------------------------------------------------------------

EVAL_BATCHES, EVAL_MAX_BATCHES = 5, 3


def _eval_batches() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(75)
    ids = torch.randint(0, TINY.vocab_size, (EVAL_BATCHES, 4, TINY.context_length + 1), generator=generator)
    return [(window[:, :-1], window[:, 1:]) for window in ids]


@torch.no_grad()
def _eval_reference(model: nn.Module, batches: list[tuple[Tensor, Tensor]], max_batches: int) -> float:
    """What shared.train.evaluate_loss computes, on a plain list of batches (it takes a DataLoader)."""
    with eval_mode(model):
        return sum(cross_entropy(model(x), y).item() for x, y in batches[:max_batches]) / max_batches


@exercise("7.5", "Find the bug: an evaluation in the middle of a run", level=2, minutes=10)
def check_validation_loss(validation_loss) -> str:
    expect(callable(validation_loss), f"Pass your function itself, not {type(validation_loss).__name__}.")
    own_work(validation_loss, evaluate_loss)
    with seeded(75):
        model = GPTModel(replace(TINY, drop_rate=0.3))
        loader = _eval_batches()
        grad_enabled: list[bool] = []
        hook = model.register_forward_pre_hook(lambda module, args: grad_enabled.append(torch.is_grad_enabled()))
        model.train()  # in the middle of a run
        try:
            first = as_number(validation_loss(model, loader, EVAL_MAX_BATCHES), "validation_loss(...)")
            mode_after = model.training
            model.train()
            second = as_number(validation_loss(model, loader, EVAL_MAX_BATCHES), "validation_loss(...)")
            model.eval()  # and called on a model that is already in eval mode
            validation_loss(model, loader, EVAL_MAX_BATCHES)
            stays_in_eval = not model.training
        finally:
            hook.remove()
        expected = _eval_reference(model, loader, EVAL_MAX_BATCHES)
    if not math.isclose(first, second, rel_tol=1e-6):
        raise NotYet(
            f"Two calls on the same model gave {first:.4f} and {second:.4f}: dropout is still switching off random "
            "activations. Evaluate in eval mode (model.eval())."
        )
    if not math.isclose(first, expected, rel_tol=1e-5):
        everything = _eval_reference(model, loader, EVAL_BATCHES)
        if math.isclose(first, everything, rel_tol=1e-5):
            raise NotYet(f"You averaged all {EVAL_BATCHES} batches; stop after max_batches ({EVAL_MAX_BATCHES}).")
        raise NotYet(f"Your loss is too {'high' if first > expected else 'low'}: it should be the mean over the "
                     f"first {EVAL_MAX_BATCHES} batches, in eval mode.")
    if any(grad_enabled):
        raise NotYet(
            "The value is right, but the forward passes ran with gradients on: PyTorch kept every activation for a "
            "backward pass that never comes. Wrap the loop in torch.no_grad() (or decorate the function with it)."
        )
    if not mode_after:
        raise NotYet(
            "The value is right, but the model is left in eval mode: the training run that called you would go on "
            "without dropout. Put the model back in the mode you found it in (remember model.training)."
        )
    expect(stays_in_eval, "Called on a model in eval mode, your function left it in training mode: restore the mode "
                          "you found, do not always switch to train().")
    return (f"{first:.4f}, the same on every call and equal to shared.train.evaluate_loss: eval mode, no gradients, "
            "and the model is left in the mode it was in.")


# -- 7.6 ---------------------------------------------------------------------------------------------

# A GPT of 80,000 parameters on the start of Tiny Shakespeare: 40 steps take a second or two.
KNOB_MODEL = replace(GPT_CPU, context_length=32, emb_dim=32, n_heads=2, n_layers=1)
KNOB_RUN = TrainConfig(max_steps=40, lr=3e-3, warmup_steps=4, eval_every=40, eval_batches=1, progress=False)
KNOB_CHANGE = {"grad_clip": 0.01}  # the knob the exercise turns: clip at 0.01 instead of 1.0
KNOB_TOLERANCE = 0.1  # nats: a prediction this close to the measured loss passes


@functools.cache
def _knob_ids() -> tuple[int, ...]:
    from shared.corpus import shakespeare_bpe, tiny_shakespeare

    return tuple(shakespeare_bpe(KNOB_MODEL.vocab_size).encode(tiny_shakespeare()[:20_000]))


@functools.cache
def _knob_run(changes: tuple) -> tuple[float, ...]:
    from shared.datasets import create_dataloader

    loader = create_dataloader(list(_knob_ids()), batch_size=8, context_length=KNOB_MODEL.context_length, seed=0)
    with seeded(76):
        history = train(GPTModel(KNOB_MODEL), loader, None, replace(KNOB_RUN, **dict(changes)))
    return tuple(history.step_losses)


def knob_run(**changes) -> list[float]:
    """Every step's loss of exercise 7.6's small run, with ``KNOB_RUN``'s settings changed by ``changes``
    (e.g. ``knob_run(grad_clip=0.01)``). Seeded, on one thread: the same losses at every call."""
    unknown = set(changes) - set(KNOB_RUN.__dataclass_fields__)
    expect(not unknown, f"TrainConfig has no field {sorted(unknown)}.")
    return list(_knob_run(tuple(sorted(changes.items()))))


def final_loss(losses: list[float]) -> float:
    """What exercise 7.6 compares: the mean loss of the last 10 steps of a run."""
    return sum(losses[-10:]) / len(losses[-10:])


@exercise("7.6", "Experiment: clip the gradient a hundred times harder", level=2, minutes=15)
def check_knob_prediction(prediction) -> str:
    value = as_number(prediction, "Your prediction (the mean loss of the last 10 steps)")
    baseline, changed = final_loss(knob_run()), final_loss(knob_run(**KNOB_CHANGE))
    if abs(value - changed) <= KNOB_TOLERANCE:
        closeness = "within 0.05 of" if abs(changed - baseline) < 0.05 else "close to"
        return (f"The run clipped at 0.01 ends {closeness} the run clipped at 1.0: clipping "
                "every step's gradient far below its norm hardly changes what AdamW does, because AdamW divides "
                "each gradient by the root of its own running mean square, so a gradient scaled down by a factor is "
                "followed just as far.")
    if value > changed:
        raise NotYet(
            "Too high: your prediction has the clipped run learning less than it does. Clipping shrinks each "
            "gradient, but look at AdamW's update, m / (sqrt(v) + eps): what happens to it when every gradient is "
            "multiplied by the same small factor?"
        )
    raise NotYet(
        "Too low: clipping only ever shrinks gradients, it gives the optimizer no new information. Which of AdamW's "
        "quantities does a smaller gradient change, and which does it leave as they are?"
    )

"""Training: loss, evaluation, bits per character, a training loop with checkpoints that resume exactly."""

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.data import ResumableSampler
from shared.generate import generate_text
from shared.model import param_groups
from shared.shapes import compile_model

__all__ = [
    "CheckpointMismatchError",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "bits_per_character",
    "cross_entropy",
    "evaluate_loss",
    "load_checkpoint",
    "lr_at",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]


def cross_entropy(logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"]) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy (nats) over every position of every sequence."""
    return F.cross_entropy(rearrange(logits, "b t v -> (b t) v").float(), rearrange(targets, "b t -> (b t)"))


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader, max_batches: int | None = None, device=None) -> float:
    """Mean cross-entropy over (up to ``max_batches``) batches of ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total, n = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        total += cross_entropy(model(x.to(device)), y.to(device)).item()
        n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError("the loader gave no batches to evaluate")
    return total / n


@torch.no_grad()
def bits_per_character(model: nn.Module, tokenizer, text: str, batch_size: int = 16, device=None) -> float:
    """Bits per character of ``text``: total cross-entropy of every predicted token (nats),
    divided by the number of characters those tokens cover, divided by ln 2.

    The token sequence is cut into consecutive windows of the model's context length; each token
    after the first is predicted once, from the tokens before it in its window. Dividing by
    characters instead of tokens makes models with different tokenizers comparable.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if len(ids) < 2:
        raise ValueError("the text is too short: it needs at least two tokens")
    context = model.context_length
    n_windows = (len(ids) - 1) // context
    total_nats = 0.0
    if n_windows:
        windows = ids[: n_windows * context + 1]
        inputs = rearrange(windows[:-1], "(w t) -> w t", t=context)
        targets = rearrange(windows[1:], "(w t) -> w t", t=context)
        for start in range(0, n_windows, batch_size):
            x, y = inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
            logits = model(x)
            total_nats += F.cross_entropy(
                rearrange(logits, "b t v -> (b t) v").float(), rearrange(y, "b t -> (b t)"), reduction="sum"
            ).item()
    rest = ids[n_windows * context :]
    if len(rest) > 1:  # the last, shorter window
        logits = model(rest[None, :-1].to(device))
        total_nats += F.cross_entropy(logits[0].float(), rest[1:].to(device), reduction="sum").item()
    model.train(was_training)
    n_chars = len(text) - len(tokenizer.decode(ids[:1].tolist()))  # the first token is never predicted
    return total_nats / n_chars / math.log(2)


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Learning rate: linear warmup to ``lr``, cosine decay to ``min_lr``."""

    max_steps: int
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_every: int = 100
    eval_batches: int | None = 20  # None: the whole validation loader
    sample_prompt: str | None = None  # printed continuation at each evaluation (needs a tokenizer)
    sample_tokens: int = 40
    checkpoint_path: str | None = None  # saved at each evaluation, on interrupt, and at the end
    bf16_autocast: bool = False  # CUDA only: forward passes in bfloat16
    compile: bool = False  # torch.compile the model (switches shape checks off)
    seed: int = 123
    time_limit_s: float | None = None  # stop after the step that crosses this wall-clock limit
    stop_at_step: int | None = None  # pause after this step (the schedule still runs to max_steps)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.eval_every < 1 or self.warmup_steps < 0:
            raise ValueError("max_steps and eval_every must be >= 1, warmup_steps >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine decay to ``min_lr``."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class History:
    """What a run measured: every step's training loss, and a record per evaluation."""

    step_losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # step, tokens_seen, train_loss, val_loss, lr, elapsed_s

    def column(self, name: str) -> list:
        return [record[name] for record in self.evals]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was saved from a model with another class or config."""


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global generator libraries use)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _model_config(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    return config.to_dict() if config is not None else {}


def save_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra
) -> None:
    """Save model (with its class name and config), optimizer and ``extra`` fields atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": "build-a-gpt/checkpoint",
        "model_class": type(model).__name__,
        "model_config": _model_config(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        **extra,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a half-written checkpoint


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file as a dict (``model_class``, ``model_config``, ``model``, ``step``, ...)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "build-a-gpt/checkpoint":
        raise ValueError(f"{path} is not a checkpoint written by shared.train")
    return state


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``), refusing one from another model config.

    Returns the checkpoint dict (step, history, ...). The error for a mismatch names every field
    that differs, e.g. ``emb_dim: checkpoint 128, this model 64``.
    """
    state = read_checkpoint(path)
    ours, theirs = _model_config(model), state["model_config"]
    if state["model_class"] != type(model).__name__ or ours != theirs:
        differences = [f"model class: checkpoint {state['model_class']}, this model {type(model).__name__}"] * (
            state["model_class"] != type(model).__name__
        )
        differences += [
            f"{key}: checkpoint {theirs.get(key)}, this model {ours.get(key)}"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)
        ]
        raise CheckpointMismatchError(
            f"{Path(path).name} was saved from a different model: "
            + "; ".join(differences)
            + ". Build the model with the checkpoint's config (read_checkpoint(path)['model_config'])."
        )
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    config: TrainConfig,
    *,
    tokenizer=None,
    resume: bool = False,
    device: torch.device | str | None = None,
) -> History:
    """Train ``model`` for ``config.max_steps`` steps; returns the :class:`History`.

    - AdamW with weight decay on matrices only, warmup + cosine learning rate, gradient clipping.
    - Every ``eval_every`` steps (and at the end): validation loss, a sample continuation of
      ``sample_prompt``, and a checkpoint if ``checkpoint_path`` is set.
    - ``resume=True`` continues from ``checkpoint_path`` (model, optimizer, step, RNG states, data
      position, history): the losses are exactly those of an uninterrupted run on the CPU.
    - Ctrl-C (KeyboardInterrupt) saves a checkpoint of the last completed step and returns;
      ``stop_at_step`` or ``time_limit_s`` pause a run the same way on purpose (e.g. to fit a
      Colab session), without changing its learning-rate schedule.
    - A NaN or infinite loss raises :class:`NonFiniteLossError`; the last good checkpoint is kept.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, fused=device.type == "cuda"
    )
    history, step, epoch, batches_done = History(), 0, 0, 0
    if resume:
        if not config.checkpoint_path or not Path(config.checkpoint_path).exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {config.checkpoint_path!r}")
        state = load_checkpoint(config.checkpoint_path, model, optimizer)
        step, (epoch, batches_done) = state["step"], state["data_position"]
        history = History(**state["history"])
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(config.seed)

    sampler = train_loader.sampler
    if not isinstance(sampler, ResumableSampler):
        raise TypeError("train_loader must come from shared.data.create_dataloader (its sampler can resume)")
    batch_size = train_loader.batch_size
    forward = compile_model(model) if config.compile else model
    use_autocast = config.bf16_autocast and device.type == "cuda"

    def checkpoint(rng: dict) -> None:
        if config.checkpoint_path:
            save_checkpoint(
                config.checkpoint_path,
                model,
                optimizer,
                step=step,
                data_position=(epoch, batches_done),
                rng=rng,
                history=asdict(history),
                train_config=asdict(config),
            )

    def evaluate(elapsed: float, recent: list[float]) -> None:
        val = evaluate_loss(model, val_loader, config.eval_batches, device) if val_loader is not None else float("nan")
        record = {
            "step": step,
            "tokens_seen": step * batch_size * train_loader.dataset.context_length,
            "train_loss": sum(recent) / len(recent),
            "val_loss": val,
            "lr": lr_at(step - 1, config),
            "elapsed_s": elapsed,
        }
        history.evals.append(record)
        message = f"step {step:5d} | train {record['train_loss']:.3f} | val {val:.3f}"
        if config.sample_prompt and tokenizer is not None:
            sample = generate_text(model, tokenizer, config.sample_prompt, config.sample_tokens, device=device)
            message += f" | {sample!r}"
        if config.progress:
            tqdm.write(message)

    def batches_from(epoch: int, start_batch: int):
        # DataLoader.__iter__ draws a seed from the global RNG; fork it so dropout's stream (and
        # hence resuming) does not depend on when an epoch's iterator was created.
        sampler.set_position(epoch, start_batch * batch_size)
        with torch.random.fork_rng(devices=[]):
            return iter(train_loader)

    batches = batches_from(epoch, batches_done)
    model.train()
    recent: list[float] = []
    start_time = time.perf_counter() - (history.evals[-1]["elapsed_s"] if history.evals else 0.0)
    # mininterval: one refresh a second keeps a notebook's stored output short (tqdm's default is 10/s)
    bar = tqdm(
        total=config.max_steps, initial=step, disable=not config.progress, desc="training", unit="step", mininterval=1.0
    )
    committed_rng = _rng_state()  # the RNG state right after the last completed step
    try:
        while step < config.max_steps:
            try:
                x, y = next(batches)
                next_epoch, next_batches_done = epoch, batches_done + 1
            except StopIteration:  # a new epoch: a new shuffle order
                next_epoch, next_batches_done = epoch + 1, 1
                batches = batches_from(next_epoch, 0)
                x, y = next(batches)
            x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = cross_entropy(forward(x), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                kept = (
                    f" The last good checkpoint is kept at {config.checkpoint_path}." if config.checkpoint_path else ""
                )
                raise NonFiniteLossError(
                    f"the loss became {loss_value} at step {step + 1}, so training stopped.{kept} "
                    "Try a lower learning rate, a longer warmup, or gradient clipping."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step, epoch, batches_done = step + 1, next_epoch, next_batches_done  # the step is complete
            committed_rng = _rng_state()
            history.step_losses.append(loss_value)
            recent.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)  # shown at the next refresh
            elapsed = time.perf_counter() - start_time
            stop = (config.time_limit_s is not None and elapsed >= config.time_limit_s) or step == config.stop_at_step
            if step % config.eval_every == 0 or step == config.max_steps or stop:
                evaluate(elapsed, recent)
                recent = []
                checkpoint(committed_rng)
            if stop:
                break
    except KeyboardInterrupt:
        bar.close()
        if config.checkpoint_path:
            checkpoint(committed_rng)
            print(
                f"Interrupted after step {step}; checkpoint saved to {config.checkpoint_path}. "
                "Call train(..., resume=True) with the same config to continue."
            )
        else:
            print(f"Interrupted after step {step} (no checkpoint_path set, so nothing was saved).")
        return history
    bar.close()
    return history

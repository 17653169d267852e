"""The training loop: loss, evaluation, bits per character, and ``train``, which resumes exactly.

Nothing here knows which model it trains: anything that maps token ids (batch, seq) to logits
(batch, seq, vocab) will do. Checkpoint files are written by :mod:`shared.train.checkpoint`;
data parallelism (several processes under ``torchrun``) comes from :mod:`shared.train.distributed`.
"""

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.datasets import ResumableSampler
from shared.generate import generate_text
from shared.model import param_groups
from shared.runtime import eval_mode
from shared.shapes import compile_model
from shared.train.checkpoint import (
    CheckpointMismatchError,
    differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from shared.train.distributed import all_reduce_mean, any_rank, world

__all__ = [
    "PRECISIONS",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "bits_per_character",
    "cross_entropy",
    "evaluate_loss",
    "lr_at",
    "resolve_precision",
    "train",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cross_entropy(logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"]) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy (nats) over every position of every sequence."""
    return F.cross_entropy(rearrange(logits, "b t v -> (b t) v").float(), rearrange(targets, "b t -> (b t)"))


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader, max_batches: int | None = None, device=None) -> float:
    """Mean cross-entropy over (up to ``max_batches``) batches of ``loader``, in eval mode."""
    device = device or next(model.parameters()).device
    total, n = 0.0, 0
    with eval_mode(model):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            total += cross_entropy(model(x.to(device)), y.to(device)).item()
            n += 1
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
    device = device or next(model.parameters()).device
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if len(ids) < 2:
        raise ValueError("the text is too short: it needs at least two tokens")
    context = model.context_length
    n_windows = (len(ids) - 1) // context
    total_nats = 0.0
    with eval_mode(model):
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
    n_chars = len(text) - len(tokenizer.decode(ids[:1].tolist()))  # the first token is never predicted
    return total_nats / n_chars / math.log(2)


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Learning rate: linear warmup to ``lr``, cosine decay to ``min_lr``.

    ``precision``: ``"auto"`` is bf16 autocast on a GPU that runs bf16 natively (Ampere and later),
    fp16 autocast with a gradient scaler on other CUDA GPUs (T4, V100), fp32 elsewhere; or force
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the CPU runs both autocasts too, slowly: for tests).
    """

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
    precision: str = "auto"
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


# Fields that may differ between a run and its resumption: they change when and how a run reports
# or stops, never the losses it computes.
_CHANGEABLE_ON_RESUME = {
    "eval_every",
    "eval_batches",
    "sample_prompt",
    "sample_tokens",
    "checkpoint_path",
    "compile",
    "time_limit_s",
    "stop_at_step",
    "progress",
}


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine decay to ``min_lr``."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """What ``"auto"`` means on ``device``: bf16 on a GPU with native bf16, fp16 on other CUDA GPUs,
    fp32 elsewhere. Other values are returned as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


@dataclass
class History:
    """What a run measured: every step's training loss, and a record per evaluation."""

    step_losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # step, tokens_seen, train_loss, val_loss, lr, elapsed_s

    def column(self, name: str) -> list:
        return [record[name] for record in self.evals]


@dataclass
class TrainState:
    """Where a run stands: the step, the position in the shuffled data, and what it measured so far.

    ``batches_done`` counts the global batches of epoch ``epoch`` already learned from.
    """

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    history: History = field(default_factory=History)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class _Loop:
    """One training run: the model, its optimizer and scaler, the data, and the :class:`TrainState`."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_loader, config: TrainConfig, tokenizer, device):
        self.model, self.val_loader, self.config, self.tokenizer = model, val_loader, config, tokenizer
        self.device, self.world = device, world()
        self.loader, self.sampler = train_loader, train_loader.sampler
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("train_loader must come from shared.datasets.create_dataloader (its sampler can resume)")
        if (self.sampler.rank, self.sampler.world_size) != (self.world.rank, self.world.size):
            raise ValueError(
                f"the train loader was built for process {self.sampler.rank} of {self.sampler.world_size}, but this "
                f"is process {self.world.rank} of {self.world.size}: pass rank= and world_size= to create_dataloader"
            )
        self.accumulate = self.sampler.per_rank // train_loader.batch_size  # loader batches per step
        self.tokens_per_step = self.sampler.batch_size * train_loader.dataset.context_length
        self.precision = resolve_precision(config.precision, device)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, fused=device.type == "cuda"
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.state = TrainState()
        self.parallel = (
            DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.world.size > 1
            else model
        )
        self.forward = compile_model(self.parallel) if config.compile else self.parallel

    # -- checkpoints --------------------------------------------------------------------------

    def resume(self) -> None:
        path = self.config.checkpoint_path
        if not path or not Path(path).exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {path!r}")
        saved = load_checkpoint(path, self.model, self.optimizer)
        theirs = {k: v for k, v in saved["train_config"].items() if k not in _CHANGEABLE_ON_RESUME}
        ours = {k: v for k, v in asdict(self.config).items() if k not in _CHANGEABLE_ON_RESUME}
        theirs["betas"] = tuple(theirs["betas"])
        found = differences(ours, theirs, "this run")
        if saved.get("tokens_per_step", self.tokens_per_step) != self.tokens_per_step:
            found.append(f"tokens per step: checkpoint {saved['tokens_per_step']}, this run {self.tokens_per_step}")
        if found:
            raise CheckpointMismatchError(
                f"{Path(path).name} was saved by a run with other settings: " + "; ".join(found) + ". Resume with "
                "the same settings (read_checkpoint(path)['train_config']), or start a new run without resume."
            )
        self.state = TrainState(saved["step"], *saved["data_position"], History(**saved["history"]))
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        if self.world.rank:  # other processes draw their own dropout masks (only rank 0's state is saved)
            torch.manual_seed(self.config.seed + self.world.rank + 1_000 * self.state.step)

    def checkpoint(self, rng: dict) -> None:
        if self.config.checkpoint_path and self.world.is_main:
            state = self.state
            save_checkpoint(
                self.config.checkpoint_path,
                self.model,
                self.optimizer,
                step=state.step,
                data_position=(state.epoch, state.batches_done),
                rng=rng,
                history=asdict(state.history),
                train_config=asdict(self.config),
                tokens_per_step=self.tokens_per_step,
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            )

    # -- data ---------------------------------------------------------------------------------

    def batches_from(self, epoch: int, batches_done: int):
        # DataLoader.__iter__ draws a seed from the global RNG; fork it so dropout's stream (and
        # hence resuming) does not depend on when an epoch's iterator was created.
        self.sampler.set_position(epoch, batches_done * self.sampler.batch_size)
        with torch.random.fork_rng(devices=[]):
            return iter(self.loader)

    def next_global_batch(self, batches) -> tuple[list, object, int, int]:
        """This process's share of the next global batch, as ``accumulate`` loader batches."""
        epoch, done = self.state.epoch, self.state.batches_done
        try:
            first = next(batches)
        except StopIteration:  # a new epoch: a new shuffle order
            epoch, done = epoch + 1, 0
            batches = self.batches_from(epoch, 0)
            first = next(batches)
        return [first] + [next(batches) for _ in range(self.accumulate - 1)], batches, epoch, done + 1

    # -- one step, one evaluation -----------------------------------------------------------------

    def step(self, pieces: list) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.state.step, self.config)
        autocast = torch.autocast(
            self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision), enabled=self.precision != "fp32"
        )
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(pieces):
            last = i == len(pieces) - 1
            # Between the pieces of one step, DDP must not average gradients yet: only after the last.
            sync = nullcontext() if last or self.parallel is self.model else self.parallel.no_sync()
            with sync:
                with autocast:
                    loss = cross_entropy(self.forward(x.to(self.device)), y.to(self.device)) / len(pieces)
                self.scaler.scale(loss).backward()
            total += loss.detach()
        loss_value = all_reduce_mean(total).item()
        if not math.isfinite(loss_value):
            path = self.config.checkpoint_path
            kept = f" The last good checkpoint is kept at {path}." if path else ""
            raise NonFiniteLossError(
                f"the loss became {loss_value} at step {self.state.step + 1}, so training stopped.{kept} "
                "Try a lower learning rate, a longer warmup, or gradient clipping."
            )
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def evaluate(self, elapsed: float, recent: list[float]) -> None:
        if not self.world.is_main:
            return
        config, step = self.config, self.state.step
        if self.val_loader is not None:
            val = evaluate_loss(self.model, self.val_loader, config.eval_batches, self.device)
        else:
            val = float("nan")
        record = {
            "step": step,
            "tokens_seen": step * self.tokens_per_step,
            "train_loss": sum(recent) / len(recent),
            "val_loss": val,
            "lr": lr_at(step - 1, config),
            "elapsed_s": elapsed,
        }
        self.state.history.evals.append(record)
        message = f"step {step:5d} | train {record['train_loss']:.3f} | val {val:.3f}"
        if config.sample_prompt and self.tokenizer is not None:
            sample = generate_text(self.model, self.tokenizer, config.sample_prompt, config.sample_tokens,
                                   device=self.device)
            message += f" | {sample!r}"
        if config.progress:
            tqdm.write(message)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> History:
        config, state = self.config, self.state
        batches = self.batches_from(state.epoch, state.batches_done)
        self.model.train()
        recent: list[float] = []
        start_time = time.perf_counter() - (state.history.evals[-1]["elapsed_s"] if state.history.evals else 0.0)
        # A terminal redraws the bar in place; a notebook keeps every refresh in its stored output,
        # so there the bar refreshes every 10 s instead of 10 times a second (tqdm's default).
        bar = tqdm(total=config.max_steps, initial=state.step, disable=not (config.progress and self.world.is_main),
                   desc="training", unit="step", mininterval=1.0 if sys.stderr.isatty() else 10.0)
        committed_rng = rng_state()  # the RNG state right after the last completed step
        try:
            while state.step < config.max_steps:
                pieces, batches, epoch, done = self.next_global_batch(batches)
                loss_value = self.step(pieces)
                state.step, state.epoch, state.batches_done = state.step + 1, epoch, done  # the step is complete
                committed_rng = rng_state()
                state.history.step_losses.append(loss_value)
                recent.append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)  # shown at the next refresh
                elapsed = time.perf_counter() - start_time
                out_of_time = config.time_limit_s is not None and any_rank(elapsed >= config.time_limit_s, self.device)
                stop = out_of_time or state.step == config.stop_at_step
                if state.step % config.eval_every == 0 or state.step == config.max_steps or stop:
                    self.evaluate(elapsed, recent)
                    recent = []
                    self.checkpoint(committed_rng)
                if stop:
                    break
        except KeyboardInterrupt:
            bar.close()
            if config.checkpoint_path:
                self.checkpoint(committed_rng)
                print(
                    f"Interrupted after step {state.step}; checkpoint saved to {config.checkpoint_path}. "
                    "Call train(..., resume=True) with the same config to continue."
                )
            else:
                print(f"Interrupted after step {state.step} (no checkpoint_path set, so nothing was saved).")
            return state.history
        bar.close()
        return state.history


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

    - AdamW with weight decay on matrices only, warmup + cosine learning rate, gradient clipping,
      mixed precision chosen by ``config.precision`` (fp16 with a gradient scaler).
    - Every ``eval_every`` steps (and at the end): validation loss, a sample continuation of
      ``sample_prompt``, and a checkpoint if ``checkpoint_path`` is set.
    - ``resume=True`` continues from ``checkpoint_path`` (model, optimizer, scaler, step, RNG
      states, data position, history): the losses are exactly those of an uninterrupted run on the
      CPU. A checkpoint from another model or other training settings is refused.
    - Ctrl-C (KeyboardInterrupt) saves a checkpoint of the last completed step and returns;
      ``stop_at_step`` or ``time_limit_s`` pause a run the same way on purpose (e.g. to fit a
      Colab session), without changing its learning-rate schedule.
    - A NaN or infinite loss raises :class:`NonFiniteLossError`; the last good checkpoint is kept.
    - Under ``torchrun`` (a process group is running), the model is wrapped in
      ``DistributedDataParallel``: each process learns from its share of every global batch (the
      loader must come from ``create_dataloader(..., rank=, world_size=)``), the gradients are
      averaged, and only rank 0 evaluates, prints and writes checkpoints.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    loop = _Loop(model, train_loader, val_loader, config, tokenizer, device)
    if resume:
        loop.resume()
    else:
        torch.manual_seed(config.seed + loop.world.rank)
    return loop.run()


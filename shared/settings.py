"""Named settings: the model sizes, tokenizer and training budgets the chapters use on a CPU or a GPU.

Every notebook with bigger settings for a GPU, the command-line trainer and the benchmarks get
them from :func:`pick_setting`, the one switch:

- ``BUILD_A_GPT_SETTING=cpu`` or ``=gpu`` forces a setting; without it, a CUDA GPU picks ``gpu``
  and anything else ``cpu``.
- ``BUILD_A_GPT_SMOKE=1`` turns every run into a smoke test: training runs, batches and other long
  loops are cut to a few steps (:meth:`Setting.cap`), so that the GPU setting can be run top to
  bottom on a CPU in seconds. Its numbers mean nothing; it proves that every cell runs.
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from shared.corpus import shakespeare_bpe
from shared.files import data_dir
from shared.llama import LlamaConfig, swiglu_hidden_dim
from shared.model import GPT_CPU, GPTConfig
from shared.runtime import pick_device
from shared.tokenizer import BPETokenizer
from shared.train import TrainConfig

__all__ = [
    "GPT_GPU",
    "SETTING_VARIABLE",
    "SMOKE_STEPS",
    "SMOKE_VARIABLE",
    "Setting",
    "llama_like",
    "pick_setting",
    "smoke_model",
]

SETTING_VARIABLE = "BUILD_A_GPT_SETTING"
SMOKE_VARIABLE = "BUILD_A_GPT_SMOKE"
SMOKE_STEPS = 3  # what "a few steps" means in a smoke run

# The GPU setting's model: 6 blocks of 384 dimensions with 6 heads and a context of 256 BPE tokens
# (11.5 M parameters; 10.6 M in the blocks, as in nanoGPT's Shakespeare model), with dropout against overfitting.
# Its size and dropout are nanoGPT's; its number of steps is discussed in README ("The GPU setting").
GPT_GPU = GPTConfig(
    vocab_size=1_024,
    context_length=256,
    emb_dim=384,
    n_heads=6,
    n_layers=6,
    drop_rate=0.2,
    qkv_bias=False,
    tie_weights=False,
)


def llama_like(config: GPTConfig) -> LlamaConfig:
    """A Llama-style model with a GPT's sizes: same vocabulary, context, width, heads and depth."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        emb_dim=config.emb_dim,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        hidden_dim=swiglu_hidden_dim(config.emb_dim),
        drop_rate=config.drop_rate,
    )


@dataclass(frozen=True)
class Setting:
    """What a chapter sizes by the machine it runs on.

    - ``gpt``, ``batch_size``, ``stride``, ``run``: chapter 7's model and training run (also the
      command-line trainer's defaults); ``llama`` is the same sizes as a Llama-style model.
    - ``ablation_*``: chapter 9's budget for each variant of its GPT-to-Llama comparison.
    - ``capstone_steps``: how many steps of chapter 7's run (``run``) chapter 9's Llama trains before it
      meets chapter 7's GPT: the first quarter on a CPU, all of them on a GPU.
    - ``smoke``: a smoke run (``BUILD_A_GPT_SMOKE=1``); every size above is already cut down.
    """

    name: str
    smoke: bool
    vocab_size: int
    gpt: GPTConfig
    batch_size: int
    stride: int
    run: TrainConfig
    ablation_model: GPTConfig
    ablation_steps: int
    ablation_batch: int
    ablation_seeds: int
    capstone_steps: int

    @property
    def llama(self) -> LlamaConfig:
        return llama_like(self.gpt)

    def cap(self, n: int, smoke: int = SMOKE_STEPS) -> int:
        """``n`` as it is, or at most ``smoke`` in a smoke run: use it for every long loop."""
        return min(n, smoke) if self.smoke else n

    def tokenizer(self) -> BPETokenizer:
        """Chapter 1's BPE with this setting's vocabulary, trained on Tiny Shakespeare's training split."""
        return shakespeare_bpe(self.vocab_size)

    def checkpoint_path(self, name: str = "ch07_gpt") -> Path:
        """Where chapter 7 keeps its model for this setting (a smoke run never overwrites a real one)."""
        suffix = "_smoke" if self.smoke else ""
        return data_dir() / "checkpoints" / f"{name}_{self.name}{suffix}.pt"

    def training_flops(self, n_params: int) -> float:
        """Training compute of chapter 7's run, by the usual estimate: 6 x parameters x tokens."""
        return 6.0 * n_params * self.run.max_steps * self.batch_size * self.gpt.context_length


def _cpu() -> Setting:
    # GPT_CPU and its optimizer settings: tuned by a 180 s sweep on 2 cores (README, Benchmarks). Chapter 7's run:
    # 600 steps of 16 windows. Measured against 300 steps of 64 windows (twice the compute, and the suite's longest
    # cell) with the same peak learning rate and a sixth of the run as warmup, validation bits per character on the
    # whole validation text: 300 x 64: 2.487; 600 x 16: 2.527; 1,200 x 8: 2.505 (10% slower than 600 x 16: small
    # batches use a core less well); 300 x 32: 2.605; 150 x 64: 2.810. At a fixed compute, more and smaller steps
    # win, as in the sweep. The evaluations cover the same 640 validation windows as before (40 batches of 16).
    run = TrainConfig(max_steps=600, lr=5e-3, min_lr=1e-4, warmup_steps=100, eval_every=150, eval_batches=40,
                      sample_prompt="ROMEO:", sample_tokens=24)
    return Setting(
        name="cpu",
        smoke=False,
        vocab_size=GPT_CPU.vocab_size,
        gpt=GPT_CPU,
        batch_size=16,
        stride=GPT_CPU.context_length // 2,
        run=run,
        # Chapter 9: 5 models x 3 seeds of 60 steps of 8 windows, about 5 s a run on one core, scored on the first
        # 20,000 characters of the validation text. Measured on the same seeds before choosing: 80 steps (a third more
        # compute) gave the same verdicts (RoPE better in every seed: -0.159 against -0.086 with 60 steps; SwiGLU
        # worse in every seed: +0.088 against +0.048; RMSNorm a tiny change either way: -0.008, +0.005); 48 steps
        # blurred them (RoPE -0.016, SwiGLU worse in 2 of 3 seeds). So did 40 steps of 16 windows. The 60-step GPT
        # scores 3.478 bits per character (untrained: 4.45).
        ablation_model=GPT_CPU,
        ablation_steps=60,
        ablation_batch=8,
        ablation_seeds=3,
        # Chapter 9's capstone: the Llama trains the first 150 of chapter 7's 600 steps (the same batches and
        # schedule), about 25 s on one core, and is compared with chapter 7's GPT at step 150 (its first evaluation)
        # and with the GPT's later evaluations. Measured: at step 150 the Llama's validation loss was 4.228 nats per
        # token against the GPT's 4.554, about the GPT's at step 300 (4.208). Training half of the run instead (300
        # steps, 50 s) put the Llama at 3.907 against the GPT's 4.208 at step 300, and at 2.513 bits per character
        # against the GPT's 2.527 after all 600 steps: level.
        capstone_steps=150,
    )


def _gpu() -> Setting:
    # 600 steps of 64 x 256 tokens: each of the 411k training tokens seen about 24 times (12 passes over the
    # half-overlapping windows); nanoGPT's model of this size scored its best on characters after about 25. An
    # estimate from a scaled run on a CPU (README, "The GPU setting"), not yet confirmed on a GPU. Compute:
    # 6 x 11.5 M x 9.8 M tokens = 6.8e14 FLOPs, an eighth of nanoGPT's full 5,000-iteration run.
    run = TrainConfig(max_steps=600, lr=1e-3, min_lr=1e-4, warmup_steps=100, eval_every=100, eval_batches=20,
                      sample_prompt="ROMEO:", sample_tokens=40)
    return Setting(
        name="gpu",
        smoke=False,
        vocab_size=GPT_GPU.vocab_size,
        gpt=GPT_GPU,
        batch_size=64,
        stride=GPT_GPU.context_length // 2,
        run=run,
        ablation_model=GPT_CPU,
        ablation_steps=1_000,
        ablation_batch=64,
        ablation_seeds=3,
        capstone_steps=600,  # chapter 7's whole run: on a GPU it takes a minute or two
    )


def smoke_model(config: GPTConfig) -> GPTConfig:
    """A smoke run's model: ``config``'s heads, context, vocabulary, dropout and options, at 8 dimensions a head
    and at most 2 blocks. A smoke run proves that every cell runs, not how well a model learns; the GPU
    setting's model shrinks from 11.5 M to 0.17 M parameters, and its five smoke runs take half the time."""
    return replace(config, emb_dim=8 * config.n_heads, n_layers=min(config.n_layers, 2))


def _smoke(setting: Setting) -> Setting:
    run = replace(setting.run, max_steps=SMOKE_STEPS, warmup_steps=1, eval_every=SMOKE_STEPS, eval_batches=1,
                  sample_tokens=8)
    return replace(setting, smoke=True, gpt=smoke_model(setting.gpt), batch_size=min(setting.batch_size, 4), run=run,
                   ablation_steps=SMOKE_STEPS, ablation_batch=min(setting.ablation_batch, 4), ablation_seeds=2,
                   capstone_steps=SMOKE_STEPS)


def pick_setting(device: torch.device | str | None = None, name: str | None = None,
                 smoke: bool | None = None) -> Setting:
    """The setting for this run: ``name`` if given, else ``$BUILD_A_GPT_SETTING``, else ``gpu`` on a
    CUDA device and ``cpu`` otherwise; cut down to a smoke test if ``smoke`` or ``$BUILD_A_GPT_SMOKE``."""
    name = name or os.environ.get(SETTING_VARIABLE, "").strip().lower() or None
    if name is None:
        device = torch.device(device) if device is not None else pick_device()
        name = "gpu" if device.type == "cuda" else "cpu"
    if name not in ("cpu", "gpu"):
        raise ValueError(f"unknown setting {name!r} (from {SETTING_VARIABLE} or name=): use 'cpu' or 'gpu'")
    if smoke is None:
        smoke = os.environ.get(SMOKE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
    setting = _cpu() if name == "cpu" else _gpu()
    return _smoke(setting) if smoke else setting

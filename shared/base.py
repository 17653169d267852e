"""The pretrained base that post-training starts from: chapter 7's model, or GPT-2's real weights.

Chapters 11 and 12 fine-tune a model that already read Shakespeare. :func:`load_base` gives it with
its tokenizer, from one of two sources (``BASES``):

- ``"chapter7"``: chapter 7's GPT for a setting (``setting.checkpoint_path()``). When the
  checkpoint is missing, or holds an unfinished run, :func:`pretrain_chapter7` trains it with
  chapter 7's exact recipe (same tokenizer, loader seed, initial weights and schedule) and saves it,
  so a chapter works from a fresh clone. Two processes that need it at once do not both train it:
  the second waits for the first (a lock file beside the checkpoint).
- ``"gpt2"``: OpenAI's GPT-2 124M and GPT-2's own BPE (chapter 1's tokenizer, loaded from GPT-2's
  merges): opt-in, as it downloads 0.5 GB from the Hugging Face hub, unless ``gpt2_weights`` names
  a local ``model.safetensors`` (the tests use a small GPT-2 with random weights saved locally).

Both tokenizers are :class:`shared.tokenizer.BPETokenizer`, so everything after this (tasks, chat
template, fine-tuning) works with either: nothing downstream assumes a vocabulary size or an id.
"""

import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from shared.corpus import tiny_shakespeare
from shared.datasets import create_dataloader, train_val_split
from shared.files import gpt2_bpe_files
from shared.model import GPTConfig, GPTModel
from shared.runtime import pick_device
from shared.settings import Setting
from shared.shapes import shape_checks
from shared.tokenizer import BPETokenizer
from shared.train import History, load_checkpoint, read_checkpoint, train
from shared.weights import download_gpt2, gpt2_config, load_gpt2_from_hf

__all__ = [
    "BASES",
    "CHAPTER7_INIT_SEED",
    "CHAPTER7_LOADER_SEED",
    "Base",
    "BaseSource",
    "chapter7_is_complete",
    "chapter7_lock",
    "load_base",
    "pretrain_chapter7",
]

BaseSource = Literal["chapter7", "gpt2"]
BASES: tuple[str, ...] = ("chapter7", "gpt2")

# Chapter 7's run: torch.manual_seed(CHAPTER7_INIT_SEED) before building the model, and the training
# loader shuffled with CHAPTER7_LOADER_SEED (its cells 40-44 use the same numbers).
CHAPTER7_INIT_SEED = 123
CHAPTER7_LOADER_SEED = 123

# How long a process waits for another one that is training the same checkpoint, and after how long
# without a change a lock or an unfinished checkpoint counts as abandoned (a killed kernel).
_WAIT_S = 3_600.0
_STALE_S = 600.0


class Base(NamedTuple):
    """A pretrained model (in eval mode, on its device), its tokenizer, and where it came from."""

    model: GPTModel
    tokenizer: BPETokenizer
    source: str
    description: str


def chapter7_is_complete(setting: Setting, path: Path | None = None) -> bool:
    """Whether chapter 7's checkpoint for ``setting`` exists and holds its whole run."""
    path = setting.checkpoint_path() if path is None else path
    return path.exists() and read_checkpoint(path).get("step") == setting.run.max_steps


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


@contextmanager
def _exclusive(lock: Path, wait_s: float = _WAIT_S):
    """Hold ``lock`` (a file created exclusively: portable, unlike ``fcntl``); wait while another holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if _age_s(lock) > _STALE_S:  # its owner died without removing it
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() - start > wait_s:
                raise TimeoutError(
                    f"waited {wait_s:.0f} s for {lock} (another process training the same model); "
                    f"if no such process runs, delete the file and try again"
                ) from None
            time.sleep(1.0)
    try:
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def chapter7_lock(setting: Setting, path: Path | None = None):
    """A context manager held while chapter 7's checkpoint for ``setting`` is trained outside chapter 7
    (by :func:`load_base` or ``python -m shared pretrain --chapter7``): a second process waits for it
    (a lock file beside the checkpoint; one left by a killed process is taken over after 10 minutes)."""
    path = setting.checkpoint_path() if path is None else Path(path)
    return _exclusive(path.with_name(path.name + ".lock"))


def pretrain_chapter7(
    setting: Setting, device: torch.device | str | None = None, *, path: Path | None = None, progress: bool = False
) -> tuple[GPTModel, History]:
    """Train chapter 7's model for ``setting`` exactly as chapter 7 does, and save it at ``path``
    (default ``setting.checkpoint_path()``, where chapter 7 writes it). Returns the model and its history.

    The recipe: the setting's tokenizer on the first 90% of Tiny Shakespeare, windows of the
    setting's context with its stride, shuffled with seed 123; weights drawn after
    ``torch.manual_seed(123)``; the setting's schedule, evaluated on the last 10%.
    """
    device = torch.device(device) if device is not None else pick_device()
    path = setting.checkpoint_path() if path is None else Path(path)
    tokenizer = setting.tokenizer()
    train_text, val_text = train_val_split(tiny_shakespeare())
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    context = setting.gpt.context_length
    train_loader = create_dataloader(train_ids, batch_size=setting.batch_size, context_length=context,
                                     stride=setting.stride, seed=CHAPTER7_LOADER_SEED)
    val_loader = create_dataloader(val_ids, batch_size=setting.batch_size, context_length=context, shuffle=False)
    torch.manual_seed(CHAPTER7_INIT_SEED)
    model = GPTModel(setting.gpt, use_sdpa=True).to(device)
    run = replace(setting.run, checkpoint_path=str(path), progress=progress)
    with shape_checks(False):  # a long run: the checks cost time on every call
        history = train(model, train_loader, val_loader, run, tokenizer=tokenizer, device=device)
    return model.eval(), history


def _chapter7(setting: Setting, device: torch.device, train_if_missing: bool, path: Path) -> Base:
    trained_here = False
    if not chapter7_is_complete(setting, path):
        if not train_if_missing:
            raise FileNotFoundError(
                f"{path} is missing or unfinished: run chapter 7 with the {setting.name} setting, or "
                f"`python -m shared pretrain --chapter7 --setting {setting.name}`"
            )
        with chapter7_lock(setting, path):
            # Another process may have finished it while we waited; chapter 7's notebook may be writing it.
            while path.exists() and not chapter7_is_complete(setting, path) and _age_s(path) < _STALE_S:
                time.sleep(2.0)
            if not chapter7_is_complete(setting, path):
                pretrain_chapter7(setting, device, path=path)
                trained_here = True
    model = GPTModel(GPTConfig(**read_checkpoint(path)["model_config"]), use_sdpa=True)
    load_checkpoint(path, model)
    how = "trained here with chapter 7's recipe" if trained_here else "chapter 7's checkpoint"
    description = (f"chapter 7's GPT, {setting.name} setting{' (smoke)' if setting.smoke else ''}: "
                   f"{setting.run.max_steps} steps ({how}, {path.name})")
    return Base(model.to(device).eval(), setting.tokenizer(), "chapter7", description)


def _gpt2(device: torch.device, gpt2_weights: str | Path | None) -> Base:
    if gpt2_weights is None:  # the real GPT-2 124M, from the Hugging Face hub (opt-in: it downloads)
        weights, config = download_gpt2("124M"), gpt2_config("124M", drop_rate=0.0)
    else:  # a folder written by transformers' save_pretrained: config.json and model.safetensors
        folder = Path(gpt2_weights)
        if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
            raise FileNotFoundError(
                f"{folder} should be a folder with config.json and model.safetensors, as "
                "GPT2LMHeadModel.save_pretrained(folder, safe_serialization=True) writes it"
            )
        hf = json.loads((folder / "config.json").read_text())
        config = replace(gpt2_config("124M", drop_rate=0.0), vocab_size=hf["vocab_size"], emb_dim=hf["n_embd"],
                         n_layers=hf["n_layer"], n_heads=hf["n_head"], context_length=hf["n_positions"])
        weights = folder / "model.safetensors"
    tokenizer = BPETokenizer.from_gpt2(*gpt2_bpe_files())
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{weights} has {config.vocab_size} token rows, GPT-2's tokenizer {tokenizer.vocab_size}")
    model = load_gpt2_from_hf(GPTModel(config, use_sdpa=True), weights)
    size = sum(p.numel() for p in model.parameters())
    return Base(model.to(device).eval(), tokenizer, "gpt2", f"GPT-2 ({size / 1e6:.1f} M parameters, {weights})")


def load_base(
    setting: Setting,
    source: str = "chapter7",
    device: torch.device | str | None = None,
    *,
    checkpoint: str | Path | None = None,
    gpt2_weights: str | Path | None = None,
    train_if_missing: bool = True,
) -> Base:
    """The base model and tokenizer post-training starts from (see the module's docstring).

    ``source="chapter7"`` (default): chapter 7's model for ``setting``, trained first if its checkpoint
    is missing (unless ``train_if_missing=False``, then an error says how to make it); ``checkpoint`` puts
    it elsewhere than ``setting.checkpoint_path()``.
    ``source="gpt2"``: GPT-2 124M's weights (downloaded, opt-in) or those in ``gpt2_weights``.
    """
    if source not in BASES:
        raise ValueError(f"unknown base {source!r}: choose one of {list(BASES)}")
    device = torch.device(device) if device is not None else pick_device()
    if source == "chapter7":
        path = setting.checkpoint_path() if checkpoint is None else Path(checkpoint)
        return _chapter7(setting, device, train_if_missing, path)
    return _gpt2(device, gpt2_weights)

"""Checkpoints: a training run's whole state in one file, written atomically, refused by the wrong model.

A checkpoint holds the model (with its class name and config), the optimizer, the gradient scaler
of fp16 training, the loop's position (step, epoch, batch), the random-number states and the
history, so that a resumed run continues exactly as if it had never stopped.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "load_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "build-a-gpt/checkpoint"


class CheckpointMismatchError(ValueError):
    """A checkpoint was saved from a model (or a training run) with another class or config."""


def rng_state() -> dict:
    """The states of every random-number generator training draws from: PyTorch (CPU and CUDA),
    Python's and NumPy's."""
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global generator libraries use)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
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
        "format": FORMAT,
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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by shared.train")
    return state


def differences(ours: dict, theirs: dict, label_ours: str = "this model") -> list[str]:
    """``key: checkpoint X, this model Y`` for every key whose values differ."""
    return [
        f"{key}: checkpoint {theirs.get(key)}, {label_ours} {ours.get(key)}"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``), refusing one from another model config.

    Returns the checkpoint dict (step, history, ...). The error for a mismatch names every field
    that differs, e.g. ``emb_dim: checkpoint 128, this model 64``.
    """
    state = read_checkpoint(path)
    found = []
    if state["model_class"] != type(model).__name__:
        found.append(f"model class: checkpoint {state['model_class']}, this model {type(model).__name__}")
    found += differences(_model_config(model), state["model_config"])
    if found:
        raise CheckpointMismatchError(
            f"{Path(path).name} was saved from a different model: "
            + "; ".join(found)
            + ". Build the model with the checkpoint's config (read_checkpoint(path)['model_config'])."
        )
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state

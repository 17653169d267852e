"""Run-time set-up shared by the notebooks, the training loop and the benchmarks."""

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from shared.shapes import shape_checks_enabled

__all__ = [
    "DEVICE_VARIABLE",
    "eval_mode",
    "pick_device",
    "seed_everything",
    "setup_notebook",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's random generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator is what libraries use)
    torch.manual_seed(seed)


DEVICE_VARIABLE = "BUILD_A_GPT_DEVICE"


def pick_device() -> torch.device:
    """The fastest device available: CUDA, then Apple's MPS, then the CPU.

    ``BUILD_A_GPT_DEVICE=cpu`` (or ``cuda``, ``mps``) forces one. The test suite sets ``cpu``, so that
    the stored outputs, written on a CPU, are compared with a CPU run on a Mac or a GPU machine too.
    """
    forced = os.environ.get(DEVICE_VARIABLE, "").strip().lower()
    if forced:
        if forced not in ("cpu", "cuda", "mps"):
            raise ValueError(f"{DEVICE_VARIABLE}={forced!r}: expected cpu, cuda or mps (or unset it: the fastest)")
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available[forced]:
            raise ValueError(f"{DEVICE_VARIABLE}={forced}, but this machine has no {forced} device: unset it, or cpu")
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup_notebook(seed: int = 123) -> torch.device:
    """Called by every notebook's first cell: seeds, print options, shape checks, device.

    Functions and classes that the notebook defines in later cells are shape-checked too
    (jaxtyping's IPython extension), unless checks are off (``JAXTYPING_DISABLE=1``).
    """
    seed_everything(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python
        ipython = None
    else:
        ipython = get_ipython()
    if ipython is not None:
        ipython.run_line_magic("load_ext", "jaxtyping")
        ipython.run_line_magic("jaxtyping.typechecker", "beartype.beartype")
    device = pick_device()
    checks = "on" if shape_checks_enabled() else "off (JAXTYPING_DISABLE is set)"
    print(f"device: {device.type} | shape checks: {checks} | seed: {seed}")
    return device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode (dropout off), then restore the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

"""Where a stage starts and what it leaves: a model and its tokenizer, from a checkpoint or a base.

Every checkpoint the program writes records its tokenizer (``"tokenizer"``: the JSON of
``BPETokenizer.to_dict``), so the next stage reads the same token ids back, chat tokens included.
A checkpoint without one (chapter 7's, written by the notebook or ``shared.base``) was trained on
Tiny Shakespeare with chapter 1's BPE of its vocabulary size, which is rebuilt (and cached) here.

The stages' shared options live here too: ``--init`` / ``--base`` (where a stage starts) and LoRA's.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from shared.base import BASES, chapter7_is_complete, load_base
from shared.cli.args import positive_float, positive_int, rate
from shared.corpus import shakespeare_bpe
from shared.llama import LlamaConfig, LlamaModel
from shared.lora import apply_lora
from shared.model import GPTConfig, GPTModel
from shared.settings import Setting
from shared.tokenizer import BPETokenizer
from shared.train import read_checkpoint, save_checkpoint

__all__ = [
    "CHAT_LORA_TARGETS",
    "DEFAULT_LORA_TARGETS",
    "Start",
    "add_lora_options",
    "add_start_options",
    "check_lora_options",
    "fail",
    "load_start",
    "lora_from_args",
    "read_model",
    "record_tokenizer",
    "save_model",
]

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "GPTModel": (GPTModel, GPTConfig),
    "LlamaModel": (LlamaModel, LlamaConfig),
}

# LoRA on attention's projections, as in the LoRA paper (query and value, or all four).
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "GPTModel": ["qkv", "out_proj"],
    "LlamaModel": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# The chat stages (sft, dpo) add the output head: the chat tokens' rows start as the mean of the old
# rows (shared.chat.grow_vocabulary), and with attention alone the <|endofturn|> row never trains.
# Measured (chapter 7's CPU GPT, sft --steps 60 --lora-rank 8, 159 held-out prompts, 32 new tokens,
# 3 sampling seeds): attention alone ended its turn 0.000 of the time; with out_head 0.962-0.981, full
# fine-tuning 0.950-0.987.
CHAT_LORA_TARGETS: dict[str, list[str]] = {
    kind: [*targets, "out_head"] for kind, targets in DEFAULT_LORA_TARGETS.items()
}


class Start(NamedTuple):
    """What a stage starts from: a language model, its tokenizer, and a line saying where they came from."""

    model: GPTModel | LlamaModel
    tokenizer: BPETokenizer
    description: str


def fail(prog: str, message: object) -> int:
    """Print ``prog: error: message`` (argparse's form) and return the exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


# -- checkpoints -------------------------------------------------------------------------------


def _tokenizer_from(state: dict, path: Path) -> tuple[BPETokenizer, str]:
    if "tokenizer" in state:
        return BPETokenizer.from_dict(json.loads(state["tokenizer"]), source=f"{path}'s tokenizer"), "its tokenizer"
    vocab_size = state["model_config"]["vocab_size"]
    return shakespeare_bpe(vocab_size), f"chapter 1's BPE of {vocab_size} tokens (the checkpoint records none)"


def read_model(path: str | Path, drop_rate: float | None = None) -> tuple[Start, dict]:
    """The model saved in a checkpoint (on the CPU, in eval mode) with its tokenizer, and the checkpoint.

    ``drop_rate`` replaces the saved config's dropout (it changes no weight). A checkpoint of anything
    but a GPTModel or LlamaModel, or whose tokenizer does not match its vocabulary, is an error. (A
    ``finetune`` classifier's body loads too: it is a whole language model, tuned for its task.)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give the checkpoint.pt a stage wrote (or chapter 7's)")
    state = read_checkpoint(path)
    if state["model_class"] not in MODELS:
        raise ValueError(
            f"{path} holds a {state['model_class']}, not a language model ({' or '.join(MODELS)}): start from "
            "a checkpoint written by pretrain, sft or dpo, or by chapter 7"
        )
    model_class, config_class = MODELS[state["model_class"]]
    config = config_class(**state["model_config"])
    if drop_rate is not None:
        config = dataclasses.replace(config, drop_rate=drop_rate)
    model = model_class(config, use_sdpa=True)
    model.load_state_dict(state["model"])
    tokenizer, which = _tokenizer_from(state, path)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"{path}: the model has {config.vocab_size} token ids but {which} has {tokenizer.vocab_size}; "
            "this checkpoint was not written by this program or chapter 7"
        )
    size = sum(p.numel() for p in model.parameters())
    description = f"{state['model_class']} of {size:,} parameters from {path} ({which})"
    return Start(model.eval(), tokenizer, description), state


def save_model(path: str | Path, model: nn.Module, tokenizer: BPETokenizer, **extra) -> None:
    """``save_checkpoint`` of ``model`` (no optimizer) with its tokenizer recorded, and ``extra`` fields."""
    save_checkpoint(path, model, None, tokenizer=json.dumps(tokenizer.to_dict()), **extra)


def record_tokenizer(path: str | Path, tokenizer: BPETokenizer) -> None:
    """Add ``tokenizer`` to a checkpoint the training loop wrote, in place and atomically."""
    path = Path(path)
    state = read_checkpoint(path)
    state["tokenizer"] = json.dumps(tokenizer.to_dict())
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


# -- where a stage starts ----------------------------------------------------------------------


def add_start_options(parser: argparse.ArgumentParser, *, base: bool = True, init_help: str) -> None:
    """``--init CHECKPOINT`` (and, with ``base``, ``--base chapter7|gpt2``, ``--gpt2-weights`` and
    ``--setting``) and ``--device``."""
    start = parser.add_argument_group("where to start")
    choice = start.add_mutually_exclusive_group(required=not base)
    choice.add_argument("--init", type=Path, metavar="CHECKPOINT", help=init_help)
    if base:
        choice.add_argument("--base", choices=BASES, default=None,
                            help="chapter7: chapter 7's GPT for --setting (trained first if its checkpoint is "
                                 "missing); gpt2: GPT-2 124M's weights, downloaded once (0.5 GB) unless --gpt2-weights "
                                 "(default: chapter7, when --init is not given)")
        start.add_argument("--gpt2-weights", type=Path, metavar="FOLDER",
                           help="with --base gpt2: a folder with config.json and model.safetensors "
                                "(GPT2LMHeadModel.save_pretrained) instead of the download")
        start.add_argument("--setting", choices=["cpu", "gpu"], default=None,
                           help="named settings (shared.settings): which chapter 7 model --base chapter7 means "
                                "(default: $BUILD_A_GPT_SETTING, else gpu on a CUDA device and cpu otherwise)")
    start.add_argument("--device", help="cpu, cuda, mps (default: the fastest available)")


def load_start(args: argparse.Namespace, setting: Setting, device: torch.device) -> Start:
    """The model and tokenizer ``--init`` or ``--base`` name (on ``device``, in eval mode)."""
    if getattr(args, "gpt2_weights", None) is not None and getattr(args, "base", None) != "gpt2":
        raise ValueError("--gpt2-weights is for --base gpt2; leave it out or add --base gpt2")
    if args.init is not None:
        start, _ = read_model(args.init)
        return Start(start.model.to(device), start.tokenizer, start.description)
    source = args.base or "chapter7"
    if source == "chapter7" and not chapter7_is_complete(setting):
        print(f"chapter 7's checkpoint for the {setting.name} setting is missing or unfinished: training it first "
              f"({setting.run.max_steps} steps; `python -m shared pretrain --chapter7` does only this)", flush=True)
    base = load_base(setting, source, device, gpt2_weights=args.gpt2_weights)
    return Start(base.model, base.tokenizer, base.description)


# -- LoRA --------------------------------------------------------------------------------------


def add_lora_options(
    parser: argparse.ArgumentParser, what: str, defaults: dict[str, list[str]] = DEFAULT_LORA_TARGETS
) -> None:
    """``--lora-rank``, ``--lora-alpha``, ``--lora-dropout`` and ``--lora-targets`` (``defaults``: the
    stage's targets when ``--lora-targets`` is not given, by model class)."""
    lora = parser.add_argument_group("LoRA (shared.lora)")
    lora.add_argument("--lora-rank", type=positive_int, metavar="R", help=what)
    lora.add_argument("--lora-alpha", type=positive_float,
                      help="the update is scaled by alpha / rank (default: twice the rank, a scale of 2)")
    lora.add_argument("--lora-dropout", type=rate, help="dropout on the LoRA branch's input (default: 0)")
    lora.add_argument("--lora-targets", nargs="+", metavar="NAME",
                      help="modules to adapt, by name or dotted ending (default: "
                           f"{' '.join(defaults['GPTModel'])} in a GPT, {' '.join(defaults['LlamaModel'])} in a Llama)")


def check_lora_options(args: argparse.Namespace, uses_lora: bool) -> None:
    """Refuse ``--lora-alpha``/``--lora-dropout``/``--lora-targets`` when no LoRA is applied."""
    given = [f"--{name.replace('_', '-')}" for name in ("lora_alpha", "lora_dropout", "lora_targets")
             if getattr(args, name) is not None]
    if given and not uses_lora:
        raise ValueError(f"{' and '.join(given)} set LoRA up, but this run applies none: add --lora-rank R")


def lora_from_args(
    model: nn.Module, args: argparse.Namespace, kind: str, defaults: dict[str, list[str]] = DEFAULT_LORA_TARGETS
) -> nn.Module:
    """``apply_lora`` to ``model`` (a body of class ``kind``) with the options' rank, alpha, dropout and
    targets (``defaults[kind]`` when ``--lora-targets`` is not given)."""
    targets = args.lora_targets or defaults[kind]
    alpha = 2.0 * args.lora_rank if args.lora_alpha is None else args.lora_alpha
    return apply_lora(model, targets, rank=args.lora_rank, alpha=alpha, dropout=args.lora_dropout or 0.0)



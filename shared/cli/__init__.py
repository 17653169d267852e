"""The course's command-line program, ``python -m shared <stage> ...``: one stage of the pipeline each.

    python -m shared pretrain --setting cpu --out runs/cpu        # chapter 7's loop (torchrun for several processes)
    python -m shared finetune --task real-or-shuffled --method lora --out runs/task
    python -m shared sft --init runs/cpu/checkpoint.pt --out runs/sft
    python -m shared dpo --init runs/sft/checkpoint.pt --out runs/dpo

Each stage is a module of this package with its own ``main(argv)`` (``shared.cli.pretrain`` ...),
imported only when it runs. The package sits above everything it uses (settings, training, the
tuning code); nothing in ``shared`` imports it.
"""

import importlib
import sys

__all__ = ["STAGES", "main"]

PROG = "python -m shared"

# stage -> what it does (the module shared.cli.<stage> runs it)
STAGES: dict[str, str] = {
    "pretrain": "train a GPT or a Llama-style model on a text (chapter 7's loop; torchrun for several processes)",
    "finetune": "fine-tune a classifier on a labelled task cut from the plays (chapter 11)",
    "sft": "supervised fine-tuning on the plays' conversations, with chat tokens (chapter 12)",
    "dpo": "preference tuning of an SFT checkpoint against a frozen copy of itself (chapter 12)",
}


def usage() -> str:
    width = max(len(stage) for stage in STAGES)
    lines = [f"usage: {PROG} <stage> [options]", "", "stages:"]
    lines += [f"  {stage:<{width}}  {what}" for stage, what in STAGES.items()]
    lines += ["", f"`{PROG} <stage> --help` lists a stage's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the stage named by the first argument with the rest; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        print(f"{PROG}: error: name a stage: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    if stage in ("-h", "--help"):
        print(usage())
        return 0
    if stage not in STAGES:
        print(usage(), file=sys.stderr)
        print(f"{PROG}: error: unknown stage {stage!r}: choose one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"shared.cli.{stage}").main(rest)

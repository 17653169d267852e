"""Train a GPT or a Llama-style model from the command line, in one process or several.

    python -m shared pretrain --setting cpu --steps 300 --out runs/cpu
    torchrun --nproc_per_node 2 -m shared pretrain --setting cpu --out runs/ddp   # data parallel

The run is the same loop the notebooks call (``shared.train.train``) with the same named settings
(``shared.settings``). It writes to ``--out``: ``checkpoint.pt`` (at every evaluation; resume with
``--resume``), ``history.json`` (every step's loss, every evaluation, and the final bits per
character) and ``loss.png`` (the curves). Under torchrun, every process learns from its share of
each global batch, gradients are averaged (DistributedDataParallel: gloo on the CPU, nccl on
CUDA), and only rank 0 prints and writes files: the losses are those of one process.

Two other starts:

    python -m shared pretrain --chapter7 --setting cpu        # chapter 7's model, where the chapters look for it
    python -m shared pretrain --init runs/cpu/checkpoint.pt --steps 300 --out runs/more   # train on from a checkpoint

``--chapter7`` trains chapter 7's model for a setting with chapter 7's exact recipe
(:func:`shared.base.pretrain_chapter7`) and saves it where the notebooks load it from
(``data/checkpoints/ch07_gpt_<setting>.pt``); a complete one is kept as it is. ``--init`` starts from
a checkpoint's weights and tokenizer (this program's or chapter 7's) with a fresh optimizer and
schedule. Every checkpoint this program writes records its tokenizer, for the stages after it.
"""

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

import torch

from shared.base import chapter7_is_complete, chapter7_lock, pretrain_chapter7
from shared.cli.args import non_negative_float, non_negative_int, positive_float, positive_int, rate
from shared.cli.models import fail, read_model, record_tokenizer
from shared.corpus import read_text_file, text_bpe, tiny_shakespeare
from shared.datasets import create_dataloader, train_val_split
from shared.llama import LlamaModel
from shared.model import GPTConfig, GPTModel, count_parameters
from shared.runtime import pick_device
from shared.settings import Setting, llama_like, pick_setting
from shared.shapes import shape_checks
from shared.train.checkpoint import CheckpointMismatchError
from shared.train.distributed import barrier, init_distributed, shutdown_distributed
from shared.train.loop import PRECISIONS, History, TrainConfig, bits_per_character, train

__all__ = ["build_parser", "check_starts", "main", "parse_args", "plan_run"]

PROG = "python -m shared pretrain"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--setting", choices=["cpu", "gpu"], default=None,
                      help="named sizes and schedule from shared.settings (default: $BUILD_A_GPT_SETTING, else gpu "
                           "on a CUDA device and cpu otherwise); the options below override single fields")
    what.add_argument("--model", choices=["gpt", "llama"], default=None,
                      help="GPTModel, or LlamaModel with the same sizes (RMSNorm, RoPE, SwiGLU) (default: gpt)")
    what.add_argument("--data", type=Path, default=None,
                      help="a UTF-8 text file to train on: its first 90%% trains (and trains the BPE tokenizer), the "
                           "last 10%% validates (default: Tiny Shakespeare)")
    what.add_argument("--init", type=Path, metavar="CHECKPOINT",
                      help="start from this checkpoint's weights and tokenizer (written by this program, sft, or "
                           "chapter 7) with a fresh optimizer and schedule; the model's sizes are the checkpoint's")
    what.add_argument("--chapter7", action="store_true",
                      help="train chapter 7's model for --setting with chapter 7's exact recipe and save it where "
                           "the chapters load it (kept if already complete); history.json and loss.png go to --out")
    sizes = parser.add_argument_group("model sizes (default: the setting's)")
    sizes.add_argument("--vocab", type=positive_int, help="BPE vocabulary size, trained on the training text")
    sizes.add_argument("--context", type=positive_int, help="context length in tokens")
    sizes.add_argument("--emb", type=positive_int, help="embedding width (emb_dim)")
    sizes.add_argument("--heads", type=positive_int, help="attention heads")
    sizes.add_argument("--layers", type=positive_int, help="transformer blocks")
    sizes.add_argument("--kv-heads", type=positive_int, help="key/value heads, fewer than --heads for grouped-query "
                                                     "attention (llama only)")
    sizes.add_argument("--dropout", type=rate, help="dropout rate")
    run = parser.add_argument_group("training (default: the setting's)")
    run.add_argument("--steps", type=positive_int, help="optimizer steps (the learning-rate schedule ends there)")
    run.add_argument("--batch-size", type=positive_int,
                     help="the GLOBAL batch, in windows per step: split equally among the processes")
    run.add_argument("--micro-batch-size", type=positive_int,
                     help="windows per forward pass in each process; gradients of several are accumulated "
                          "(default: the process's whole share)")
    run.add_argument("--lr", type=positive_float, help="peak learning rate")
    run.add_argument("--min-lr", type=non_negative_float, help="learning rate at the end of the cosine decay")
    run.add_argument("--warmup", type=non_negative_int, help="linear warmup steps")
    run.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay (matrices only)")
    run.add_argument("--eval-every", type=positive_int, help="steps between evaluations (and checkpoints)")
    run.add_argument("--eval-batches", type=positive_int, help="validation batches per evaluation")
    run.add_argument("--seed", type=non_negative_int, help="seed of the weights, the batch order and dropout")
    run.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 or fp16 on CUDA, fp32 elsewhere")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--device", help="cpu, cuda, mps (default: the fastest available; under torchrun on CUDA, "
                                      "the GPU of the local rank)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/train"),
                     help="folder for checkpoint.pt, history.json and loss.png (default: runs/train)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run saved in --out/checkpoint.pt, with the same settings")
    out.add_argument("--stop-at-step", type=positive_int,
                     help="pause after this step, with a checkpoint, as if interrupted (the schedule still runs to "
                          "--steps); continue later with --resume")
    out.add_argument("--quiet", action="store_true", help="no progress bar and no per-evaluation lines")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _override(obj, **changes):
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def plan_run(args: argparse.Namespace, setting: Setting, vocab_size: int) -> tuple[GPTConfig, int, TrainConfig]:
    """The model's config, the global batch and the training config: an option given on the command line
    replaces the setting's value; an absent one (``None``) keeps it. ``parse_args`` has already refused
    zero and negative numbers, so no given value is mistaken for "not given"."""
    gpt = _override(setting.gpt, vocab_size=vocab_size, context_length=args.context, emb_dim=args.emb,
                    n_heads=args.heads, n_layers=args.layers, drop_rate=args.dropout)
    if args.model in (None, "gpt") and args.kv_heads is not None:
        raise ValueError("--kv-heads is for --model llama (grouped-query attention); GPTModel has none")
    batch_size = setting.batch_size if args.batch_size is None else args.batch_size
    config = _override(setting.run, max_steps=args.steps, lr=args.lr, min_lr=args.min_lr,
                       warmup_steps=args.warmup, weight_decay=args.weight_decay, eval_every=args.eval_every,
                       eval_batches=args.eval_batches, seed=args.seed, precision=args.precision)
    if args.steps is not None and args.warmup is None:
        config = dataclasses.replace(config, warmup_steps=min(config.warmup_steps, max(0, args.steps // 10)))
    config = dataclasses.replace(config, checkpoint_path=str(args.out / "checkpoint.pt"),
                                 compile=args.compile or config.compile, stop_at_step=args.stop_at_step)
    return gpt, batch_size, config


# Options that only a run from scratch can take (the model's shape and tokenizer), and the few that
# --chapter7 leaves open (its recipe is chapter 7's).
_SHAPE_OPTIONS = ("model", "vocab", "context", "emb", "heads", "layers", "kv_heads")
_CHAPTER7_OPTIONS = ("chapter7", "setting", "device", "out", "quiet")


def _given(args: argparse.Namespace, names) -> list[str]:
    defaults = vars(parse_args([]))
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) != defaults[name]]


def check_starts(args: argparse.Namespace) -> None:
    """Refuse options that contradict ``--init`` or ``--chapter7``, naming them."""
    if args.chapter7:
        extra = _given(args, [name for name in vars(args) if name not in _CHAPTER7_OPTIONS])
        if extra:
            raise ValueError(f"--chapter7 trains with chapter 7's exact recipe for --setting: leave out "
                             f"{', '.join(extra)}")
    if args.init is not None:
        extra = _given(args, _SHAPE_OPTIONS)
        if extra:
            raise ValueError(f"the model and tokenizer come from --init {args.init}: leave out {', '.join(extra)}")
        if args.resume:
            raise ValueError("--resume continues --out's own run; --init starts a new one from another checkpoint's "
                             "weights: give one of them")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else pick_device()
    try:
        here = init_distributed(device.type)
    except ValueError as e:
        return fail(PROG, e)
    try:
        check_starts(args)
        if device.type == "cuda" and here.size > 1:
            device = torch.device("cuda", here.local_rank)
        setting = pick_setting(device, args.setting)
        if args.chapter7:
            if here.size > 1:
                raise ValueError("--chapter7 is chapter 7's run in one process: start it without torchrun")
            return _chapter7(args, setting, device)
        text = read_text_file(args.data) if args.data else tiny_shakespeare()
        train_text, val_text = train_val_split(text)
        if args.init is not None:
            start, _ = read_model(args.init, drop_rate=args.dropout)
            tokenizer = start.tokenizer
        else:
            vocab = setting.vocab_size if args.vocab is None else args.vocab
            if here.is_main:  # one process trains (and caches) the tokenizer, the others then load it
                tokenizer = text_bpe(train_text, vocab)
            barrier()
            if not here.is_main:
                tokenizer = text_bpe(train_text, vocab)
        gpt, batch_size, config = plan_run(args, setting, tokenizer.vocab_size)
        config = dataclasses.replace(config, progress=here.is_main and not args.quiet)
        train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
        context = start.model.config.context_length if args.init is not None else gpt.context_length
        train_loader = create_dataloader(train_ids, batch_size=batch_size, context_length=context,
                                         stride=max(1, context // 2), seed=config.seed, rank=here.rank,
                                         world_size=here.size, micro_batch_size=args.micro_batch_size)
        val_loader = create_dataloader(val_ids, batch_size=min(batch_size, 64), context_length=context,
                                       shuffle=False, drop_last=False)
        if args.resume and not Path(config.checkpoint_path).exists():
            raise FileNotFoundError(f"--resume, but there is no {config.checkpoint_path}: start without --resume")
    except (ValueError, FileNotFoundError) as e:
        code = fail(PROG, e) if here.is_main else 2
        shutdown_distributed()
        return code

    torch.manual_seed(config.seed)  # the same initial weights in every process
    if args.init is not None:
        model = start.model
    elif args.model in (None, "gpt"):
        model = GPTModel(gpt, use_sdpa=True)
    else:
        model = LlamaModel(_override(llama_like(gpt), n_kv_heads=args.kv_heads), use_sdpa=True)
    if here.is_main and not args.quiet:
        origin = f"from {args.init}" if args.init is not None else "from scratch"
        print(f"setting {setting.name}{' (smoke)' if setting.smoke else ''} | {type(model).__name__} "
              f"{count_parameters(model):,} parameters, {origin} | {here.size} process(es) on {device} | global "
              f"batch {batch_size} x {context} tokens | {config.max_steps} steps", flush=True)
    # torch.optim imports torch._dynamo when the first optimizer is built (2-3 s on a CPU): import it before
    # the clock starts, so that `seconds` times the training loop, not a one-off import.
    importlib.import_module("torch._dynamo")

    started = time.perf_counter()
    try:
        with shape_checks(False):  # a long run: the checks cost time on every call (the tests run them)
            history = train(model, train_loader, val_loader, config, tokenizer=tokenizer, resume=args.resume,
                            device=device)
    except CheckpointMismatchError as e:
        code = fail(PROG, e) if here.is_main else 2
        shutdown_distributed()
        return code
    seconds = time.perf_counter() - started
    if here.is_main:
        record_tokenizer(config.checkpoint_path, tokenizer)  # for --init and the tuning stages
        extra = {"processes": here.size, "tokens_per_step": batch_size * context,
                 "init": None if args.init is None else str(args.init), "train_config": dataclasses.asdict(config)}
        bpc = _write_outputs(args.out, model, tokenizer, val_text, history, seconds, setting, device, extra)
        if not args.quiet:
            print(f"validation: {bpc:.3f} bits per character | {len(history.step_losses)} steps in {seconds:.1f} s "
                  f"| wrote {args.out}/checkpoint.pt, history.json, loss.png")
    shutdown_distributed()
    return 0


def _chapter7(args: argparse.Namespace, setting: Setting, device: torch.device) -> int:
    """``--chapter7``: chapter 7's model for ``setting``, trained unless its checkpoint is complete."""
    path = setting.checkpoint_path()
    started = time.perf_counter()
    if chapter7_is_complete(setting, path):
        start, state = read_model(path)
        model, history, seconds = start.model.to(device), History(**state["history"]), None
        if not args.quiet:
            print(f"{path} already holds chapter 7's whole run ({setting.run.max_steps} steps): kept as it is")
    else:
        if not args.quiet:
            print(f"training chapter 7's model for the {setting.name} setting ({setting.run.max_steps} steps) "
                  f"into {path}", flush=True)
        with chapter7_lock(setting, path), shape_checks(False):  # a notebook training it meanwhile waits
            if chapter7_is_complete(setting, path):  # another process finished it while this one waited
                start, state = read_model(path)
                model, history = start.model.to(device), History(**state["history"])
            else:
                model, history = pretrain_chapter7(setting, device, path=path, progress=not args.quiet)
        seconds = time.perf_counter() - started
    _, val_text = train_val_split(tiny_shakespeare())
    extra = {"processes": 1, "tokens_per_step": setting.batch_size * setting.gpt.context_length,
             "checkpoint": str(path), "train_config": dataclasses.asdict(setting.run)}
    bpc = _write_outputs(args.out, model, setting.tokenizer(), val_text, history, seconds, setting, device, extra)
    if not args.quiet:
        print(f"validation: {bpc:.3f} bits per character | wrote {path}, {args.out}/history.json, loss.png")
    return 0


def _write_outputs(out: Path, model, tokenizer, val_text: str, history: History, seconds: float | None,
                   setting: Setting, device: torch.device, extra: dict) -> float:
    """history.json and loss.png in ``out``; returns the validation bits per character."""
    with shape_checks(False):
        bpc = bits_per_character(model, tokenizer, val_text, device=device)
    record = {
        "step_losses": history.step_losses,
        "evals": history.evals,
        "val_bpc": bpc,
        "seconds": seconds,
        "setting": setting.name,
        "model": type(model).__name__,
        "model_config": model.config.to_dict(),
        **extra,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(record, indent=1))
    _plot(history, out / "loss.png", f"{type(model).__name__}, {record['processes']} process(es)")
    return bpc


def _plot(history, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no window
    import matplotlib.pyplot as plt

    from shared.plotting import plot_losses

    ax = plot_losses(history)
    ax.set_title(title)
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)


if __name__ == "__main__":
    sys.exit(main())

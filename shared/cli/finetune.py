"""Fine-tune a classifier on a labelled task cut from the plays (chapter 11), from a pretrained model.

    python -m shared finetune --method full --out runs/task
    python -m shared finetune --task speech-end --init runs/cpu/checkpoint.pt --lora-rank 8 --out runs/lora
    python -m shared finetune --method scratch --labels 200 --seed 1 --out runs/scratch
    python -m shared finetune --task who-speaks --characters 2 --out runs/who

The body is a language model (``--init CHECKPOINT``: one written by ``pretrain``, ``sft`` or chapter
7; or ``--base chapter7|gpt2``, :func:`shared.base.load_base`) and a new linear head reads one vector
per text (:class:`shared.classify.SequenceClassifier`). ``--method`` says what trains: ``full``
(everything), ``lora`` (LoRA adapters in the body and the head, :func:`shared.lora.apply_lora`),
``frozen`` (the head alone on the frozen body) or ``scratch`` (the same architecture with fresh random
weights, everything trained: what pretraining is measured against). The examples come from the held-out
tenth of Tiny Shakespeare that no pretraining read (:mod:`shared.tasks`), split by speech with a fixed
seed, so every method and seed sees the same data. The default task, ``speech-end`` (chapter 11's: does
the speech end here?), reads the end of a text, so a text longer than the model's context keeps its
last tokens; the other tasks keep their first. It prints and writes to ``--out`` the held-out
accuracy with the majority-class baseline (``history.json``) and the classifier (``classifier.pt``:
the body, LoRA merged in, as a checkpoint of its class, with the head, the tokenizer and the class names).
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from shared.classify import SequenceClassifier, accuracy, encode_texts, train_classifier
from shared.cli.args import non_negative_float, non_negative_int, positive_float, positive_int
from shared.cli.models import (
    add_lora_options,
    add_start_options,
    check_lora_options,
    fail,
    load_start,
    lora_from_args,
    save_model,
)
from shared.llama import LlamaModel
from shared.lora import count_trainable, merge_and_unwrap
from shared.model import GPTModel
from shared.runtime import pick_device
from shared.settings import pick_setting
from shared.shapes import shape_checks
from shared.tasks import LabelledTask, real_or_shuffled_task, speech_end_task, who_speaks_task

__all__ = ["METHODS", "TASKS", "build_classifier", "build_parser", "main", "make_task", "parse_args"]

PROG = "python -m shared finetune"
TASKS = ("speech-end", "real-or-shuffled", "who-speaks")
METHODS = ("full", "lora", "frozen", "scratch")
TASK_SEED = 0  # the split is the same for every method and training seed: they compare on the same examples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_options(parser, init_help="a checkpoint of a language model: pretrain's, sft's, or chapter 7's")
    task = parser.add_argument_group("the task (shared.tasks)")
    task.add_argument("--task", choices=TASKS, default="speech-end",
                      help="speech-end: a whole held-out speech or the same speech cut after one of its lines "
                           "(balanced; long texts keep their last tokens); "
                           "real-or-shuffled: a held-out speech or the same words shuffled (balanced); "
                           "who-speaks: which of the --characters most frequent characters speaks it "
                           "(default: speech-end)")
    task.add_argument("--characters", type=positive_int,
                      help="who-speaks: how many characters (classes), at least 2 (default: 4)")
    task.add_argument("--labels", type=positive_int,
                      help="train on the first N labelled examples only (default: all of them)")
    how = parser.add_argument_group("the classifier and its training")
    how.add_argument("--method", choices=METHODS, default=None,
                     help="full: train everything; lora: LoRA adapters and the head; frozen: the head alone; "
                          "scratch: fresh random weights of the same shape, all trained "
                          "(default: lora with --lora-rank, full otherwise)")
    how.add_argument("--pooling", choices=["last", "mean"], default="last",
                     help="the vector the head reads: the last real token's hidden state, or the mean over "
                          "the text's tokens (default: last)")
    how.add_argument("--steps", type=positive_int, default=150, help="optimizer steps (default: 150)")
    how.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default: 32)")
    how.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default: 0.001)")
    how.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay (default: 0)")
    how.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of the head, the LoRA matrices, a scratch body and the batch order (default: 0)")
    add_lora_options(parser, "LoRA's rank: with --method lora (which it implies), the adapters' inner width")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/finetune"),
                     help="folder for history.json and classifier.pt (default: runs/finetune)")
    out.add_argument("--quiet", action="store_true", help="only the result line")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def make_task(args: argparse.Namespace) -> LabelledTask:
    """The labelled task ``--task`` names (split with a fixed seed), cut to ``--labels`` training examples."""
    if args.task == "who-speaks":
        task = who_speaks_task(n_characters=4 if args.characters is None else args.characters, seed=TASK_SEED)
    elif args.characters is not None:
        raise ValueError("--characters is for --task who-speaks")
    elif args.task == "real-or-shuffled":
        task = real_or_shuffled_task(seed=TASK_SEED)
    else:
        task = speech_end_task(seed=TASK_SEED)
    if args.labels is not None:
        if args.labels > len(task.train):
            raise ValueError(f"--labels {args.labels}: the task has only {len(task.train)} training examples")
        task = replace(task, train=task.train[: args.labels])
    return task


def _method(args: argparse.Namespace) -> str:
    method = args.method or ("lora" if args.lora_rank is not None else "full")
    if method == "lora" and args.lora_rank is None:
        raise ValueError("--method lora needs --lora-rank R (e.g. 8)")
    if method != "lora" and args.lora_rank is not None:
        raise ValueError(f"--lora-rank is for --method lora, not {method}")
    check_lora_options(args, method == "lora")
    return method


def build_classifier(body: GPTModel | LlamaModel, n_classes: int, method: str,
                     args: argparse.Namespace) -> SequenceClassifier:
    """The classifier ``method`` trains, on ``body`` (changed in place, but for ``scratch``), seeded by ``--seed``."""
    kind = type(body).__name__
    torch.manual_seed(args.seed)
    if method == "scratch":  # the same architecture, fresh weights: what pretraining brings is the difference
        body = type(body)(body.config, use_sdpa=True).to(next(body.parameters()).device)
    classifier = SequenceClassifier(body, n_classes, pooling=args.pooling)
    if method == "frozen":
        classifier.freeze_body()
    if method == "lora":
        lora_from_args(classifier.body, args, kind)
    return classifier


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        method = _method(args)
        device = torch.device(args.device) if args.device else pick_device()
        setting = pick_setting(device, args.setting)
        task = make_task(args)
        start = load_start(args, setting, device)
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    try:
        classifier = build_classifier(start.model, len(task.class_names), method, args).to(device)
    except (ValueError, TypeError) as e:
        return fail(PROG, e)
    body, tokenizer = classifier.body, start.tokenizer
    trainable, total = count_trainable(classifier)

    def encoded(examples):
        ids = encode_texts(tokenizer.encode_ordinary, [e.text for e in examples], body.context_length, crop=True,
                           keep=task.keep)
        return [(token_ids, e.label) for token_ids, e in zip(ids, examples, strict=True)]

    train_examples, test_examples = encoded(task.train), encoded(task.test)
    pad_id = 0  # any valid id: right padding is never read (shared.classify.pad_token_ids)
    if not args.quiet:
        print(f"{task.name}: {len(task.train)} train / {len(task.test)} test examples, majority baseline "
              f"{task.majority_baseline:.3f} | {method}: {trainable:,} of {total:,} parameters train | "
              f"{start.description}", flush=True)
    started = time.perf_counter()
    with shape_checks(False):  # thousands of calls: the checks would cost more than the model (the tests run them)
        losses = train_classifier(classifier, train_examples, args.steps, pad_id, batch_size=args.batch_size,
                                  lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
        held_out = accuracy(classifier, test_examples, pad_id)
    seconds = time.perf_counter() - started
    record = {
        "task": task.name,
        "class_names": list(task.class_names),
        "train_counts": task.class_counts("train"),
        "test_counts": task.class_counts("test"),
        "majority_baseline": task.majority_baseline,
        "crop_keeps": task.keep,
        "accuracy": held_out,
        "method": method,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "step_losses": losses,
        "seconds": seconds,
        "start": start.description,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps(record, indent=1))
    body = merge_and_unwrap(classifier.body)
    save_model(args.out / "classifier.pt", body, tokenizer, head=classifier.head.state_dict(),
               stage="finetune", pooling=args.pooling, class_names=list(task.class_names), task=task.name,
               crop_keeps=task.keep, accuracy=held_out)
    print(f"held-out accuracy {held_out:.3f} (majority baseline {task.majority_baseline:.3f}) after {args.steps} "
          f"steps in {seconds:.1f} s | wrote {args.out}/history.json, classifier.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

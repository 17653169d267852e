"""Supervised fine-tuning (chapter 12): teach a pretrained model to answer in the plays' chat format.

    python -m shared sft --out runs/sft                                       # chapter 7's model, all weights
    python -m shared sft --init runs/cpu/checkpoint.pt --lora-rank 8 --out runs/sft-lora

The tokenizer gains the chat tokens ``<|turn|>`` and ``<|endofturn|>`` (:func:`shared.chat.with_chat_tokens`)
and the model rows for them, its old rows kept exactly (:func:`shared.chat.grow_vocabulary`). The data
are the plays' conversations (:func:`shared.conversations.play_conversations`): a speech and the reply
that follows it by another character, from the tenth of Tiny Shakespeare no pretraining read, split into
SFT conversations and held-out ones that no stage trains on. Each is rendered by the one template
(:func:`shared.chat.encode_chats`, a prompt trimmed to fit the context) and the loss counts response
tokens only (:func:`shared.sft.train_sft`). With ``--lora-rank`` only LoRA adapters train.

It writes to ``--out``: ``checkpoint.pt`` (the tuned model, LoRA merged in, with its chat tokenizer:
what ``dpo --init`` and ``finetune --init`` read) and ``history.json`` (every step's loss, and the
held-out response loss before and after, in nats per response token).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from shared.chat import CHAT_TOKENS, chat_token_ids, encode_chats, grow_vocabulary, with_chat_tokens
from shared.cli.args import non_negative_float, non_negative_int, positive_float, positive_int
from shared.cli.models import (
    CHAT_LORA_TARGETS,
    add_lora_options,
    add_start_options,
    check_lora_options,
    fail,
    load_start,
    lora_from_args,
    save_model,
)
from shared.conversations import play_conversations
from shared.lora import count_trainable, merge_and_unwrap
from shared.runtime import pick_device
from shared.settings import pick_setting
from shared.sft import response_loss, train_sft
from shared.shapes import shape_checks

__all__ = ["build_parser", "main", "parse_args"]

PROG = "python -m shared sft"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_options(parser, init_help="a checkpoint of a language model: pretrain's or chapter 7's (or sft's, "
                                        "to tune further)")
    run = parser.add_argument_group("training")
    run.add_argument("--conversations", type=positive_int,
                     help="train on the first N SFT conversations only (default: all that fit the context)")
    run.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (default: 300)")
    run.add_argument("--batch-size", type=positive_int, default=16, help="conversations per step (default: 16)")
    run.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default: 0.001)")
    run.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay (default: 0)")
    run.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of the batch order, dropout and the LoRA matrices (default: 0)")
    add_lora_options(parser, "train LoRA adapters of this rank instead of every weight", CHAT_LORA_TARGETS)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/sft"),
                     help="folder for checkpoint.pt and history.json (default: runs/sft)")
    out.add_argument("--quiet", action="store_true", help="only the result line")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_lora_options(args, args.lora_rank is not None)
        device = torch.device(args.device) if args.device else pick_device()
        setting = pick_setting(device, args.setting)
        start = load_start(args, setting, device)
    except (ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    model, tokenizer = start.model, start.tokenizer
    if not all(name in tokenizer.special_tokens for name in CHAT_TOKENS):  # a checkpoint from sft has them
        tokenizer = with_chat_tokens(tokenizer)
        model = grow_vocabulary(model, tokenizer.vocab_size)
    _, end_id = chat_token_ids(tokenizer)
    context = model.config.context_length
    split = play_conversations()
    sft_conversations = split.sft if args.conversations is None else split.sft[: args.conversations]
    examples = encode_chats([c.turns for c in sft_conversations], tokenizer, context, trim_prompt=True)
    heldout = encode_chats([c.turns for c in split.heldout], tokenizer, context, trim_prompt=True)
    if not examples or not heldout:
        return fail(PROG, f"no conversation fits the model's context of {context} tokens, even with its prompt "
                          f"trimmed ({len(examples)} to train on, {len(heldout)} held out)")
    torch.manual_seed(args.seed)
    if args.lora_rank is not None:
        try:
            lora_from_args(model, args, type(model).__name__, CHAT_LORA_TARGETS)
        except (ValueError, TypeError) as e:
            return fail(PROG, e)
    trainable, total = count_trainable(model)
    pad_id = end_id  # any valid id: padding is never a target the loss counts
    with shape_checks(False):  # a long run: the checks cost time on every call (the tests run them)
        before = response_loss(model, heldout, pad_id)
        if not args.quiet:
            print(f"{len(examples)} SFT conversations ({len(sft_conversations)} before fitting {context} tokens), "
                  f"{len(heldout)} held out | {trainable:,} of {total:,} parameters train | {start.description} | "
                  f"held-out response loss {before:.3f} before", flush=True)
        started = time.perf_counter()
        losses = train_sft(model, examples, args.steps, pad_id, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, seed=args.seed)
        seconds = time.perf_counter() - started
        after = response_loss(model, heldout, pad_id)
    record = {
        "step_losses": losses,
        "heldout_response_loss_before": before,
        "heldout_response_loss": after,
        "sft_examples": len(examples),
        "heldout_examples": len(heldout),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "seconds": seconds,
        "start": start.description,
        "model": type(model).__name__,
        "model_config": model.config.to_dict(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps(record, indent=1))
    save_model(args.out / "checkpoint.pt", merge_and_unwrap(model), tokenizer, stage="sft", heldout_response_loss=after)
    print(f"held-out response loss {after:.3f} nats per token (before: {before:.3f}) after {args.steps} steps in "
          f"{seconds:.1f} s | wrote {args.out}/checkpoint.pt, history.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

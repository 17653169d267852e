"""Preference tuning with DPO (chapter 12): from an SFT checkpoint, prefer the asked character's own reply.

    python -m shared dpo --init runs/sft/checkpoint.pt --beta 0.1 --out runs/dpo

The policy starts as the SFT model of ``--init`` (a checkpoint written by ``sft``, with the chat tokens)
and the reference is a frozen copy of it. The pairs come from the plays' conversations
(:func:`shared.dpo.preference_pairs`): the prompt asks a character to answer a speech, the chosen
response is what that character replied, the rejected one another character's reply to another speech.
Training (:func:`shared.dpo.train_dpo`) raises the chosen response's log-probability relative to the
reference and lowers the rejected one's; ``--beta`` sets how far the policy may move. With
``--lora-rank`` only LoRA adapters train.

It writes to ``--out``: ``checkpoint.pt`` (the policy, LoRA merged in, with its chat tokenizer) and
``history.json`` (every step's loss, rewards, margin and accuracy; on the held-out conversations'
pairs, the mean log-ratios of the chosen and the rejected replies to the reference, the share of pairs
whose chosen reply gained more than the rejected one (DPO's reward accuracy), and the response loss of
the real replies before and after).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from shared.chat import chat_token_ids
from shared.cli.args import non_negative_int, positive_float, positive_int
from shared.cli.models import (
    CHAT_LORA_TARGETS,
    add_lora_options,
    add_start_options,
    check_lora_options,
    fail,
    lora_from_args,
    read_model,
    save_model,
)
from shared.conversations import play_conversations
from shared.dpo import log_ratios, preference_pairs, train_dpo
from shared.lora import count_trainable, merge_and_unwrap
from shared.runtime import pick_device
from shared.sft import response_loss
from shared.shapes import shape_checks

__all__ = ["build_parser", "main", "parse_args"]

PROG = "python -m shared dpo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_options(parser, base=False, init_help="the SFT checkpoint to start from (written by `sft`)")
    run = parser.add_argument_group("training")
    run.add_argument("--beta", type=positive_float, default=0.1,
                     help="DPO's beta: the reward is beta x the log-ratio to the reference (default: 0.1)")
    run.add_argument("--pairs", type=positive_int,
                     help="train on the first N preference pairs only (default: all that fit the context)")
    run.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default: 100)")
    run.add_argument("--batch-size", type=positive_int, default=16, help="pairs per step (default: 16)")
    run.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default: 0.0001)")
    run.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of the rejected replies' draw, the batch order and the LoRA matrices (default: 0)")
    add_lora_options(parser, "train LoRA adapters of this rank instead of every weight", CHAT_LORA_TARGETS)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/dpo"),
                     help="folder for checkpoint.pt and history.json (default: runs/dpo)")
    out.add_argument("--quiet", action="store_true", help="only the result line")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_lora_options(args, args.lora_rank is not None)
        device = torch.device(args.device) if args.device else pick_device()
        start, _ = read_model(args.init)
        tokenizer = start.tokenizer
        _, end_id = chat_token_ids(tokenizer)
    except (ValueError, FileNotFoundError) as e:
        hint = "" if not isinstance(e, ValueError) or "chat" not in str(e) else "; --init must be written by `sft`"
        return fail(PROG, f"{e}{hint}")
    policy = start.model.to(device)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    context = policy.config.context_length
    split = play_conversations()
    pairs = preference_pairs(split.sft, tokenizer, context, seed=args.seed)
    heldout_pairs = preference_pairs(split.heldout, tokenizer, context, seed=args.seed)
    if args.pairs is not None:
        pairs = pairs[: args.pairs]
    if not pairs or not heldout_pairs:
        return fail(PROG, f"no preference pair fits the model's context of {context} tokens ({len(pairs)} to train "
                          f"on, {len(heldout_pairs)} held out)")
    heldout_chosen = [(prompt, chosen) for prompt, chosen, _ in heldout_pairs]
    torch.manual_seed(args.seed)
    if args.lora_rank is not None:
        try:
            lora_from_args(policy, args, type(policy).__name__, CHAT_LORA_TARGETS)
        except (ValueError, TypeError) as e:
            return fail(PROG, e)
    trainable, total = count_trainable(policy)
    pad_id = end_id  # any valid id: padding is never a target
    with shape_checks(False):  # a long run: the checks cost time on every call (the tests run them)
        loss_before = response_loss(reference, heldout_chosen, pad_id)
        if not args.quiet:
            print(f"{len(pairs)} preference pairs, {len(heldout_pairs)} held out | {trainable:,} of {total:,} "
                  f"parameters train | {start.description} | beta {args.beta}", flush=True)
        started = time.perf_counter()
        steps = train_dpo(policy, reference, pairs, args.steps, pad_id, beta=args.beta, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed)
        seconds = time.perf_counter() - started
        chosen, rejected = log_ratios(policy, reference, heldout_pairs, pad_id)
        loss_after = response_loss(policy, heldout_chosen, pad_id)
    prefers = float((chosen > rejected).float().mean())
    record = {
        "steps": steps,
        "beta": args.beta,
        "heldout_chosen_log_ratio": float(chosen.mean()),
        "heldout_rejected_log_ratio": float(rejected.mean()),
        "heldout_preference_accuracy": prefers,
        "heldout_response_loss_before": loss_before,
        "heldout_response_loss": loss_after,
        "pairs": len(pairs),
        "heldout_pairs": len(heldout_pairs),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "seconds": seconds,
        "start": start.description,
        "model": type(policy).__name__,
        "model_config": policy.config.to_dict(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps(record, indent=1))
    save_model(args.out / "checkpoint.pt", merge_and_unwrap(policy), tokenizer, stage="dpo", beta=args.beta)
    print(f"held out: the real reply gained more than the rejected one in {prefers:.3f} of {len(heldout_pairs)} "
          f"pairs | log-ratio to the reference: chosen {chosen.mean():+.3f}, rejected {rejected.mean():+.3f} nats | "
          f"response loss "
          f"{loss_after:.3f} (SFT: {loss_before:.3f}) | {args.steps} steps in {seconds:.1f} s | wrote "
          f"{args.out}/checkpoint.pt, history.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: validation bits per character after a fixed wall-clock training budget on the CPU.

    python bench/train_budget.py                 # our CPU setting, 180 s
    python bench/train_budget.py --model llama   # the Llama-style model at the same budget

The reference is nanoGPT's CPU "baby GPT" (character-level, 4 layers, 4 heads, 128 dims, block
64, batch 12, 2,000 iterations): validation loss 1.88 nats per character = 2.71 bits per
character (rerun on a 2-core CPU: 1.886 = 2.72). Our setting uses the chapter-1 BPE (1,024
tokens, trained on the training split only).
The defaults are the sweep's choice (README): the model is ``GPT_CPU`` (shared.model), batches of
64 windows of 64 tokens, lr 5e-3 after 50 warmup steps, cosine decay to 1e-4. (Chapter 7 trains the
same model with the same optimizer for 600 steps of 16 windows: half the compute of 300 steps of
64, and nearly the same score; see shared/settings.py.) The script first times steps and
evaluation batches (not counted), sets the number of steps so that the schedule ends at the
budget, trains (the budget counts everything train() does, evaluations included, and is also
enforced as a hard limit), then measures bits per character on the whole validation text.
"""

import argparse
import itertools
import json
import platform
import statistics
import time

import torch

from shared.corpus import shakespeare_bpe, tiny_shakespeare
from shared.datasets import create_dataloader, train_val_split
from shared.llama import LlamaConfig, LlamaModel, swiglu_hidden_dim
from shared.model import GPT_CPU, GPTConfig, GPTModel
from shared.runtime import seed_everything
from shared.shapes import set_shape_checks
from shared.train import TrainConfig, bits_per_character, cross_entropy, train

EVAL_BATCHES = 10  # validation batches per evaluation during training
CALIBRATION_WARMUP = 30  # steps run before the step time is measured


def build(args, vocab_size: int) -> torch.nn.Module:
    if args.model == "gpt":
        config = GPTConfig(
            vocab_size=vocab_size,
            context_length=args.context,
            emb_dim=args.emb,
            n_heads=args.heads,
            n_layers=args.layers,
            drop_rate=args.dropout,
            qkv_bias=False,
            tie_weights=args.tie,
        )
        return GPTModel(config, use_sdpa=True)
    hidden = args.hidden or swiglu_hidden_dim(args.emb)
    config = LlamaConfig(
        vocab_size=vocab_size,
        context_length=args.context,
        emb_dim=args.emb,
        n_heads=args.heads,
        n_layers=args.layers,
        hidden_dim=hidden,
        n_kv_heads=args.kv_heads,
        drop_rate=args.dropout,
        tie_weights=args.tie,
    )
    return LlamaModel(config, use_sdpa=True)


def calibrate(args, vocab_size: int, train_loader, val_loader) -> tuple[float, float]:
    """Median seconds of one training step and of one evaluation batch, on a throwaway model."""
    model = build(args, vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(train_loader)
    step_times = []
    # The first ~20 steps of a process run slowly (measured: 1.7 s, then 0.35 s, then a steady
    # 0.12 s per step for a small model): PyTorch and its math libraries set up their kernels.
    for i in range(CALIBRATION_WARMUP + args.calibration_steps):
        x, y = next(batches)
        start = time.perf_counter()
        loss = cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= CALIBRATION_WARMUP:
            step_times.append(time.perf_counter() - start)
    eval_times = []
    model.eval()
    with torch.no_grad():
        for x, y in itertools.islice(val_loader, 10):
            start = time.perf_counter()
            cross_entropy(model(x), y)
            eval_times.append(time.perf_counter() - start)
    return statistics.median(step_times), statistics.median(eval_times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt", "llama"], default="gpt")
    parser.add_argument("--budget", type=float, default=180.0, help="training wall-clock seconds")
    parser.add_argument("--vocab", type=int, default=GPT_CPU.vocab_size)
    parser.add_argument("--context", type=int, default=GPT_CPU.context_length)
    parser.add_argument("--emb", type=int, default=GPT_CPU.emb_dim)
    parser.add_argument("--heads", type=int, default=GPT_CPU.n_heads)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--layers", type=int, default=GPT_CPU.n_layers)
    parser.add_argument("--hidden", type=int, default=None, help="SwiGLU width (llama); default swiglu_hidden_dim(emb)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--stride", type=int, default=None, help="dataset stride (default: context / 2)")
    parser.add_argument("--tie", action="store_true")
    parser.add_argument("--evals", type=int, default=4, help="evaluations during training")
    parser.add_argument("--calibration-steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args()

    set_shape_checks(False)  # measure the model, not the runtime checks
    seed_everything(args.seed)
    train_text, val_text = train_val_split(tiny_shakespeare())
    tokenizer = shakespeare_bpe(args.vocab)
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    stride = args.stride or max(1, args.context // 2)
    train_loader = create_dataloader(
        train_ids, batch_size=args.batch, context_length=args.context, stride=stride, seed=args.seed
    )
    val_loader = create_dataloader(val_ids, batch_size=args.batch, context_length=args.context, shuffle=False)

    # Fit the schedule to the budget: the steps, plus the evaluations train() runs (one every
    # max_steps // evals steps and one at the end, EVAL_BATCHES batches each), with 2% to spare.
    step_s, eval_batch_s = calibrate(args, tokenizer.vocab_size, train_loader, val_loader)
    eval_s = (args.evals + 1) * EVAL_BATCHES * eval_batch_s
    max_steps = max(10, int((0.98 * args.budget - eval_s) / step_s))
    seed_everything(args.seed)
    model = build(args, tokenizer.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    config = TrainConfig(
        max_steps=max_steps,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        eval_every=max(1, max_steps // args.evals),
        eval_batches=EVAL_BATCHES,
        time_limit_s=args.budget,
        seed=args.seed,
        progress=False,
    )
    start = time.perf_counter()
    history = train(model, train_loader, val_loader, config)
    elapsed = time.perf_counter() - start
    bpc = bits_per_character(model, tokenizer, val_text)

    tokens = len(history.step_losses) * args.batch * args.context
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {args.model}, {n_params:,} parameters; {vars(args)}")
    print(
        f"calibrated {step_s * 1000:.0f} ms/step, {eval_batch_s * 1000:.0f} ms/eval batch -> {max_steps} steps; "
        f"ran {len(history.step_losses)} steps ({tokens:,} tokens, {tokens / elapsed:,.0f} tokens/s) in {elapsed:.1f} s"
    )
    for record in history.evals:
        print(f"  step {record['step']:5d}  train {record['train_loss']:.3f}  val {record['val_loss']:.3f} nats/token")
    print(f"validation bits per character: {bpc:.3f}   (nanoGPT baby GPT: 2.71-2.72; goal <= 2.40)")
    if args.json:
        print(
            json.dumps(
                {
                    "bpc": bpc,
                    "steps": len(history.step_losses),
                    "elapsed": elapsed,
                    "params": n_params,
                    "args": vars(args),
                }
            )
        )


if __name__ == "__main__":
    main()

"""Benchmark: forward + backward throughput of our GPTModel against Hugging Face's GPT2LMHeadModel.

    python bench/gpt_vs_hf.py                                  # CUDA if available, else the CPU
    python bench/gpt_vs_hf.py --device cuda --compile          # also both models torch.compiled
    python bench/gpt_vs_hf.py --device cpu --rounds 15         # the CPU figure in README

What is measured: training steps without the optimizer (forward, cross-entropy, backward, zero
the gradients) on one fixed batch of random token ids, in tokens per second. Ours
(``use_sdpa=True``, and the explicit attention the chapters derive) and Hugging Face's
``GPT2LMHeadModel`` (SDPA attention, ``use_cache=False``) hold the same weights: ours are loaded
from the Hugging Face model, and their fp32 logits are compared before timing. With
``--compile`` the Hugging Face model and ours (``shared.shapes.compile_model``) are also timed
compiled by ``torch.compile`` (default mode).

How: after warm-up rounds (which also compile), every round times ``--steps-per-round`` steps of
each model in turn (interleaved, so that background noise hits all alike); on CUDA the timed
region starts and ends with ``torch.cuda.synchronize()``. Reported: the median over rounds of
each model's tokens/s, and the median of the per-round ratios to Hugging Face in the same mode.
The eager models are measured first and reported (and written to ``--json``) before anything is
compiled; the compiled models are then timed in rounds interleaved with the eager ones again,
which gives the compiled / eager speed-ups.

Shapes: on CUDA, GPT-2 124M (12 layers, 768 dims, 12 heads, vocabulary 50,257) on 16 x 1,024
tokens; on the CPU, a small GPT-2 (6 layers, 256 dims, 8 heads, vocabulary 1,024) on 8 x 256.
Precision: ``--precision auto`` is what the training loop picks (``shared.train.resolve_precision``):
bf16 autocast on a GPU with native bf16, fp16 autocast on other GPUs, fp32 on the CPU.

Achieved TFLOP/s = tokens/s x (6·N + 12·L·d·T) FLOPs per token (PaLM's estimate, as nanoGPT's
``estimate_mfu``), where N is every parameter except the position-embedding table (the token
embedding counts, as GPT-2's head shares it): 123.65 M for GPT-2 124M. The share of peak divides
that by the GPU's dense bf16/fp16 data-sheet peak (bench/common.py's table); it is an estimate
of model FLOP utilisation, not a counter reading. Shape checks are off while timing.
"""

import argparse
import statistics
from dataclasses import replace

import torch
from common import (
    autocast_for,
    choose_device,
    describe_machine,
    flops_per_token,
    matmul_parameters,
    peak_tflops,
    timed,
    write_json,
)
from transformers import GPT2Config, GPT2LMHeadModel

from shared.model import GPTConfig, GPTModel
from shared.shapes import compile_model, set_shape_checks
from shared.train import PRECISIONS, cross_entropy, resolve_precision
from shared.weights import gpt2_config, load_gpt2_from_hf

CPU_CONFIG = GPTConfig(
    vocab_size=1024,
    context_length=256,
    emb_dim=256,
    n_heads=8,
    n_layers=6,
    drop_rate=0.0,
    qkv_bias=True,
    tie_weights=True,
)
CUDA_CONFIG = gpt2_config("124M", drop_rate=0.0)
# device type -> (config, batch, sequence length, steps per round, rounds)
DEFAULTS = {"cpu": (CPU_CONFIG, 8, 256, 3, 15), "cuda": (CUDA_CONFIG, 16, 1024, 5, 10)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/gpt_vs_hf.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast dtype: auto = bf16 or fp16 on CUDA as the training loop picks, fp32 on the "
                             "CPU (default: auto)")
    parser.add_argument("--compile", action="store_true",
                        help="also time both models compiled with torch.compile (compile time is not timed)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 15 on the CPU, 10 on CUDA)")
    parser.add_argument("--steps-per-round", type=int, help="steps per model per round (default: 3 CPU, 5 CUDA)")
    parser.add_argument("--warmup-rounds", type=int, default=2,
                        help="untimed rounds first, which also compile (default: 2)")
    parser.add_argument("--batch", type=int, help="sequences per batch (default: 8 on the CPU, 16 on CUDA)")
    parser.add_argument("--seq", type=int,
                        help="tokens per sequence, at most the context (default: 256 on the CPU, 1024 on CUDA)")
    parser.add_argument("--layers", type=int, help="override the number of layers (for quick tests)")
    parser.add_argument("--no-explicit", action="store_true",
                        help="leave out ours with explicit attention (it materialises the attention matrix)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def hf_twin(config: GPTConfig) -> GPT2LMHeadModel:
    """Hugging Face's GPT-2 with ``config``'s sizes (no dropout, no cache), random weights."""
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.context_length,
            n_embd=config.emb_dim,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,  # training: a key/value cache would be built and thrown away
            bos_token_id=None,
            eos_token_id=None,
        )
    )


def make_step(model, idx, targets, hf: bool, autocast, steps: int):
    """A function running ``steps`` training steps without optimizer: forward, loss, backward, zero grads."""

    def run() -> None:
        for _ in range(steps):
            with autocast:
                logits = model(idx).logits if hf else model(idx)
                loss = cross_entropy(logits, targets)
            loss.backward()
            model.zero_grad(set_to_none=True)

    return run


def measure(runs: dict, device: torch.device, warmup_rounds: int, rounds: int, steps: int) -> tuple[dict, dict]:
    """Seconds per step of each run, per round (interleaved), after warm-up; and each run's first
    warm-up round in seconds (for a compiled model: compiling plus ``steps`` steps)."""
    first = {}
    for i in range(warmup_rounds):
        for key, run in runs.items():
            seconds, _ = timed(run, device)
            if i == 0:
                first[key] = seconds
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            seconds, _ = timed(run, device)
            times[key].append(seconds / steps)
    return times, first


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = choose_device(args.device)
    config, batch, seq, steps, rounds = DEFAULTS[device.type]
    if args.layers:
        config = replace(config, n_layers=args.layers)
    batch, seq = args.batch or batch, args.seq or seq
    steps, rounds = args.steps_per_round or steps, args.rounds or rounds
    if seq > config.context_length:
        raise SystemExit(f"--seq {seq} is longer than the context ({config.context_length})")
    precision = resolve_precision(args.precision, device)
    set_shape_checks(False)
    torch.manual_seed(0)

    hf = hf_twin(config).to(device).train()
    ours = load_gpt2_from_hf(GPTModel(config, use_sdpa=True), hf.state_dict()).to(device).train()
    idx = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    targets = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    with torch.no_grad():  # the same function: fp32 logits on a slice of the batch
        diff = (ours(idx[:2]) - hf(idx[:2]).logits).abs().max().item()
    tolerance = 1e-4 if device.type == "cpu" else 1e-3
    assert diff < tolerance, f"the models differ: max |ours - HF| = {diff:.2e} in fp32"

    tokens = batch * seq
    n_matmul = matmul_parameters(ours)
    per_token = flops_per_token(n_matmul, config.n_layers, config.emb_dim, seq)
    peak, peak_label = peak_tflops(device)
    if precision == "fp32" and peak is not None:
        peak, peak_label = None, f"no share: the run is fp32 and the table holds bf16/fp16 peaks ({peak_label})"
    print(f"machine: {describe_machine(device)}")
    print(f"model: {config}")
    print(f"batch {batch} x {seq} tokens; forward + loss + backward, no optimizer step; {precision} "
          f"{'autocast' if precision != 'fp32' else '(no autocast)'}; {rounds} rounds x {steps} steps, interleaved")
    print(f"fp32 logits check: max |ours - HF| = {diff:.1e} (tolerance {tolerance:.0e})")
    print(f"FLOPs per token: 6·N + 12·L·d·T = {per_token / 1e9:.3f} GFLOP (N = {n_matmul:,} parameters: all but the "
          f"position embedding, as nanoGPT's estimate_mfu; L = {config.n_layers}, d = {config.emb_dim}, T = {seq})")
    print(f"peak: {peak_label}", flush=True)
    record = {
        "benchmark": "gpt_vs_hf", "machine": describe_machine(device), "device": str(device),
        "model_config": config.to_dict(), "batch": batch, "seq": seq, "precision": precision,
        "rounds": rounds, "steps_per_round": steps, "logits_max_abs_diff": diff,
        "n_matmul_parameters": n_matmul, "flops_per_token": per_token, "peak_tflops": peak,
        "peak": peak_label, "rows": [], "seconds_per_step": {},
    }

    def report(labels: dict, times: dict, first: dict, base: str) -> None:
        print(f"{'model':32} {'tokens/s':>10} {'TFLOP/s':>8} {'share of peak':>14} {'ratio to HF (same mode)':>24}")
        for key, label in labels.items():
            tok_s = tokens / statistics.median(times[key])
            tflops = tok_s * per_token / 1e12
            ratio = statistics.median(h / o for h, o in zip(times[base], times[key], strict=True))
            row = {"key": key, "model": label, "tokens_per_s": tok_s, "tflops": tflops,
                   "share_of_peak": tflops / peak if peak else None, "ratio_to_hf": ratio,
                   "first_round_s": first[key]}
            record["rows"].append(row)
            record["seconds_per_step"][key] = times[key]
            share = f"{row['share_of_peak']:.1%}" if row["share_of_peak"] is not None else "-"
            print(f"{label:32} {tok_s:10,.0f} {tflops:8.4g} {share:>14} {ratio:24.2f}", flush=True)
        write_json(args.json, record)  # after each phase: a later phase that overruns keeps this one

    # Phase 1, eager: HF, ours with SDPA, ours with the explicit attention of the chapters.
    autocast = autocast_for(precision, device)
    eager = {"hf": ("HF GPT2LMHeadModel (sdpa)", hf, True), "ours": ("ours, use_sdpa=True", ours, False)}
    if not args.no_explicit:
        explicit = load_gpt2_from_hf(GPTModel(config, use_sdpa=False), hf.state_dict()).to(device).train()
        eager["explicit"] = ("ours, explicit attention", explicit, False)
    runs = {key: make_step(model, idx, targets, is_hf, autocast, steps) for key, (_, model, is_hf) in eager.items()}
    times, first = measure(runs, device, args.warmup_rounds, rounds, steps)
    report({key: label for key, (label, _, _) in eager.items()}, times, first, "hf")
    if not args.compile:
        return

    # Phase 2, compiled, interleaved with the eager models again so that the speed-ups are like for like.
    print("compiling (the first warm-up round of each compiled model compiles it; not timed)...", flush=True)
    compiled = {"hf_compiled": ("HF GPT2LMHeadModel, compiled", torch.compile(hf), True),
                "ours_compiled": ("ours, use_sdpa=True, compiled", compile_model(ours), False)}
    runs = {key: make_step(model, idx, targets, is_hf, autocast, steps) for key, (_, model, is_hf) in compiled.items()}
    for key in ("hf", "ours"):
        _, model, is_hf = eager[key]
        runs[key] = make_step(model, idx, targets, is_hf, autocast, steps)
    times, first = measure(runs, device, args.warmup_rounds, rounds, steps)
    report({key: label for key, (label, _, _) in compiled.items()}, times, first, "hf_compiled")
    for key in compiled:
        print(f"{compiled[key][0]}: first warm-up round (compile + {steps} steps) {first[key]:.1f} s")
    for key, base in (("ours_compiled", "ours"), ("hf_compiled", "hf")):
        speedup = statistics.median(e / c for e, c in zip(times[base], times[key], strict=True))
        record[f"{key}_over_eager"] = speedup
        print(f"{compiled[key][0]} / eager, same rounds: {speedup:.2f}x")
    write_json(args.json, record)


if __name__ == "__main__":
    main()

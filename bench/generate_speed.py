"""Benchmark: generation speed with and without the KV cache, and against Hugging Face generate.

    python bench/generate_speed.py [--device cpu|cuda] [--new-tokens 200] [--rounds 3]

A 124M-shaped GPT-2 with random weights (no download), batch 1, a 16-token prompt, greedy
decoding of ``--new-tokens`` new tokens, in fp32. Ours (cache on and off; on the CPU also with
the cache in the column-major weight layout) and Hugging Face's GPT2LMHeadModel.generate with
its cache take turns in one process on the same weights, after one untimed warm-up call each;
each timing is one whole generation call (on CUDA between two ``torch.cuda.synchronize()``),
and the median over rounds is reported. All should produce the same tokens (printed; a
difference in the last float bits can flip a greedy choice on random weights, so it is a report,
not an assertion). Targets, on the CPU: the cache >= 4x faster than no cache, and at least as
fast as Hugging Face.

Decoding one token multiplies a single row by every weight matrix, so its speed on a CPU is that
of the BLAS matrix-vector kernel reading the weights from memory. That kernel's speed depends on
how the weights are laid out: ``nn.Linear`` stores (out, in) row-major, Hugging Face GPT-2's
``Conv1D`` stores (in, out). ``shared.generate.set_decode_layout`` keeps the ``nn.Linear``
modules but stores their weights column-major, which is the (in, out) layout in memory. On the
CPU the script ends by timing one such product in both layouts (see README). Both are CPU
tricks: on CUDA the layout variant and the matrix-vector timing are skipped (a GPU decodes batch
1 at the speed of its kernel launches, not of one BLAS kernel).
"""

import argparse
import statistics
import time
from dataclasses import replace

import torch
from common import choose_device, describe_machine, timed, write_json
from transformers import GPT2Config, GPT2LMHeadModel

from shared.generate import generate, set_decode_layout
from shared.model import GPTModel
from shared.shapes import set_shape_checks
from shared.weights import gpt2_config, load_gpt2_from_hf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/generate_speed.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens generated per call (default: 200)")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per generator, interleaved (default: 3)")
    parser.add_argument("--layers", type=int, default=12,
                        help="transformer blocks of the GPT-2 124M shape; fewer for quick tests (default: 12)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def single_row_matmul_us(layout: str, d_in: int = 768, d_out: int = 2304, n: int = 48) -> float:
    """Median microseconds of (1, d_in) x weight -> (1, d_out) on the CPU, cycling through ``n``
    different matrices so that the weights come from memory, as in a real decoding step."""
    weights = [torch.randn(d_out, d_in) for _ in range(n)]
    if layout == "conv1d":
        weights = [w.T.contiguous() for w in weights]  # (in, out): x @ w
    x = torch.randn(1, d_in)
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for w in weights:
            _ = torch.nn.functional.linear(x, w) if layout == "linear" else x @ w
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds[2:])


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first position where two (1, seq) token tensors differ, or None if they are equal."""
    if a.shape == b.shape and torch.equal(a, b):
        return None
    n = min(a.shape[1], b.shape[1])
    unequal = (a[0, :n] != b[0, :n]).nonzero()
    return int(unequal[0]) if len(unequal) else n


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = choose_device(args.device)
    on_cpu = device.type == "cpu"
    set_shape_checks(False)
    torch.manual_seed(0)
    hf_config = GPT2Config(n_layer=args.layers, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # 124M shape
    hf = GPT2LMHeadModel(hf_config).eval()
    config = replace(gpt2_config("124M", drop_rate=0.0), n_layers=args.layers)
    ours = load_gpt2_from_hf(GPTModel(config, use_sdpa=True), hf.state_dict()).eval()
    ours_decode = None
    if on_cpu:
        ours_decode = set_decode_layout(load_gpt2_from_hf(GPTModel(config, use_sdpa=True), hf.state_dict()).eval())
    hf, ours = hf.to(device), ours.to(device)
    prompt = torch.randint(0, 50_257, (1, 16), generator=torch.Generator().manual_seed(1)).to(device)
    n = args.new_tokens

    runs = {
        "ours, KV cache": lambda: generate(ours, prompt, n, use_cache=True),
        "ours, cache + layout": lambda: generate(ours_decode, prompt, n, use_cache=True),
        "ours, no cache": lambda: generate(ours, prompt, n, use_cache=False),
        "HF generate, cache": lambda: hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        ),
    }
    if not on_cpu:
        del runs["ours, cache + layout"]  # a CPU (MKL matrix-vector) trick
    with torch.no_grad():
        for fn in runs.values():  # warm up
            timed(fn, device)
        times = {name: [] for name in runs}
        outputs = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                seconds, outputs[name] = timed(fn, device)
                times[name].append(seconds)
    reference = outputs["ours, KV cache"]
    differs = {name: first_difference(out, reference) for name, out in outputs.items()}
    median = {name: statistics.median(times[name]) for name in runs}

    print(f"machine: {describe_machine(device)}")
    print(f"GPT-2 124M shape ({args.layers} layers), random weights, fp32, batch 1, 16-token prompt, {n} new tokens, "
          f"greedy; median of {args.rounds} interleaved rounds")
    rows = []
    for name in runs:
        same = "yes" if differs[name] is None else f"no, from position {differs[name]}"
        print(f"{name:20} {n / median[name]:8.1f} tokens/s   ({median[name]:.3f} s)   same tokens as ours: {same}")
        rows.append({"generator": name, "tokens_per_s": n / median[name], "seconds": median[name],
                     "same_tokens": differs[name] is None, "first_difference": differs[name]})
    if not on_cpu:
        print("ours, cache + layout: skipped (set_decode_layout is a CPU trick)")
    cache, no_cache, hf_time = median["ours, KV cache"], median["ours, no cache"], median["HF generate, cache"]
    target = " (target >= 4x, on the CPU)" if on_cpu else ""
    print(f"cache speed-up over no cache: {no_cache / cache:.1f}x{target}")
    print(f"ours (cache) / HF generate:   {hf_time / cache:.2f}x, row-major nn.Linear weights")
    record = {"benchmark": "generate_speed", "machine": describe_machine(device), "device": str(device),
              "layers": args.layers, "new_tokens": n, "rounds": args.rounds, "rows": rows,
              "cache_speedup": no_cache / cache, "ours_over_hf": hf_time / cache}
    if on_cpu:
        decode = median["ours, cache + layout"]
        print(f"ours (cache) / HF generate:   {hf_time / decode:.2f}x, set_decode_layout (target >= 1.0)")
        linear_us, conv1d_us = single_row_matmul_us("linear"), single_row_matmul_us("conv1d")
        print(
            f"one-row matmul 768 -> 2304, weights from memory: nn.Linear layout (out, in) {linear_us:.0f} us, "
            f"Conv1D layout (in, out) {conv1d_us:.0f} us"
        )
        record.update(ours_layout_over_hf=hf_time / decode, matvec_us={"linear": linear_us, "conv1d": conv1d_us})
    write_json(args.json, record)


if __name__ == "__main__":
    main()

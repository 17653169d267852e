"""Benchmark: generation speed with and without the KV cache, and against Hugging Face generate.

    python bench/generate_speed.py [--new-tokens 200] [--rounds 3]

A 124M-shaped GPT-2 with random weights (no download), batch 1, a 16-token prompt, greedy
decoding of 200 new tokens on the CPU. Ours (cache on and off; with the cache, in both weight
layouts) and Hugging Face's GPT2LMHeadModel.generate with its cache take turns in one process on
the same weights; all must produce the same tokens. Targets: the cache >= 4x faster than no
cache, and at least as fast as Hugging Face.

Decoding one token multiplies a single row by every weight matrix, so its speed is that of the
BLAS matrix-vector kernel reading the weights from memory. That kernel's speed depends on how the
weights are laid out: ``nn.Linear`` stores (out, in) row-major, Hugging Face GPT-2's ``Conv1D``
stores (in, out). ``shared.generate.set_decode_layout`` keeps the ``nn.Linear`` modules but
stores their weights column-major, which is the (in, out) layout in memory. The script ends by
timing one such product in both layouts (see README).
"""

import argparse
import platform
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared.generate import generate, set_decode_layout
from shared.model import GPTModel
from shared.shapes import set_shape_checks
from shared.weights import gpt2_config, load_gpt2_from_hf


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def single_row_matmul_us(layout: str, d_in: int = 768, d_out: int = 2304, n: int = 48) -> float:
    """Median microseconds of (1, d_in) x weight -> (1, d_out), cycling through ``n`` different
    matrices so that the weights come from memory, as in a real decoding step."""
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_shape_checks(False)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()  # 124M shape
    config = gpt2_config("124M", drop_rate=0.0)
    ours = load_gpt2_from_hf(GPTModel(config, use_sdpa=True), hf.state_dict()).eval()
    ours_decode = set_decode_layout(load_gpt2_from_hf(GPTModel(config, use_sdpa=True), hf.state_dict()).eval())
    prompt = torch.randint(0, 50_257, (1, 16), generator=torch.Generator().manual_seed(1))
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
    with torch.no_grad():
        for fn in runs.values():  # warm up
            fn()
        times = {name: [] for name in runs}
        outputs = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                seconds, outputs[name] = timed(fn)
                times[name].append(seconds)
    reference = outputs["ours, KV cache"]
    same = {name: torch.equal(out, reference) for name, out in outputs.items()}
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"GPT-2 124M shape, random weights, batch 1, 16-token prompt, {n} new tokens, greedy")
    for name in runs:
        median = statistics.median(times[name])
        print(f"{name:20} {n / median:7.1f} tokens/s   ({median:.2f} s)   same tokens: {same[name]}")
    cache, decode, no_cache, hf_time = (statistics.median(times[k]) for k in runs)
    print(f"cache speed-up over no cache: {no_cache / cache:.1f}x (target >= 4x)")
    print(f"ours (cache) / HF generate:   {hf_time / cache:.2f}x, row-major nn.Linear weights")
    print(f"ours (cache) / HF generate:   {hf_time / decode:.2f}x, set_decode_layout (target >= 1.0)")
    linear_us, conv1d_us = single_row_matmul_us("linear"), single_row_matmul_us("conv1d")
    print(
        f"one-row matmul 768 -> 2304, weights from memory: nn.Linear layout (out, in) {linear_us:.0f} us, "
        f"Conv1D layout (in, out) {conv1d_us:.0f} us"
    )


if __name__ == "__main__":
    main()

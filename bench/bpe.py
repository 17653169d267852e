"""Benchmark: our pure-Python byte-level BPE against tiktoken (Rust), in one process.

    python bench/bpe.py

Measures (1) training a 1,024-token vocabulary on all of Tiny Shakespeare and (2) encoding all of
Tiny Shakespeare with GPT-2's 50,000 merges, with a fresh tokenizer each time (empty cache).
Targets on a 2-core machine: training <= 20 s, encoding <= 15 s.
"""

import platform
import statistics
import time

import torch

from shared.corpus import tiny_shakespeare
from shared.files import gpt2_bpe_files
from shared.shapes import set_shape_checks
from shared.tokenizer import BPETokenizer, gpt2_encoding


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    set_shape_checks(False)  # measure the algorithm, not the runtime type checks
    text = tiny_shakespeare()
    files = gpt2_bpe_files()
    enc = gpt2_encoding()

    train_s, tok = timed(lambda: BPETokenizer.train(text, 1024), repeats=3)
    ours_s, ours = timed(lambda: BPETokenizer.from_gpt2(*files).encode(text), repeats=3)
    load_s, _ = timed(lambda: BPETokenizer.from_gpt2(*files), repeats=3)
    tik_s, ref = timed(lambda: enc.encode(text), repeats=5)
    assert ours == ref, "our GPT-2 ids differ from tiktoken's"

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )
    print(f"text: Tiny Shakespeare, {len(text):,} characters -> {len(ref):,} GPT-2 tokens")
    print(f"train BPE to vocab 1,024 (ours):          {train_s:6.2f} s   (target <= 20 s)")
    print(
        f"encode with GPT-2 merges (ours, cold):    {ours_s:6.2f} s   (target <= 15 s; "
        f"{load_s:.2f} s of it loading the merges)"
    )
    print(f"encode with GPT-2 merges (tiktoken):      {tik_s:6.2f} s")
    print(f"ours / tiktoken encoding time:            {ours_s / tik_s:6.1f}x")
    print(f"identical ids: {ours == ref}; our vocabulary: {tok}")


if __name__ == "__main__":
    main()

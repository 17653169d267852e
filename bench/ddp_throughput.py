"""Benchmark: data-parallel training on the CPU, 2 gloo processes x 1 thread vs 1 process x 2 threads.

    python bench/ddp_throughput.py                 # 3 repeats of 30- and 60-step runs per configuration
    python bench/ddp_throughput.py --quick         # a few steps: checks that it runs, measures nothing

Issue 13's target, on a 2-core CPU: two processes with one thread each (``torchrun --standalone
--nproc_per_node 2``, gloo, ``OMP_NUM_THREADS=1``) reach at least 0.8x the training tokens/s of
one process with two threads (``OMP_NUM_THREADS=2``), on the CPU setting: ``GPT_CPU``, a global
batch of 64 windows of 64 tokens (32 per process under DDP; chapter 7 itself now takes batches of 16),
chapter 7's optimizer and schedule.

What runs is the course's command-line trainer, ``python -m shared pretrain --setting cpu
--device cpu --batch-size 64``, as a learner would launch it, with no evaluation before the last step. Each run reports,
in its ``history.json``, the seconds its training loop took (start-up, tokenizer and the final
bits per character excluded). Those seconds still hold the slow first steps and the one final
evaluation, so every configuration is run twice, for N and for 2N steps: the difference of the
two loop times is the time of N steady-state steps, and tokens/s = N x 4,096 / difference. The
configurations take turns (1p N, 2p N, 1p 2N, 2p 2N, then again), so background load hits both
alike; the median over ``--repeats`` is reported, with the ratio 2p / 1p.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import describe_machine, write_json

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "1 process x 2 threads": {"processes": 1, "threads": 2},
    "2 processes x 1 thread": {"processes": 2, "threads": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/ddp_throughput.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=30, help="N: each configuration runs N and 2N steps (default: 30)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per configuration (default: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="N = 3, one repeat: a check that everything runs (its numbers are noise)")
    parser.add_argument("--target", type=float, default=0.8, help="the ratio 2p / 1p to reach (default: 0.8)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 3, 1
    return args


def thread_env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")


def torch_threads(threads: int) -> int:
    """What ``torch.get_num_threads()`` says in a process started with this environment."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=thread_env(threads), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def train_once(processes: int, threads: int, steps: int, out: Path) -> dict:
    """One run of the command-line trainer; returns its loop seconds (from history.json) and wall seconds."""
    trainer = ["-m", "shared", "pretrain", "--setting", "cpu", "--device", "cpu", "--batch-size", "64",
               "--steps", str(steps), "--eval-every", str(10 * steps), "--eval-batches", "1", "--out", str(out),
               "--quiet"]
    if processes == 1:
        cmd = [sys.executable, *trainer]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *trainer]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=thread_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the trainer failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    history = json.loads((out / "history.json").read_text())
    assert history["processes"] == processes and len(history["step_losses"]) == steps, history["processes"]
    return {"steps": steps, "loop_s": history["seconds"], "wall_s": wall, "tokens_per_step": history["tokens_per_step"],
            "final_loss": history["step_losses"][-1]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.steps
    load_before = os.getloadavg()
    threads = {name: torch_threads(c["threads"]) for name, c in CONFIGS.items()}
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="ddp_throughput_") as tmp:
        for r in range(args.repeats):
            pair = {name: {} for name in CONFIGS}
            for steps in (n, 2 * n):
                for name, c in CONFIGS.items():
                    pair[name][steps] = train_once(c["processes"], c["threads"], steps, Path(tmp) / f"{r}_{steps}")
                    print(f"repeat {r + 1}, {name}, {steps} steps: loop {pair[name][steps]['loop_s']:.2f} s, "
                          f"wall {pair[name][steps]['wall_s']:.1f} s", flush=True)
            for name in CONFIGS:
                short, long = pair[name][n], pair[name][2 * n]
                difference = long["loop_s"] - short["loop_s"]
                rate = n * long["tokens_per_step"] / difference if difference > 0 else None
                runs[name].append({"short": short, "long": long, "steady_s_per_step": difference / n,
                                   "tokens_per_s": rate})
    tokens_per_step = runs[next(iter(CONFIGS))][0]["long"]["tokens_per_step"]
    median = {}
    for name in CONFIGS:
        rates = [r["tokens_per_s"] for r in runs[name] if r["tokens_per_s"]]
        median[name] = statistics.median(rates) if rates else None
    one, two = median["1 process x 2 threads"], median["2 processes x 1 thread"]
    ratio = two / one if one and two else None
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(*runs.values(), strict=True)
              if a["tokens_per_s"] and b["tokens_per_s"]]

    machine = describe_machine(torch.device("cpu"), threads=False)
    print(f"machine: {machine}; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"python -m shared pretrain --setting cpu: GPT_CPU, global batch 64 x 64 = {tokens_per_step:,} tokens per "
          f"step; steady state from runs of {n} and {2 * n} steps, {args.repeats} repeat(s), median"
          + ("  [QUICK RUN: too few steps to measure anything]" if args.quick else ""))
    for name in CONFIGS:
        per_step = statistics.median(r["steady_s_per_step"] for r in runs[name])
        rate = f"{median[name]:8,.0f} tokens/s" if median[name] else "   (no positive difference)"
        print(f"{name:24} {rate}   {per_step * 1e3:7.1f} ms per step   torch threads per process: {threads[name]}")
    if ratio is not None:
        verdict = "quick run: no verdict" if args.quick else ("meets" if ratio >= args.target else "misses")
        spread = f", per repeat {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
        print(f"ratio 2 processes / 1 process: {ratio:.2f}{spread} ({verdict}; target >= {args.target})")
    write_json(args.json, {"benchmark": "ddp_throughput", "machine": machine,
                           "load_average_before": load_before, "steps": n, "repeats": args.repeats,
                           "quick": args.quick, "torch_threads": threads, "runs": runs,
                           "tokens_per_s": median, "ratio": ratio, "ratios_per_repeat": ratios,
                           "target": args.target})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the course's GPU setting, time to its validation bits per character, next to nanoGPT.

    python bench/gpu_setting.py --device cuda                              # ours only
    python bench/gpu_setting.py --device cuda --nanogpt ~/src/nanoGPT      # and nanoGPT, same GPU
    python bench/gpu_setting.py --smoke --device cpu --nanogpt PATH        # seconds, on a CPU: plumbing only

Ours: ``python -m shared pretrain --setting gpu`` (chapter 7's GPU setting: its model, batch,
schedule and precision) in a subprocess. Measured: the wall time from launching the process to
its exit, so Python start-up, loading and encoding the text, compiling (with ``--compile``),
training, evaluations, the final bits per character on the whole validation text (the last 10%
of Tiny Shakespeare) and writing the checkpoint all count; also, from its ``history.json``, the
steps, the seconds of the training loop itself (evaluations included) and the tokens/s over it.

nanoGPT (``--nanogpt PATH``, a checkout of github.com/karpathy/nanoGPT, used where it is and never
copied here): first ``data/shakespeare_char/prepare.py`` (Tiny Shakespeare is copied to its
``input.txt`` from this project's data first, so nothing is downloaded), then
``train.py config/train_shakespeare_char.py`` on the same device (its defaults there: bf16 or fp16,
compiled) for ``--nanogpt-iters`` iterations. Its schedule decays over ``lr_decay_iters = 5000``
whatever ``max_iters`` is, so fewer iterations reproduce the first part of the full run exactly.
Its output is read as it comes: the best "val loss" (nats per character; an estimate over 200
random batches of the same last 10%), and the wall time from launch to the line that reports it.
Bits per character = nats / ln 2.

Training FLOPs, for both: 6 x N x tokens trained (the estimate of the issue's compute budget),
where N is every parameter except the embedding lookup tables (position embeddings; token
embeddings unless shared with the output head), as nanoGPT's printed "number of parameters".

``--smoke`` shrinks everything to seconds on a CPU (our run with BUILD_A_GPT_SMOKE=1 and a tiny
model; nanoGPT with a tiny model, not compiled): it checks the plumbing, its numbers mean nothing.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import choose_device, describe_machine, matmul_parameters, write_json

from shared.files import fetch
from shared.model import GPTConfig, GPTModel, count_parameters
from shared.train import resolve_precision

ROOT = Path(__file__).resolve().parent.parent
OUR_SMOKE_SIZES = ["--emb", "64", "--layers", "2", "--heads", "2", "--context", "64"]
NANOGPT_SMOKE = ["--compile=False", "--dtype=float32", "--eval_interval=3", "--eval_iters=2", "--log_interval=1",
                 "--block_size=64", "--batch_size=8", "--n_layer=2", "--n_head=2", "--n_embd=64", "--dropout=0.0"]
_children: list[subprocess.Popen] = []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/gpu_setting.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu); both runs use it")
    parser.add_argument("--steps", type=int, help="our training steps (default: the GPU setting's)")
    parser.add_argument("--compile", action="store_true", help="pass --compile to our trainer (torch.compile)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                        help="our precision (default: the setting's, auto: bf16 or fp16 on CUDA)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: also run its shakespeare_char config")
    parser.add_argument("--nanogpt-iters", type=int, default=5000,
                        help="nanoGPT's max_iters (default: 5000, its config's; its best came at 1500 on an H200)")
    parser.add_argument("--skip-ours", action="store_true", help="run only nanoGPT")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps of tiny models, to test the script (also: BUILD_A_GPT_SMOKE=1); the device "
                             "then defaults to the CPU")
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="seconds for both runs together; a run still going when they are spent is stopped and "
                             "reported as unfinished (default: 1800)")
    parser.add_argument("--out", type=Path, help="keep our run's files (checkpoint, history.json) here "
                                                 "(default: a temporary folder, removed at the end)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.smoke = args.smoke or os.environ.get("BUILD_A_GPT_SMOKE", "").strip().lower() not in ("", "0", "false", "no")
    return args


def run_streaming(cmd: list[str], cwd: Path, env: dict, limit_s: float, tag: str) -> dict:
    """Run ``cmd``, echoing its output prefixed by ``tag``; every line is kept with the seconds since
    launch at which it arrived. Stopped (its whole process group) after ``limit_s`` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    _children.append(proc)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n").split("\r")[-1]  # a progress bar's last redraw
            lines.append((time.perf_counter() - start, line))
            print(f"  [{tag}] {line}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=max(1.0, limit_s))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        returncode, timed_out = proc.wait(), True
    reader.join(timeout=5)
    _children.remove(proc)
    return {"cmd": cmd, "returncode": returncode, "timed_out": timed_out, "wall_s": time.perf_counter() - start,
            "lines": lines}


def run_ours(args, device: torch.device, limit_s: float, out: Path) -> dict:
    cmd = [sys.executable, "-m", "shared", "pretrain", "--setting", "gpu", "--device", str(device), "--out", str(out)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.compile:
        cmd.append("--compile")
    if args.precision:
        cmd += ["--precision", args.precision]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    if args.smoke:
        cmd += OUR_SMOKE_SIZES
        env["BUILD_A_GPT_SMOKE"] = "1"
    run = run_streaming(cmd, ROOT, env, limit_s, "ours")
    result = {"run": "ours", "cmd": " ".join(cmd), "wall_s": run["wall_s"], "returncode": run["returncode"],
              "timed_out": run["timed_out"], "finished": False}
    history_path = out / "history.json"
    if run["returncode"] != 0 or not history_path.exists():
        return result
    history = json.loads(history_path.read_text())
    with torch.device("meta"):  # sizes only: no memory, no arithmetic
        model = GPTModel(GPTConfig(**history["model_config"]))
    n_matmul, steps, tokens_per_step = matmul_parameters(model), len(history["step_losses"]), history["tokens_per_step"]
    result.update(
        finished=True,
        parameters=count_parameters(model),
        n_matmul=n_matmul,
        steps=steps,
        tokens_per_step=tokens_per_step,
        train_loop_s=history["seconds"],
        tokens_per_s=steps * tokens_per_step / history["seconds"],
        training_flops=6.0 * n_matmul * steps * tokens_per_step,
        val_bpc=history["val_bpc"],
        time_to_bpc_s=run["wall_s"],  # the bpc is measured at the end
        precision=resolve_precision(history["train_config"]["precision"], device),
        compile=history["train_config"]["compile"],
        evals=history["evals"],
    )
    return result


def parse_nanogpt(lines: list[tuple[float, str]]) -> dict:
    """nanoGPT's parameter count, tokens per iteration, evaluations (with arrival times) and iteration times."""
    found: dict = {"evals": [], "iter_ms": [], "last_iter": None}
    for t, line in lines:
        if m := re.search(r"number of parameters: ([\d.]+)M", line):
            found["n_matmul"] = round(float(m.group(1)) * 1e6)
        elif m := re.search(r"tokens per iteration will be: ([\d,]+)", line):
            found["tokens_per_iter"] = int(m.group(1).replace(",", ""))
        elif m := re.search(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", line):
            found["evals"].append({"iter": int(m.group(1)), "train_loss": float(m.group(2)),
                                   "val_loss": float(m.group(3)), "at_s": t})
        elif m := re.search(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", line):
            found["last_iter"] = int(m.group(1))
            found["iter_ms"].append((int(m.group(1)), float(m.group(2))))
    return found


def run_nanogpt(args, device: torch.device, limit_s: float, work: Path) -> dict:
    path = args.nanogpt.expanduser().resolve()
    config = path / "config" / "train_shakespeare_char.py"
    if not (path / "train.py").exists() or not config.exists():
        raise SystemExit(f"--nanogpt {path}: no train.py and config/train_shakespeare_char.py there; pass a checkout "
                         "of https://github.com/karpathy/nanoGPT")
    start = time.perf_counter()
    data = path / "data" / "shakespeare_char"
    if not (data / "input.txt").exists():  # prepare.py would download it
        shutil.copyfile(fetch("tinyshakespeare.txt"), data / "input.txt")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    prepare = run_streaming([sys.executable, str(data / "prepare.py")], path, env, limit_s, "nanoGPT prepare")
    if prepare["returncode"] != 0:
        return {"run": "nanoGPT", "finished": False, "error": "prepare.py failed", "wall_s": prepare["wall_s"]}
    iters = 6 if args.smoke else args.nanogpt_iters
    cmd = [sys.executable, "train.py", str(config.relative_to(path)), f"--device={device}",
           f"--out_dir={work / 'nanogpt_out'}", f"--max_iters={iters}"]
    if args.smoke:
        cmd += [*NANOGPT_SMOKE, f"--lr_decay_iters={iters}", "--warmup_iters=1"]
    elif device.type == "cpu":
        cmd += ["--compile=False", "--dtype=float32"]
    run = run_streaming(cmd, path, env, limit_s - (time.perf_counter() - start), "nanoGPT")
    found = parse_nanogpt(run["lines"])
    result = {"run": "nanoGPT", "cmd": " ".join(cmd), "cwd": str(path), "wall_s": run["wall_s"],
              "prepare_s": prepare["wall_s"], "returncode": run["returncode"], "timed_out": run["timed_out"],
              "finished": run["returncode"] == 0, "max_iters": iters, **found}
    if found["evals"]:
        best = min(found["evals"], key=lambda e: e["val_loss"])
        trained = (iters + 1) if result["finished"] else (found["last_iter"] or 0) + 1
        result.update(best_val_nats=best["val_loss"], best_val_bpc=best["val_loss"] / math.log(2),
                      best_iter=best["iter"], time_to_best_s=best["at_s"], iters_trained=trained)
        if "n_matmul" in found and "tokens_per_iter" in found:
            result["training_flops"] = 6.0 * found["n_matmul"] * trained * found["tokens_per_iter"]
            result["flops_to_best"] = 6.0 * found["n_matmul"] * best["iter"] * found["tokens_per_iter"]
    steady = [ms for i, ms in found["iter_ms"][3:] if i % 250]  # after start-up; not the iterations that evaluate
    if steady and "tokens_per_iter" in found:
        median_ms = sorted(steady)[len(steady) // 2]
        result.update(median_iter_ms=median_ms, tokens_per_s=found["tokens_per_iter"] / (median_ms / 1e3))
    return result


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def report(ours: dict | None, nano: dict | None, device: torch.device, smoke: bool) -> None:
    print()
    print(f"machine: {describe_machine(device)}{'  [SMOKE RUN: tiny models, numbers mean nothing]' if smoke else ''}")
    header = (f"{'run':34} {'N':>8} {'steps':>6} {'tokens/step':>11} {'train FLOPs':>11} {'tokens/s':>9} "
              f"{'val bpc':>8} {'reached at s':>12} {'wall s':>7}")
    print(header)
    if nano is not None:
        if nano.get("best_val_nats") is not None:
            print(f"{'nanoGPT shakespeare-char (best)':34} {_millions(nano.get('n_matmul')):>8} "
                  f"{nano['iters_trained']:6d} {_fmt(nano.get('tokens_per_iter'), ','):>11} "
                  f"{_fmt(nano.get('training_flops'), '.2e'):>11} {_fmt(nano.get('tokens_per_s'), ',.0f'):>9} "
                  f"{nano['best_val_bpc']:8.3f} {nano['time_to_best_s']:12.1f} {nano['wall_s']:7.1f}")
            print(f"    nanoGPT best val loss {nano['best_val_nats']:.4f} nats/char = {nano['best_val_bpc']:.3f} "
                  f"bits/char at iteration {nano['best_iter']} (its estimate on random validation batches); "
                  f"tokens/s from its median iteration time, evaluations excluded")
        else:
            print(f"{'nanoGPT shakespeare-char':34} no evaluation reported (return code {nano.get('returncode')}, "
                  f"timed out: {nano.get('timed_out')}, {nano.get('error', '')})")
    if ours is not None:
        if ours["finished"]:
            print(f"{'ours, --setting gpu':34} {_millions(ours['n_matmul']):>8} {ours['steps']:6d} "
                  f"{ours['tokens_per_step']:11,d} {ours['training_flops']:11.2e} {ours['tokens_per_s']:9,.0f} "
                  f"{ours['val_bpc']:8.3f} {ours['time_to_bpc_s']:12.1f} {ours['wall_s']:7.1f}")
            print(f"    ours: {ours['precision']} precision, compile {ours['compile']}; bpc on the whole validation "
                  f"text at the end; tokens/s over the training loop ({ours['train_loop_s']:.1f} s, evaluations "
                  f"included); {ours['parameters']:,} parameters in all")
        else:
            print(f"{'ours, --setting gpu':34} did not finish (return code {ours['returncode']}, timed out: "
                  f"{ours['timed_out']}, {ours['wall_s']:.0f} s)")
    print("N: parameters that multiply (no embedding lookup tables); train FLOPs = 6 x N x tokens trained; "
          "reached at / wall s: seconds from launch, start-up and compile included")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = choose_device("cpu" if args.smoke and args.device is None else args.device)
    signal.signal(signal.SIGTERM, lambda *_: _stop_children_and_exit())
    deadline = time.perf_counter() + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="gpu_setting_"))
    ours = nano = None
    try:
        if not args.skip_ours:
            ours = run_ours(args, device, deadline - time.perf_counter(), args.out or work / "ours")
        if args.nanogpt:
            nano = run_nanogpt(args, device, deadline - time.perf_counter(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(ours, nano, device, args.smoke)
    if nano:
        nano.pop("iter_ms", None)  # long; the median is kept
    write_json(args.json, {"benchmark": "gpu_setting", "machine": describe_machine(device), "device": str(device),
                           "smoke": args.smoke, "ours": ours, "nanogpt": nano})
    ok = (ours is None or ours["finished"]) and (nano is None or nano.get("best_val_nats") is not None)
    return 0 if ok else 1


def _stop_children_and_exit() -> None:
    for proc in list(_children):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(143)


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmark scripts: device choice, timing, FLOP counts, peaks, machines.

The scripts import it as ``common`` (Python puts a script's own folder on ``sys.path``). Run on
its own, it serves ``bench/gpu_check.sh``: it describes the environment, or executes notebooks
top to bottom:

    python bench/common.py environment
    python bench/common.py notebooks [--budget-s 240] [--max-notebook-s 150] [--json OUT] NB.ipynb ...

``environment`` prints Python, torch, CUDA, the GPU (name, memory, compute capability, native
bf16) and the version of every package the course needs, and names those that fail to import.

Each notebook runs in a fresh kernel (nbclient, working directory: the notebook's folder) with
errors allowed, so that one failing cell does not hide the next; afterwards every error output in
a cell not marked ``NBVAL_RAISES_EXCEPTION`` is reported, with the notebook's wall time and its
slowest cells. Notebooks share one time budget: a notebook is stopped when it overruns its own
limit or the budget, and notebooks left when the budget is spent are listed as not run.
"""

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, in TFLOP/s. The
# first pattern that matches torch.cuda.get_device_name() wins, so the PCIe H100 comes before the
# SXM one (whose name, "NVIDIA H100 80GB HBM3", says neither). Data-sheet figures at boost clock:
# a share of them is an upper bound on what the chip can do, not a measurement.
PEAK_TFLOPS: list[tuple[str, str, float]] = [
    (r"\bH200\b", "H200", 989.0),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0),
    (r"\bH100\b.*(\bSXM|\bHBM3\b)", "H100 SXM", 989.0),
    (r"\bA100\b", "A100", 312.0),
    (r"\bL4\b", "L4", 121.0),  # \b keeps the L40 and L40S out
    (r"\bA10G\b", "A10G", 125.0),
    (r"\bT4\b", "T4", 65.0),
    (r"\bV100\b", "V100", 125.0),
]


def choose_device(name: str | None) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1"), or CUDA when it is available and the CPU otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: the benchmarks run on cpu or cuda")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA launches are asynchronous); nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds ``fn()`` takes, GPU work included (synchronised before and after), and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a resolved precision ("fp32", "bf16", "fp16"), as the training loop uses."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=dtypes[precision])


def matmul_parameters(model: torch.nn.Module) -> int:
    """N of the FLOP estimates: the parameters of a ``GPTModel`` that multiply activations.

    nanoGPT's ``estimate_mfu`` convention: every parameter except the position-embedding table
    (a lookup, no arithmetic). nanoGPT keeps the token embedding because its head shares it and the
    head is a matrix product; for an untied model the token-embedding table is a lookup too and
    is left out, while the separate head is counted. Biases and norms are counted (negligible).
    """
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    n -= model.embed.pos.weight.numel()
    if model.out_head.weight is not model.embed.tok.weight:
        n -= model.embed.tok.weight.numel()
    return n


def flops_per_token(n_matmul: int, n_layers: int, emb_dim: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, PaLM's and nanoGPT's estimate: 6·N + 12·L·d·T.

    6·N: 2 FLOPs per parameter per token forward, 4 backward. 12·L·d·T: attention's two products
    (scores and weighted values) over a T-token window, counted in full although a causal kernel
    skips the masked half. Layer norms, softmax and element-wise work are not counted.
    """
    return 6.0 * n_matmul + 12.0 * n_layers * emb_dim * seq_len


def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """The GPU's dense bf16/fp16 peak in TFLOP/s from :data:`PEAK_TFLOPS`, and a label saying which
    entry matched (``None`` and a reason for a CPU or a GPU not in the table)."""
    if device.type != "cuda":
        return None, "peak unknown (CPU)"
    name = torch.cuda.get_device_name(device)
    for pattern, label, peak in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peak, f"{peak:.0f} TFLOP/s dense bf16/fp16 ({label} data sheet)"
    return None, f"peak unknown ({name} is not in bench/common.py's table)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, threads: bool = True) -> str:
    """One line naming what ran the benchmark: the GPU (or CPU), this process's thread count, Python and torch."""
    software = f"Python {platform.python_version()}, torch {torch.__version__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}), "
            f"CUDA {torch.version.cuda}, {software}"
        )
    count = f", {torch.get_num_threads()} threads" if threads else ""
    return f"{_cpu_model()} ({os.cpu_count()} cores{count}), {software}"


def write_json(path: str | Path | None, record: dict) -> None:
    """Write ``record`` to ``path`` (a no-op without one), creating its folder."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")


# -- running notebooks --------------------------------------------------------------------------


def _cell_seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    from datetime import datetime

    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def run_notebook(path: Path, limit_s: float) -> dict:
    """Execute one notebook top to bottom in a fresh kernel, stopping it after ``limit_s`` seconds.

    Returns its wall time, the errors of cells not marked ``NBVAL_RAISES_EXCEPTION`` (index as in
    ``nb.cells``, 0-based), whether it ran to the end, and its five slowest cells.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + limit_s
    client = NotebookClient(
        nb,
        timeout=int(limit_s) + 1,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic()) + 1),  # the notebook's limit, not a cell's
        kernel_name="python3",
        allow_errors=True,
        record_timing=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    stopped = None
    try:
        client.execute()
    except CellTimeoutError:
        stopped = f"stopped at its limit of {limit_s:.0f} s"
    except DeadKernelError as e:
        stopped = f"the kernel died: {e}"
    seconds = time.perf_counter() - start
    errors, allowed, cells = [], 0, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cells.append({"cell": i, "seconds": _cell_seconds(cell), "first_line": cell.source.split("\n", 1)[0][:80]})
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            if "NBVAL_RAISES_EXCEPTION" in cell.source:
                allowed += 1
            else:
                errors.append({"cell": i, "ename": out.get("ename"), "evalue": str(out.get("evalue"))[:500]})
    ran = [c for c in cells if c["seconds"] is not None]
    slowest = sorted(ran, key=lambda c: -c["seconds"])[:5]
    return {
        "notebook": str(path),
        "seconds": round(seconds, 1),
        "finished": stopped is None,
        "stopped": stopped,
        "code_cells": len(cells),
        "cells_run": len(ran),
        "errors": errors,
        "allowed_errors": allowed,
        "slowest_cells": slowest,
    }


def run_notebooks(paths: list[Path], budget_s: float, max_notebook_s: float) -> list[dict]:
    """Run ``paths`` in order within ``budget_s`` seconds in all, each for at most ``max_notebook_s``."""
    end = time.monotonic() + budget_s
    results = []
    for path in paths:
        left = end - time.monotonic()
        if left < 10:
            results.append({"notebook": str(path), "finished": False, "stopped": "not run: the budget was spent",
                            "errors": []})
            print(f"{path}: not run (budget of {budget_s:.0f} s spent)", flush=True)
            continue
        result = run_notebook(path, min(max_notebook_s, left))
        results.append(result)
        status = "ok" if result["finished"] and not result["errors"] else (result["stopped"] or "errors")
        print(f"{path}: {result['seconds']:.1f} s, {result['cells_run']}/{result['code_cells']} code cells run, "
              f"{len(result['errors'])} error(s) [{status}]", flush=True)
        for error in result["errors"]:
            print(f"    cell {error['cell']}: {error['ename']}: {error['evalue'][:200]}", flush=True)
        for cell in result["slowest_cells"][:3]:
            print(f"    slow: cell {cell['cell']} {cell['seconds']:.1f} s  {cell['first_line']}", flush=True)
    return results


NEEDED = ["shared", "transformers", "jaxtyping", "beartype", "einops", "tiktoken", "gensim", "smart_open", "pooch",
          "matplotlib", "tqdm", "safetensors", "nbformat", "nbclient", "ipykernel"]


def environment() -> int:
    """Print what runs here (Python, torch, CUDA, the GPU) and which needed packages are missing."""
    import importlib

    print(f"Python {platform.python_version()} ({platform.machine()}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
              f"{p.multi_processor_count} SMs, native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    else:
        print(f"GPU: none visible to torch; CPU: {describe_machine(torch.device('cpu'))}")
    missing = []
    for name in NEEDED:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # missing, or failing to import: either way the course cannot use it
            missing.append(f"{name} ({type(e).__name__}: {e})")
        else:
            print(f"  {name} {getattr(module, '__version__', '')}")
    print("missing: " + ("; ".join(missing) if missing else "nothing"))
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/common.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("environment", help="print Python, torch, CUDA, the GPU and the needed packages' versions")
    nbs = sub.add_parser("notebooks", help="execute notebooks top to bottom and report errors and wall times")
    nbs.add_argument("paths", nargs="+", type=Path, help="notebooks to run, in this order")
    nbs.add_argument("--budget-s", type=float, default=240.0,
                     help="seconds for all notebooks together; the rest are reported as not run (default: 240)")
    nbs.add_argument("--max-notebook-s", type=float, default=150.0,
                     help="seconds after which one notebook is stopped (default: 150)")
    nbs.add_argument("--json", type=Path, help="write the per-notebook results to this file")
    args = parser.parse_args(argv)
    if args.command == "environment":
        return environment()
    start = time.perf_counter()
    results = run_notebooks(args.paths, args.budget_s, args.max_notebook_s)
    total = time.perf_counter() - start
    failed = [r for r in results if r["errors"] or not r["finished"]]
    print(f"notebooks: {len(results) - len(failed)}/{len(results)} ran to the end without errors in {total:.0f} s "
          f"(setting {os.environ.get('BUILD_A_GPT_SETTING', 'default')}, "
          f"smoke {os.environ.get('BUILD_A_GPT_SMOKE', '0')})", flush=True)
    write_json(args.json, {"seconds": round(total, 1), "notebooks": results,
                           "setting": os.environ.get("BUILD_A_GPT_SETTING"),
                           "smoke": os.environ.get("BUILD_A_GPT_SMOKE")})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

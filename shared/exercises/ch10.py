"""Chapter 10's exercises: an all-reduce written by hand and run in two real processes, gradients of
unequal shares, gradient accumulation, sharding an epoch's order, and the tokens of one step.

The checker of 10.1 starts two ``gloo`` processes on this machine (``127.0.0.1``, world size 2),
sends them the source of the learner's function, and compares what every process holds afterwards
with the gradient of the whole batch. The others run in this process, on tiny seeded models.
"""

import inspect
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.datasets import ResumableSampler
from shared.exercises import NotYet, describe, exercise, expect, own_work, run_answer
from shared.train.distributed import all_reduce_mean

__all__ = ["TOKENS_RUN", "tiny_model_and_batch"]

# The model and batch of every check: tiny, in plain PyTorch, so that a new process builds it in a
# moment without importing the course. The same source runs here and in 10.1's processes.
_PROBLEM = """
def tiny_model_and_batch(windows=8, seed=10):
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 32))
    x = torch.randint(0, 32, (windows, 8), generator=generator)  # (batch, seq)
    y = torch.randint(0, 32, (windows, 8), generator=generator)
    return model, x, y


def mean_loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())
"""
_namespace: dict = {"torch": torch, "nn": nn, "F": F}
exec(_PROBLEM, _namespace)
tiny_model_and_batch, _loss = _namespace["tiny_model_and_batch"], _namespace["mean_loss"]


def _whole_batch_grads(windows: int = 8) -> dict[str, Tensor]:
    model, x, y = tiny_model_and_batch(windows)
    _loss(model, x, y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# -- 10.1 ------------------------------------------------------------------------------------------

# One process of 10.1's check: join the group, compute this rank's share's gradient, run the answer.
_RANK_MAIN = _PROBLEM + """
import sys
from datetime import timedelta

rank, world_size, address, folder, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size, timeout=timedelta(seconds=30))
try:
    namespace = {"torch": torch, "dist": dist, "nn": nn, "F": F, "Tensor": torch.Tensor}
    with open(f"{folder}/answer.py", encoding="utf-8") as f:
        exec(f.read(), namespace)  # the learner's function, defined again in this process
    model, x, y = tiny_model_and_batch()
    share = x.shape[0] // world_size
    mean_loss(model, x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]).backward()
    namespace[name](model)
    result = {"grads": {n: p.grad for n, p in model.named_parameters()}}
except Exception as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    result = {"error": f"{type(e).__name__}: {message}"}
torch.save(result, f"{folder}/rank{rank}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_two_processes(function) -> list[dict[str, Tensor]]:
    """Run ``function(model)`` in two gloo processes (127.0.0.1, world size 2), each after computing its
    half of the batch's gradient; return every rank's gradients afterwards. A rank's error becomes NotYet."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        raise NotYet("The check runs your function in two new processes and needs its source: define it with "
                     "`def` in a cell of its own (not a lambda).") from None
    if "raise NotImplementedError" in source:
        raise NotImplementedError  # the stub as committed: "not attempted", without starting any process
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import torch\nimport torch.distributed as dist\nimport torch.nn.functional as F\nfrom torch import nn\n"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "answer.py").write_text(source, encoding="utf-8")
        processes = [subprocess.Popen([sys.executable, "-c", code + _RANK_MAIN, str(rank), "2", address, folder,
                                       function.__name__], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE) for rank in range(2)]
        try:
            for p in processes:
                p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise NotYet("Your function did not return within 60 s in one of the two processes. A collective such "
                         "as dist.all_reduce waits until every process calls it: call it on every rank, for the "
                         "same tensors in the same order.") from None
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        results = []
        for rank, p in enumerate(processes):
            path = Path(folder, f"rank{rank}.pt")
            if not path.exists():
                detail = p.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if p.stderr else []
                raise NotYet(f"Process {rank} of 2 stopped without a result ({' '.join(detail) or 'no message'}).")
            results.append(torch.load(path, weights_only=True))
    for rank, result in enumerate(results):
        if "error" in result:
            raise NotYet(f"In process {rank} of 2 your function raised {result['error']}. Inside it, use `dist` for "
                         "torch.distributed and `torch`: the check defines your function again in each process.")
    return [result["grads"] for result in results]


@exercise("10.1", "An all-reduce by hand, in two processes", level=2, minutes=15)
def check_average_gradients(average_gradients) -> str:
    expect(callable(average_gradients), f"Pass your function itself, not {type(average_gradients).__name__}.")
    own_work(average_gradients, all_reduce_mean, nn.parallel.DistributedDataParallel)
    ranks = run_in_two_processes(average_gradients)
    whole = _whole_batch_grads()
    missing = [n for n in whole if ranks[0][n] is None or ranks[1][n] is None]
    expect(not missing, f"After your function some gradients are gone ({missing[:2]}): change p.grad in place, "
                        "do not set it to None.")
    same = all(torch.equal(ranks[0][n], ranks[1][n]) for n in whole)
    untouched = sum(not torch.allclose(ranks[0][n], ranks[1][n]) for n in whole)
    if not same:
        if untouched == len(whole):
            raise NotYet("The two processes still hold different gradients: every parameter's .grad must go "
                         "through dist.all_reduce, which leaves the same result in every process.")
        raise NotYet(f"{untouched} of the {len(whole)} parameter tensors still differ between the two processes: "
                     "all-reduce the gradient of every parameter, not only some of them.")
    ratios = [float((ranks[0][n].double() * whole[n].double()).sum() / whole[n].double().pow(2).sum())
              for n in whole if whole[n].abs().max() > 1e-6]
    ratio = sorted(ratios)[len(ratios) // 2]
    close = all(torch.allclose(ranks[0][n], whole[n], atol=1e-6, rtol=1e-4) for n in whole)
    if not close:
        if abs(ratio - 2) < 0.05:
            raise NotYet("Every process holds the same gradient, but it is the sum of the two processes' "
                         "gradients, not their mean: all_reduce adds; divide by the number of processes.")
        if abs(ratio - 0.5) < 0.05:
            raise NotYet("Every process holds the same gradient, but it is half the right one: divide the sum "
                         "by the number of processes once, not twice.")
        raise NotYet("Every process holds the same gradient, but not the whole batch's: the result should be the "
                     "mean over the processes of their gradients (section 10.1).")
    return ("In two gloo processes, each with half the batch, your function left every process holding the "
            "gradient of the whole batch.")


# -- 10.2 ------------------------------------------------------------------------------------------

SHARE_SIZES = (2, 6)  # windows per process: unequal on purpose


@exercise("10.2", "Gradients of unequal shares", level=2, minutes=10)
def check_combine(combine) -> str:
    expect(callable(combine), f"Pass your function itself, not {type(combine).__name__}.")
    model, x, y = tiny_model_and_batch(sum(SHARE_SIZES))

    def flat_gradient(rows: slice) -> Tensor:  # every parameter's gradient, as one vector
        model.zero_grad()
        _loss(model, x[rows], y[rows]).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    grads = [flat_gradient(slice(0, SHARE_SIZES[0])), flat_gradient(slice(SHARE_SIZES[0], None))]
    whole = flat_gradient(slice(None))
    given = [g.clone() for g in grads]
    out = run_answer(combine, given, list(SHARE_SIZES))
    expect(all(torch.equal(a, b) for a, b in zip(given, grads, strict=True)),
           "Your function changed the gradients it was given; compute a new tensor instead.")
    expect(isinstance(out, Tensor) and out.shape == whole.shape,
           f"combine should return one gradient of shape {tuple(whole.shape)}, the shape of each one given; yours "
           f"returned {describe(out)}.")
    if not torch.allclose(out, whole, atol=1e-6, rtol=1e-4):
        if torch.allclose(out, (grads[0] + grads[1]) / 2, atol=1e-6, rtol=1e-4):
            raise NotYet("That is the plain mean of the two gradients. It equals the whole batch's only when the "
                         "shares are equal: here one process had more windows, so its mean loss counts for more.")
        if torch.allclose(out, grads[0] + grads[1], atol=1e-6, rtol=1e-4):
            raise NotYet("That is the sum of the two gradients: each is already the gradient of a mean over its "
                         "share, so a sum counts the batch twice. Weigh each one by its share of the windows.")
        raise NotYet("Not the whole batch's gradient yet. Each process's gradient is that of the mean loss over "
                     "its own windows: write the whole batch's mean loss as a combination of the shares' means.")
    return ("Weighting each process's gradient by its share of the windows gives exactly the whole batch's gradient, "
            "even with unequal shares.")


# -- 10.3 ------------------------------------------------------------------------------------------


@exercise("10.3", "Gradient accumulation equals one big batch", level=2, minutes=10)
def check_accumulate(accumulate) -> str:
    expect(callable(accumulate), f"Pass your function itself, not {type(accumulate).__name__}.")
    whole = _whole_batch_grads()
    model, x, y = tiny_model_and_batch()
    micro, pieces = 2, x.shape[0] // 2
    run_answer(accumulate, model, x, y, micro)
    grads = {n: p.grad for n, p in model.named_parameters()}
    expect(all(g is not None for g in grads.values()),
           "After your function some parameters have no gradient: call backward() on every micro-batch's loss.")
    if all(torch.allclose(grads[n], whole[n], atol=1e-6, rtol=1e-4) for n in whole):
        return (f"{pieces} micro-batches of {micro} windows gave exactly the gradient of the batch of {x.shape[0]} "
                "in one piece.")
    ratio = [float((grads[n].double() * whole[n].double()).sum() / whole[n].double().pow(2).sum())
             for n in whole if whole[n].abs().max() > 1e-6]
    median = sorted(ratio)[len(ratio) // 2]
    if abs(median - pieces) < 0.05:
        raise NotYet(f"The gradient is {pieces} times too large, one time per micro-batch: backward() adds the "
                     "micro-batches' gradients, so scale each micro-batch's loss by 1 / (the number of "
                     "micro-batches) before backward().")
    if median > 1.05:
        raise NotYet("The gradient points the right way but is too large: check what you divide each "
                     "micro-batch's loss by; it should be the number of micro-batches.")
    if median < 0.95 and min(ratio) > 0.05:
        raise NotYet("The gradient points the right way but is too small: scale each micro-batch's loss by "
                     "1 / (the number of micro-batches), not by the size of a micro-batch or of the batch.")
    raise NotYet("Not the whole batch's gradient. Run the batch in micro-batches of micro_batch_size windows, "
                 "add their gradients with backward() (do not zero them in between), each loss scaled so that "
                 "the sum is the mean over the whole batch.")


# -- 10.4 ------------------------------------------------------------------------------------------


@exercise("10.4", "Shard an epoch among processes", level=2, minutes=10)
def check_shard(shard) -> str:
    expect(callable(shard), f"Pass your function itself, not {type(shard).__name__}.")
    own_work(shard, ResumableSampler)
    for n, batch_size, world_size in [(48, 8, 2), (60, 12, 3), (64, 16, 4)]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
        given = list(order)
        shares = [run_answer(shard, given, batch_size, rank, world_size) for rank in range(world_size)]
        expect(given == order, "Your function changed the list it was given; build new lists instead.")
        expect(all(isinstance(s, list) and all(isinstance(i, int) for i in s) for s in shares),
               f"shard should return a list of ints (window indices); yours returned {describe(shares[0])}.")
        per_rank = batch_size // world_size
        expect(all(len(s) == n // world_size for s in shares),
               f"With {n} windows and {world_size} processes, each process should get {n} / {world_size} windows "
               f"per epoch; yours got {[len(s) for s in shares]}.")
        for step in range(n // batch_size):
            pieces = [s[step * per_rank:(step + 1) * per_rank] for s in shares]
            union = sorted(i for piece in pieces for i in piece)
            if union != sorted(order[step * batch_size:(step + 1) * batch_size]):
                raise NotYet(f"At step {step} (global batch size {batch_size}, {world_size} processes) the "
                             "processes' windows together are not the global batch one process would take at "
                             "that step: cut every global batch among the processes, not the whole epoch.")
            expect(len(set(union)) == len(union),
                   f"At step {step} two processes got the same window: the shares must be disjoint.")
    return ("For 2, 3 and 4 processes, every step's shares are disjoint, equal, and together exactly the global "
            "batch one process would take.")


# -- 10.5 ------------------------------------------------------------------------------------------

# torchrun --nproc_per_node 4 -m shared pretrain --batch-size 32 --micro-batch-size 4 --context 128
TOKENS_RUN = {"processes": 4, "batch_size": 32, "micro_batch_size": 4, "context": 128}


@exercise("10.5", "Predict the tokens of one step", level=1, minutes=5)
def check_tokens(prediction) -> str:
    expect(isinstance(prediction, tuple) and len(prediction) == 2
           and all(isinstance(v, int) and not isinstance(v, bool) for v in prediction),
           f"Give two whole numbers as a tuple, (tokens per optimizer step, forward passes per process per step); "
           f"got {prediction!r}.")
    tokens, passes = prediction
    r = TOKENS_RUN
    true_tokens = r["batch_size"] * r["context"]
    true_passes = r["batch_size"] // r["processes"] // r["micro_batch_size"]
    if tokens != true_tokens:
        if tokens == true_tokens * r["processes"]:
            raise NotYet("Too many tokens: --batch-size is the global batch, shared by all the processes, not the "
                         "batch of each process.")
        if tokens * r["processes"] == true_tokens:
            raise NotYet("Too few tokens: you counted the windows of one process; the step learns from the windows "
                         "of every process.")
        if tokens > true_tokens:
            raise NotYet("Too many tokens. What does one optimizer step learn from: which flag sets the number of "
                         "windows, and how long is a window?")
        raise NotYet("Too few tokens. A micro-batch splits a share for memory; the step still learns from every "
                     "window of the global batch, each as long as the context.")
    if passes != true_passes:
        raise NotYet(f"The tokens are right. The forward passes are {'too many' if passes > true_passes else 'too few'}"
                     ": first share the global batch among the processes, then cut each share into micro-batches.")
    return (f"{true_tokens:,} tokens per optimizer step, whatever the number of processes; each process runs "
            f"{true_passes} forward passes of {r['micro_batch_size']} windows per step.")

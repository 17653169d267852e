"""Data parallelism: sharded sampling, gradient accumulation, and the command-line trainer under
torchrun, which must give the losses of one process."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shared.cli.pretrain import main, parse_args
from shared.datasets import ResumableSampler, create_dataloader
from shared.model import GPTConfig, GPTModel
from shared.shapes import shape_checks_enabled
from shared.train import TrainConfig, train

pytestmark = pytest.mark.slow  # each test starts two or three Python processes

ROOT = Path(__file__).resolve().parent.parent

# -- the sampler --------------------------------------------------------------------------------


@given(n=st.integers(1, 200), per_rank=st.integers(1, 8), world_size=st.integers(1, 4), start=st.integers(0, 60))
def test_process_shards_are_disjoint_and_make_up_each_global_batch(n, per_rank, world_size, start):
    batch = per_rank * world_size
    alone = ResumableSampler(n, seed=3, batch_size=batch)
    shards = [ResumableSampler(n, seed=3, batch_size=batch, rank=r, world_size=world_size) for r in range(world_size)]
    for sampler in [alone, *shards]:
        sampler.set_position(2, min(start, n) // batch * batch)
    order = list(alone)
    assert len(order) % batch == 0  # whole global batches only
    drawn = [list(s) for s in shards]
    assert all(len(d) == len(order) // world_size for d in drawn)  # every process takes as many steps
    for g in range(len(order) // batch):  # global batch g is the union of the processes' slices
        pieces = [d[g * per_rank : (g + 1) * per_rank] for d in drawn]
        assert [i for piece in pieces for i in piece] == order[g * batch : (g + 1) * batch]


def test_a_batch_the_processes_cannot_share_is_refused():
    with pytest.raises(ValueError, match="cannot be shared equally among 2 processes"):
        create_dataloader(torch.arange(500), batch_size=7, context_length=8, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"micro_batch_size .* must divide"):
        create_dataloader(torch.arange(500), batch_size=8, context_length=8, micro_batch_size=3)


# -- gradient accumulation ------------------------------------------------------------------------

TINY = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=2, n_layers=2)
TOKENS = torch.randint(0, 50, (1_000,), generator=torch.Generator().manual_seed(0))


def test_accumulating_micro_batches_gives_the_losses_of_the_whole_batch():
    config = TrainConfig(max_steps=12, lr=3e-3, warmup_steps=2, eval_every=12, progress=False)
    runs = []
    for micro in (None, 2):  # 8 windows at once, or 4 micro-batches of 2 with accumulated gradients
        loader = create_dataloader(TOKENS, batch_size=8, context_length=16, stride=8, seed=1, micro_batch_size=micro)
        torch.manual_seed(0)
        runs.append(train(GPTModel(TINY), loader, None, config).step_losses)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=0)


# -- the command-line trainer, in one process and under torchrun -----------------------------------

SMALL_RUN = ["--setting", "cpu", "--vocab", "300", "--context", "32", "--emb", "32", "--heads", "2", "--layers", "2",
             "--dropout", "0", "--batch-size", "8", "--steps", "8", "--eval-every", "4", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """A small text file, and an environment whose data folder caches its tokenizer for every run."""
    folder = tmp_path_factory.mktemp("ddp")
    text = "".join(f"{w}{' ' if i % 9 else chr(10)}" for i, w in enumerate(
        ("now is the winter of our discontent made glorious summer by this sun of york " * 400).split()))
    (folder / "text.txt").write_text(text, encoding="utf-8")
    env = {**os.environ, "LLM_DATA_DIR": str(folder / "data"), "PYTHONWARNINGS": "ignore"}
    return folder / "text.txt", env


def run_trainer(corpus, out: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node <processes> -m shared pretrain ...``, or one process (in this one: faster)."""
    data, env = corpus
    args = ["--data", str(data), "--out", str(out), *SMALL_RUN, *extra]
    if processes == 1:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LLM_DATA_DIR", env["LLM_DATA_DIR"])
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                code = main(args)
        return subprocess.CompletedProcess(args, code, "", stderr.getvalue())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "shared", "pretrain"]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"},
                          cwd=ROOT, timeout=300)


def history(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def one_and_two(corpus, tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("runs")
    one = run_trainer(corpus, folder / "one")
    assert one.returncode == 0, one.stderr
    two = run_trainer(corpus, folder / "two", processes=2)
    assert two.returncode == 0, two.stderr
    return history(folder / "one"), history(folder / "two")


def test_two_processes_give_the_losses_of_one(one_and_two):
    one, two = one_and_two
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["step_losses"]) == len(two["step_losses"]) == 8
    assert shape_checks_enabled()  # the in-process run switched them off for training only
    torch.testing.assert_close(two["step_losses"], one["step_losses"], rtol=1e-5, atol=0)
    assert set(one) == set(two) and [set(e) for e in one["evals"]] == [set(e) for e in two["evals"]]
    torch.testing.assert_close([e["val_loss"] for e in two["evals"]], [e["val_loss"] for e in one["evals"]],
                               rtol=1e-5, atol=0)


def test_a_two_process_checkpoint_resumes_in_one_process(corpus, one_and_two, tmp_path):
    _, two = one_and_two
    paused = run_trainer(corpus, tmp_path / "run", "--stop-at-step", "4", processes=2)
    assert paused.returncode == 0, paused.stderr
    assert len(history(tmp_path / "run")["step_losses"]) == 4
    resumed = run_trainer(corpus, tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    torch.testing.assert_close(history(tmp_path / "run")["step_losses"], two["step_losses"], rtol=1e-5, atol=0)


def test_resuming_with_other_settings_is_refused(corpus, one_and_two, tmp_path):
    first = run_trainer(corpus, tmp_path / "run", "--stop-at-step", "2")
    assert first.returncode == 0, first.stderr
    other_lr = run_trainer(corpus, tmp_path / "run", "--resume", "--lr", "0.01")
    assert other_lr.returncode == 2
    assert "saved by a run with other settings: lr: checkpoint 0.005, this run 0.01" in other_lr.stderr
    other_model = run_trainer(corpus, tmp_path / "run", "--resume", "--layers", "3")
    assert other_model.returncode == 2 and "n_layers: checkpoint 2, this model 3" in other_model.stderr


def test_a_global_batch_the_processes_cannot_share_is_a_clear_error(corpus, tmp_path):
    bad = run_trainer(corpus, tmp_path / "run", "--batch-size", "7", processes=2)
    assert bad.returncode != 0
    assert "error: the global batch of 7 windows cannot be shared equally among 2 processes" in bad.stderr
    assert "shared/" not in bad.stderr  # no traceback from our code (torchrun adds its own summary)


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    parser_help = capsys.readouterr().out
    options = [a for a in vars(parse_args([])) if a != "help"]
    for name in options:
        assert f"--{name.replace('_', '-')}" in parser_help, name
    assert "torchrun --nproc_per_node" in parser_help and "history.json" in parser_help

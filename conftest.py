"""Test-run settings for everything pytest collects: the unit tests in tests/ and the notebooks.

It lives at the repository root, not in tests/, so that it also applies when pytest is given only
notebooks (``pytest notebooks/07_training.ipynb``).
"""

import os

# The stored outputs were written on a CPU: compare them with a CPU run on a Mac (MPS) or a GPU machine
# as well. Notebook kernels inherit the variable; set it yourself to run the suite on another device.
os.environ.setdefault("BUILD_A_GPT_DEVICE", "cpu")

# Under pytest-xdist (pyproject's addopts run one worker per core), every worker and every notebook
# kernel it starts uses one thread: two workers with two threads each on two cores spin-wait for
# each other and run several times slower than one worker alone. The stored outputs do not depend on
# the thread count (the notebooks print rounded numbers; OMP_NUM_THREADS=1 is part of what CI checks).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def _start_rank(item) -> int:
    """When a test's unit starts, earliest first (pytest-xdist hands units out in collection order).

    The longest units start first, so that two workers finish together: chapters 7 and 8 (one unit:
    chapter 8 reads chapter 7's checkpoint) on one worker, the GPU setting's smoke runs on the other
    (they use the smoke setting's own checkpoint), then chapter 9, then chapters 11 and 12. Chapter 9
    (its capstone, near its end), 11 and 12 read chapter 7's checkpoint: by the time a worker reaches
    them, chapter 7 has written it. (``shared.base.load_base`` would wait for an unfinished one, or
    train a missing one. With chapter 9 started first, its capstone waited about 12 s, a worker idle,
    for chapter 7's run to end.) Then the other slow tests, the other notebooks, and the unit tests.
    """
    path = item.nodeid.split("::", 1)[0]
    for rank, prefix in enumerate(("notebooks/07_", "notebooks/08_")):
        if path.startswith(prefix):
            return rank
    if "test_the_gpu_setting_runs_top_to_bottom" in item.nodeid:
        return 2
    if path.startswith("notebooks/09_"):
        return 3
    if path.startswith(("notebooks/11_", "notebooks/12_")):
        return 4
    if item.get_closest_marker("slow") is not None:
        return 5
    return 6 if path.endswith(".ipynb") else 7


def pytest_collection_modifyitems(config, items):
    """Order the tests by :func:`_start_rank` (a stable sort: a notebook's cells keep their order)."""
    items.sort(key=_start_rank)


# Test files whose tests share a slow module-scoped fixture: split over two workers, each would build it.
ONE_WORKER_FILES = {
    "tests/test_distributed.py",  # runs the trainer in one and in two processes
    "tests/test_generate.py",  # builds a Hugging Face model
    "tests/test_tokenizer.py",  # loads GPT-2's merges and trains a BPE
}


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist, keep each notebook's cells together, in order, on one worker.

    nbval runs a notebook's cells one after another in a single kernel, so they must not be spread
    over workers (``--dist load``). Chapter 8 loads the checkpoint chapter 7 writes, so those two
    chapters form one unit, with chapter 7 first: from a fresh clone, chapter 8 would otherwise
    train a stand-in and its outputs would not match the stored ones. The GPU setting's smoke runs form
    one unit too: they share one kernel (tests/test_notebooks.py). Every other test is a unit of its
    own, except in ONE_WORKER_FILES, whose module-scoped fixtures are too slow to build twice.
    (``--dist loadgroup`` would say this with marks, but it loses its groups on pytest >= 9.2.)
    """
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # start the units in collection order (_start_rank), not by size

    class NotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path in ONE_WORKER_FILES:
                return path
            if "test_the_gpu_setting_runs_top_to_bottom_on_the_cpu" in nodeid:
                return "GPU smoke runs"  # one kernel for all of them (tests/test_notebooks.py), in order
            if not path.endswith(".ipynb"):
                return nodeid
            if path.startswith(("notebooks/07_", "notebooks/08_")):
                return "notebooks 7 and 8"
            return path

    return NotebookScheduling(config, log)


# --- Where the suite's time goes: a table at the end of every run of more than a few tests ----------
# DEVELOPERS.md gives `.ci/run` (install included) 10 minutes on 2 cores; this shows what to cut first.
_SECONDS_BY_UNIT: dict[str, float] = {}
_SHOWN_UNITS = 12


def _time_unit(nodeid: str) -> str:
    """What a test's time is charged to: its notebook or test file; each GPU smoke run on its own."""
    path = nodeid.split("::", 1)[0]
    if "test_the_gpu_setting_runs_top_to_bottom" in nodeid:
        return f"{path}: GPU smoke run [{nodeid.rsplit('[', 1)[-1].rstrip(']')}]"
    return path


def pytest_runtest_logreport(report):
    """Add up each test's setup, call and teardown (under pytest-xdist: on the controller, from every worker)."""
    unit = _time_unit(report.nodeid)
    _SECONDS_BY_UNIT[unit] = _SECONDS_BY_UNIT.get(unit, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if len(_SECONDS_BY_UNIT) < 2 * _SHOWN_UNITS:  # a run of a few files: nothing to plan
        return
    total = sum(_SECONDS_BY_UNIT.values())
    terminalreporter.write_sep("-", "where the test time goes (seconds summed over workers)")
    for unit, seconds in sorted(_SECONDS_BY_UNIT.items(), key=lambda item: -item[1])[:_SHOWN_UNITS]:
        terminalreporter.write_line(f"{seconds:8.1f} s {seconds / total:6.1%}  {unit}")
    rest, others = total - sum(sorted(_SECONDS_BY_UNIT.values())[-_SHOWN_UNITS:]), len(_SECONDS_BY_UNIT) - _SHOWN_UNITS
    terminalreporter.write_line(f"{rest:8.1f} s {rest / total:6.1%}  the other {others} files")
    terminalreporter.write_line(f"{total:8.1f} s in all")

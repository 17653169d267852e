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
    chapter 8 reads chapter 7's checkpoint), chapter 9, the GPU setting's smoke runs; then chapters 11
    and 12, which start from chapter 7's checkpoint: by the time a worker reaches them, chapter 7 has
    written it (``shared.base.load_base`` would wait for an unfinished one, or train a missing one);
    then the other slow tests, the other notebooks, and the unit tests.
    """
    path = item.nodeid.split("::", 1)[0]
    for rank, prefix in enumerate(("notebooks/07_", "notebooks/08_", "notebooks/09_")):
        if path.startswith(prefix):
            return rank
    if "test_the_gpu_setting_runs_top_to_bottom" in item.nodeid:
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
    train a stand-in and its outputs would not match the stored ones. Every other test is a unit of
    its own, except in ONE_WORKER_FILES, whose module-scoped fixtures are too slow to build twice.
    (``--dist loadgroup`` would say this with marks, but it loses its groups on pytest >= 9.2.)
    """
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # start the units in collection order (_start_rank), not by size

    class NotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path in ONE_WORKER_FILES:
                return path
            if not path.endswith(".ipynb"):
                return nodeid
            if path.startswith(("notebooks/07_", "notebooks/08_")):
                return "notebooks 7 and 8"
            return path

    return NotebookScheduling(config, log)

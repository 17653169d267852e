"""Checks on the committed notebooks that nbval itself cannot make.

nbval compares stored outputs with fresh ones, but it silently accepts a notebook that was never
executed (no outputs to compare) and does not care in which order cells were run.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
ALL_NOTEBOOKS = NOTEBOOKS + SOLUTIONS
CHAPTERS = [
    "01_tokenization",
    "02_embeddings",
    "03_self_attention",
    "04_causal_attention",
    "05_multi_head_attention",
    "06_gpt_model",
    "07_training",
    "08_generation",
    "09_llama",
    "10_scaling_out",
    "11_finetuning",
    "12_instruction_tuning",
]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def repository_url() -> str:
    """The course repository's URL: pyproject.toml's [project.urls].Repository, its one home."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def setup_cell(path: Path) -> str:
    """The source of a notebook's first code cell: the setup cell that also runs on Colab."""
    return "".join(code_cells(load(path))[0]["source"])


def test_every_notebook_is_a_known_chapter():
    names = [p.stem for p in NOTEBOOKS]
    assert names, "no notebooks found"
    assert set(names) <= set(CHAPTERS), f"unexpected notebooks: {set(names) - set(CHAPTERS)}"
    solutions = {p.stem for p in SOLUTIONS}
    assert solutions <= set(CHAPTERS), f"solutions for no chapter: {solutions - set(CHAPTERS)}"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_notebook_was_executed_top_to_bottom_without_stored_errors(path):
    cells = code_cells(load(path))
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cell(s) never executed"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)}; re-run it top to bottom from a fresh kernel"
    )
    for c in cells:
        for out in c.get("outputs", []):
            if out["output_type"] == "error":
                assert "NBVAL_RAISES_EXCEPTION" in "".join(c["source"]), (
                    f"{path.name} cell {c['execution_count']} stored an error ({out['ename']}) "
                    "but is not marked # NBVAL_RAISES_EXCEPTION"
                )


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_outputs_are_reproducible_text(path):
    for c in code_cells(load(path)):
        for out in c.get("outputs", []):
            data = out.get("data", {})
            assert "image/svg+xml" not in data, f"{path.name}: SVG output embeds a date; use PNG"
            plain = "".join(data.get("text/plain", []))
            assert "matplotlib.lines.Line2D" not in plain and " at 0x" not in plain, (
                f"{path.name} cell {c['execution_count']}: an object repr with an address; "
                "end plot cells with plt.show()"
            )
            if out["output_type"] == "stream" and out["name"] == "stderr":
                text = "".join(out["text"])
                assert "Warning" not in text or "NBVAL_IGNORE_OUTPUT" in "".join(c["source"]), (
                    f"{path.name} cell {c['execution_count']}: a stored warning: {text[:200]}"
                )


def test_every_notebook_opens_with_the_same_setup_cell_and_the_repository_url():
    url = repository_url()
    first_cells = {str(p): setup_cell(p) for p in ALL_NOTEBOOKS}
    reference = first_cells[str(NOTEBOOKS[0])]
    assert f'REPO_URL = "{url}"' in reference
    assert "setup_notebook(" in reference and "google.colab" in reference
    for name, source in first_cells.items():
        assert source == reference, f"{name}: its setup cell differs from {NOTEBOOKS[0].name}'s"


def test_readme_lists_every_chapter_with_a_colab_badge():
    readme = (ROOT / "README.md").read_text()
    repo = re.sub(r"^https://github.com/", "", repository_url())
    for path in NOTEBOOKS:
        badge = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}"
        assert badge in readme, f"README has no Open-in-Colab link for {path.name}"


SWITCHED = [p for p in NOTEBOOKS if "pick_setting(" in p.read_text(encoding="utf-8")]


@pytest.fixture(scope="module")
def smoke_kernel():
    """One kernel, started with the GPU setting at smoke scale, for every smoke run below.

    Each run starts by clearing the kernel's namespace (``%reset -f``), so every notebook must define and import
    everything it uses, as in a fresh kernel; what survives is what a fresh kernel would only rebuild: imported
    modules (torch, matplotlib, transformers, torch._dynamo: 5 s or more per notebook) and caches of read data.
    conftest.py keeps these tests on one worker, in order (chapter 8's smoke run reads chapter 7's checkpoint).
    """
    import os

    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    env = {**os.environ, "BUILD_A_GPT_SETTING": "gpu", "BUILD_A_GPT_SMOKE": "1"}
    manager.start_kernel(cwd=str(ROOT / "notebooks"), env=env)
    yield manager
    manager.shutdown_kernel(now=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: p.stem)
def test_the_gpu_setting_runs_top_to_bottom_on_the_cpu(path, smoke_kernel):
    """The GPU path, at smoke scale: every cell must run (outputs are not compared)."""
    import nbformat
    from nbclient import NotebookClient

    assert SWITCHED, "no notebook has a setting switch"
    if not smoke_kernel.is_alive():  # a previous notebook killed it
        smoke_kernel.restart_kernel(now=True)
    nb = nbformat.read(path, as_version=4)
    # A clean namespace first (the kernel ran other notebooks before), then the notebook as it is.
    # (Figures closed first: the reset, last, leaves not even the name matplotlib behind.)
    nb.cells.insert(0, nbformat.v4.new_code_cell('import matplotlib.pyplot\nmatplotlib.pyplot.close("all")\n'
                                                 'get_ipython().run_line_magic("reset", "-f")'))
    NotebookClient(nb, km=smoke_kernel, timeout=600, allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert not nb.cells[0].outputs, f"clearing the shared kernel failed: {nb.cells[0].outputs}"
    del nb.cells[0]
    assert "gpu setting (smoke test)" in "".join(
        "".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    ).lower(), f"{path.name} did not choose the GPU setting"
    errors = [
        f"cell {i}: {o.ename}: {o.evalue[:300]}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "NBVAL_RAISES_EXCEPTION" not in c.source
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors, f"{path.name} fails with the GPU setting:\n" + "\n".join(errors)

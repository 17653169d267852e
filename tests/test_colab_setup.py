"""The course repository's URL lives in one place, and the setup cell's Colab branch works.

pyproject.toml's ``[project.urls].Repository`` is that place. tests/test_notebooks.py already checks
that every notebook opens with the same setup cell, that it contains the ``REPO_URL`` line, and that
README.md has an Open-in-Colab badge for every chapter; the tests here check what it does not: the URL
is a GitHub repository, the setup cell names it once and clones exactly it, every Colab link in the
README opens an existing notebook of that repository, and the cell's Colab branch really clones,
installs and imports the course (in a throwaway virtual environment, offline), does neither again
when run again, and installs again after an install that was cut short.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_notebooks import ALL_NOTEBOOKS, NOTEBOOKS, ROOT, repository_url, setup_cell

GITHUB_REPOSITORY = re.compile(r"https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)")
COLAB_LINK = re.compile(r"https?://colab\.research\.google\.com/[^\s()<>\[\]\"']+")
COLAB_NOTEBOOK = re.compile(
    r"https://colab\.research\.google\.com/github/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)"
    r"/blob/(?P<branch>[\w.-]+)/(?P<path>[\w./-]+\.ipynb)"
)


def github_repository() -> str:
    """OWNER/REPO of the course repository."""
    match = GITHUB_REPOSITORY.fullmatch(repository_url())
    assert match, f"[project.urls].Repository = {repository_url()!r} is not https://github.com/OWNER/REPO"
    return f"{match['owner']}/{match['repo']}"


def test_the_repository_url_is_a_github_repository():
    """Colab's badges and the setup cell's clone both need https://github.com/OWNER/REPO, no more."""
    assert not github_repository().endswith(".git"), "drop the .git: the Colab badges are built from OWNER/REPO"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_the_setup_cell_names_the_repository_once_and_clones_it(path):
    tree = ast.parse(setup_cell(path))
    assignments = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "REPO_URL" for t in node.targets)
    ]
    assert len(assignments) == 1, f"{path.name}: REPO_URL is assigned {len(assignments)} times in the setup cell"
    (assignment,) = assignments
    assert assignment in tree.body, f"{path.name}: REPO_URL is assigned inside a block; assign it at the top"
    assert isinstance(assignment.value, ast.Constant) and assignment.value.value == repository_url(), (
        f"{path.name}: REPO_URL is {ast.unparse(assignment.value)}, pyproject.toml says {repository_url()!r}"
    )
    other_urls = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node is not assignment.value
        if "://" in node.value or "github." in node.value
    ]
    assert not other_urls, f"{path.name}: a URL outside REPO_URL: {other_urls}"
    clones = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.List)
        and any(isinstance(e, ast.Constant) and e.value == "clone" for e in node.elts)
        and any(isinstance(e, ast.Name) and e.id == "REPO_URL" for e in node.elts)
    ]
    assert clones, f"{path.name}: the setup cell's git clone does not clone REPO_URL"


def test_every_colab_link_in_the_readme_opens_a_notebook_of_this_repository():
    """The other direction of test_notebooks' badge check (a badge for every chapter): every Colab link
    opens a notebook that exists, in pyproject's repository, all on one branch."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [link for link in COLAB_LINK.findall(readme) if not link.startswith("https://colab.research.google.com/assets/")]
    assert links, "README.md has no Open-in-Colab links"
    branches = set()
    for link in links:
        match = COLAB_NOTEBOOK.fullmatch(link)
        assert match, f"README.md: a Colab link that opens no notebook on GitHub: {link}"
        assert f"{match['owner']}/{match['repo']}" == github_repository(), (
            f"README.md: {link} opens {match['owner']}/{match['repo']}, pyproject.toml says {github_repository()}"
        )
        target = ROOT / match["path"]
        assert match["path"].startswith("notebooks/") and target.is_file(), f"README.md: {link} opens no notebook"
        branches.add(match["branch"])
    assert len(branches) == 1, f"README.md: Colab links open different branches: {sorted(branches)}"


# --- The Colab branch, run for real -------------------------------------------------------------------

# Runs in the child process: google.colab is imported (as Colab's kernel has done), every
# subprocess.run is written to a log, then the setup cell runs as a notebook cell would.
RUNNER = """\
import json, os, subprocess, sys

import google.colab  # the stand-in, found on PYTHONPATH

_run = subprocess.run


def recording_run(args, *more, **options):
    with open(os.environ["SETUP_CELL_COMMANDS"], "a") as log:
        log.write(json.dumps([str(a) for a in args]) + "\\n")
    return _run(args, *more, **options)


subprocess.run = recording_run
with open(sys.argv[1]) as f:
    source = f.read()
namespace = {"__name__": "__main__"}
exec(compile(source, "setup-cell", "exec"), namespace)

import shared

print("shared:", shared.__file__)
print("DEVICE:", namespace["DEVICE"])
"""

# Never seen by the child: the project's own installation (its metadata and editable finder) and
# every .pth file. What is left are the course's dependencies, read-only.
HIDDEN = re.compile(r"(build_a_gpt.*|__editable__.*|shared|__pycache__|.*\.pth)")
NO_NETWORK = "http://127.0.0.1:9"  # a closed port: any download would fail at once


def git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def stdout_of(command: list[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd="/").stdout.strip()


def dependencies_view(folder: Path) -> Path:
    """A folder of links to the running environment's packages, minus the project itself (HIDDEN)."""
    folder.mkdir()
    for site in dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")):
        for entry in site.iterdir():
            if not HIDDEN.fullmatch(entry.name) and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def offline_environment(venv: Path, stand_in: Path, commands: Path) -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CONDA")) and k.lower() not in proxies
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        PYTHONPATH=str(stand_in),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",  # the linked packages are the project venv's: write nothing there
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        # pip reads a variable for a --no-X flag as the value of X: "0" turns build isolation off, so
        # the editable build uses the setuptools it sees instead of downloading one.
        PIP_NO_BUILD_ISOLATION="0",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        SETUP_CELL_COMMANDS=str(commands),
        **{name: NO_NETWORK for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
    )
    return env


@pytest.mark.slow
def test_the_setup_cells_colab_branch_clones_installs_and_imports_the_course_once(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the course")
    project_site = Path(sysconfig.get_paths()["purelib"])
    project_site_before = sorted(p.name for p in project_site.iterdir())

    # The course repository, as GitHub would serve it: a clone of this one's HEAD, reached by a
    # file:// URL (so that the cell's --depth 1 makes a shallow clone, as from GitHub).
    origin = tmp_path / "origin"
    git("clone", "-q", str(ROOT), str(origin), cwd=tmp_path)
    origin_url = origin.as_uri()

    source = setup_cell(NOTEBOOKS[0])
    url_line = f'REPO_URL = "{repository_url()}"'
    assert source.count(url_line) == 1, f"the setup cell has no line {url_line}"
    cell = tmp_path / "setup_cell.py"
    cell.write_text(source.replace(url_line, f"REPO_URL = {origin_url!r}"))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)

    stand_in = tmp_path / "stand-in"
    (stand_in / "google" / "colab").mkdir(parents=True)  # google stays a namespace package
    (stand_in / "google" / "colab" / "__init__.py").write_text('"""Stands in for Colab\'s google.colab."""\n')

    # A throwaway environment: its own site-packages (where the cell's pip installs), and through a
    # .pth file the course's dependencies, pip and setuptools, without the project itself.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(stdout_of([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]))
    assert venv_site.is_relative_to(venv)
    (venv_site / "course-dependencies.pth").write_text(f"{dependencies_view(tmp_path / 'dependencies')}\n")

    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    commands = tmp_path / "commands.jsonl"
    env = offline_environment(venv, stand_in, commands)

    def run_cell() -> list[str]:
        done = subprocess.run(
            [str(python), str(runner), str(cell)], cwd=content, env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"the setup cell failed:\n{done.stdout}\n{done.stderr}"
        lines = done.stdout.splitlines()
        assert any(re.fullmatch(r"device: \w+ \| shape checks: .+ \| seed: 123", line) for line in lines), done.stdout
        (shared_file,) = [line.removeprefix("shared: ") for line in lines if line.startswith("shared: ")]
        assert Path(shared_file).resolve().is_relative_to(checkout.resolve()), f"shared came from {shared_file}"
        return lines

    checkout = content / "build-a-gpt"
    run_cell()

    # It cloned the repository (shallow) and installed it with the kernel's own Python.
    logged = [json.loads(line) for line in commands.read_text().splitlines()]
    assert logged == [
        ["git", "clone", "-q", "--depth", "1", origin_url, "build-a-gpt"],
        [str(python), "-m", "pip", "install", "-q", "-e", "build-a-gpt"],
    ]
    assert git("rev-parse", "--show-toplevel", cwd=checkout) == str(checkout.resolve())
    assert git("remote", "get-url", "origin", cwd=checkout) == origin_url
    assert git("rev-parse", "HEAD", cwd=checkout) == git("rev-parse", "HEAD", cwd=origin)
    assert git("rev-parse", "--is-shallow-repository", cwd=checkout) == "true"

    # The throwaway environment holds build-a-gpt, editable, at the checkout; a new process finds it.
    (dist_info,) = venv_site.glob("build_a_gpt-*.dist-info")
    direct_url = json.loads((dist_info / "direct_url.json").read_text())
    assert direct_url == {"url": checkout.as_uri(), "dir_info": {"editable": True}}
    origin_of_shared = stdout_of(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('shared').origin)"], env=env
    )
    assert Path(origin_of_shared).resolve().is_relative_to(checkout.resolve()), origin_of_shared

    # Run again in the same folder, as after a kernel restart: no clone, no install, same checkout.
    marker = checkout / "MARKER"
    marker.write_text("first run\n")
    head, reflog = git("rev-parse", "HEAD", cwd=checkout), git("reflog", cwd=checkout)
    installed = (dist_info / "RECORD").stat().st_mtime_ns
    run_cell()
    assert len(commands.read_text().splitlines()) == len(logged), "the second run ran commands again"
    assert marker.read_text() == "first run\n"
    assert (git("rev-parse", "HEAD", cwd=checkout), git("reflog", cwd=checkout)) == (head, reflog)
    assert (dist_info / "RECORD").stat().st_mtime_ns == installed

    # An install cut short (the runtime stopped during pip, after the clone): pip writes the project's
    # metadata last, so there is none. The next run installs again, and does not clone again.
    shutil.rmtree(dist_info)
    run_cell()
    assert [json.loads(line) for line in commands.read_text().splitlines()] == [*logged, logged[1]]
    assert marker.read_text() == "first run\n"
    assert (git("rev-parse", "HEAD", cwd=checkout), git("reflog", cwd=checkout)) == (head, reflog)
    assert len(list(venv_site.glob("build_a_gpt-*.dist-info"))) == 1, "the second install left no metadata"

    assert sorted(p.name for p in project_site.iterdir()) == project_site_before, "the project's venv changed"


"""The project's promises about itself: requirements, README's API list, data folder."""

import importlib
import re
import subprocess
import tomllib
from pathlib import Path

import shared

ROOT = Path(__file__).resolve().parent.parent


def _bounds(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)", line):
            found[m.group(1).lower()] = m.group(2)
    return found


def test_requirements_and_pyproject_agree_on_lower_bounds():
    req = _bounds((ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _bounds(project["dependencies"] + project["optional-dependencies"]["dev"])
    assert req, "requirements.txt lists no packages"
    for name, bound in req.items():
        assert declared.get(name) == bound, f"{name}: requirements.txt says >={bound}, pyproject {declared.get(name)}"
    assert "-e .[dev]" in (ROOT / "requirements.txt").read_text()
    for needed in [
        "torch",
        "tiktoken",
        "einops",
        "matplotlib",
        "jupyterlab",
        "nbval",
        "gensim",
        "jaxtyping",
        "beartype",
        "tqdm",
        "pooch",
        "pytest",
        "hypothesis",
        "transformers",
        "ruff",
    ]:
        assert needed in req, f"requirements.txt lacks {needed}"


def test_readme_documents_every_public_name():
    readme = (ROOT / "README.md").read_text()
    for module_name in shared.__all__:
        module = importlib.import_module(f"shared.{module_name}")
        section = readme.split(f"### `shared.{module_name}`")
        assert len(section) == 2, f"README has no section for shared.{module_name}"
        body = section[1].split("\n### ")[0]
        for name in module.__all__:
            assert f"`{name}" in body or f" `{name}`" in body, f"README does not list shared.{module_name}.{name}"


def test_data_folder_tracks_only_readme_and_checksums():
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert set(tracked) <= {"data/README.md", "data/SHA256SUMS", "data/.gitignore"}, tracked

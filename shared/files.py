"""Downloaded files: the public text and vocabulary files the course uses, fetched and verified.

Files are fetched from their canonical URLs into the project's ``data/`` folder the first time
they are needed, verified against a sha256, and reused after that. Set ``LLM_DATA_MIRROR`` to a
directory holding the same files (same relative paths) to copy from there instead of the network.
Set ``LLM_DATA_DIR`` to keep the files somewhere other than ``data/``.
"""

import hashlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FILES",
    "ChecksumMismatchError",
    "DataFile",
    "DataUnavailableError",
    "data_dir",
    "fetch",
    "gpt2_bpe_files",
]



@dataclass(frozen=True)
class DataFile:
    """A public file the course downloads: where it lives in ``data/``, where it comes from."""

    path: str
    url: str
    sha256: str


# The same sums are in data/SHA256SUMS (for `sha256sum -c`); a test keeps the two equal.
FILES: dict[str, DataFile] = {
    f.path: f
    for f in [
        DataFile(
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        DataFile(
            "gpt2/encoder.json",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
        DataFile(
            "gpt2/vocab.bpe",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
    ]
}


class DataUnavailableError(RuntimeError):
    """A data file could not be fetched (no network and no mirror, or a missing mirror file)."""


class ChecksumMismatchError(DataUnavailableError):
    """A fetched file's sha256 is not the expected one; the bad copy was not kept."""


def data_dir() -> Path:
    """The folder downloaded files go to: ``$LLM_DATA_DIR``, else the checkout's ``data/``."""
    if env := os.environ.get("LLM_DATA_DIR"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.home() / ".cache" / "build-a-gpt"  # installed without a checkout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ways_out(file: DataFile, target: Path) -> str:
    return (
        "Two ways out: (1) connect to the internet and call this again; or (2) set the "
        "environment variable LLM_DATA_MIRROR to a folder that holds "
        f"'{file.path}' (for example the team's ../shared/data), or download {file.url} "
        f"yourself and save it as {target}."
    )


def fetch(path: str) -> Path:
    """Return the local path of one of :data:`FILES`, fetching and verifying it if needed."""
    if path not in FILES:
        raise KeyError(f"unknown data file {path!r}; known files: {sorted(FILES)}")
    file = FILES[path]
    target = data_dir() / file.path
    if target.exists() and _sha256(target) == file.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    mirror = os.environ.get("LLM_DATA_MIRROR")
    if mirror:
        source = Path(mirror).expanduser() / file.path
        if not source.is_file():
            raise DataUnavailableError(
                f"LLM_DATA_MIRROR is set to {mirror!r} but it has no file '{file.path}' "
                f"(looked for {source}). Canonical source: {file.url}. " + _ways_out(file, target)
            )
        _copy_verified(source, target, file)
        return target

    with warnings.catch_warnings():  # pooch imports tqdm.auto, which warns without ipywidgets
        warnings.simplefilter("ignore")
        import pooch  # only needed for a real download

    try:
        pooch.get_logger().setLevel("WARNING")
        # pooch downloads to a temporary file and moves it into place only once the hash matches.
        pooch.retrieve(
            file.url,
            known_hash=f"sha256:{file.sha256}",
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
    except ValueError as e:  # pooch's hash mismatch
        raise ChecksumMismatchError(
            f"'{file.path}' downloaded from {file.url} does not have the expected sha256 "
            f"{file.sha256}; the download was discarded. ({e}) " + _ways_out(file, target)
        ) from e
    except Exception as e:  # no network, DNS failure, HTTP error ...
        raise DataUnavailableError(
            f"could not download '{file.path}' from {file.url}: {type(e).__name__}: {e}. " + _ways_out(file, target)
        ) from e
    return target


def _copy_verified(source: Path, target: Path, file: DataFile) -> None:
    # Copy to a temporary name beside the target, verify, then rename: never a partial file.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        actual = _sha256(tmp)
        if actual != file.sha256:
            raise ChecksumMismatchError(
                f"'{file.path}' copied from the mirror {source} has sha256 {actual}, expected "
                f"{file.sha256} (the file at {file.url}); the copy was discarded. " + _ways_out(file, target)
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Local paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` (its BPE vocabulary and merges)."""
    return fetch("gpt2/encoder.json"), fetch("gpt2/vocab.bpe")

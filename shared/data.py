"""Data: the downloaded text and vocabulary files, and next-token datasets over token ids.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "FILES",
    "ChecksumMismatchError",
    "DataFile",
    "DataUnavailableError",
    "NextTokenDataset",
    "ResumableSampler",
    "create_dataloader",
    "data_dir",
    "fetch",
    "gpt2_bpe_files",
    "tiny_shakespeare",
    "train_val_split",
]

# ---------------------------------------------------------------------------------------------
# Downloaded files
# ---------------------------------------------------------------------------------------------


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


def tiny_shakespeare() -> str:
    """The Tiny Shakespeare corpus (1,115,394 characters) as one string."""
    return fetch("tinyshakespeare.txt").read_text(encoding="utf-8")


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Local paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` (its BPE vocabulary and merges)."""
    return fetch("gpt2/encoder.json"), fetch("gpt2/vocab.bpe")


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split a text by characters: the first part to train on, the last ``val_fraction`` to validate."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


# ---------------------------------------------------------------------------------------------
# Next-token datasets
# ---------------------------------------------------------------------------------------------


class NextTokenDataset(Dataset):
    """Sliding windows over one token sequence: each item is (inputs, targets = inputs shifted by 1).

    The windows are views into the one token tensor (``Tensor.unfold``), so building the dataset
    copies nothing and its memory does not grow with ``context_length / stride``.
    """

    def __init__(
        self,
        token_ids: Int[Tensor, " n_tokens"] | Sequence[int],
        context_length: int,
        stride: int | None = None,
        max_context_length: int | None = None,
    ):
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        stride = context_length if stride is None else stride
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        if stride <= 0:
            raise ValueError(f"stride must be a positive number of tokens, got {stride}")
        if max_context_length is not None and context_length > max_context_length:
            raise ValueError(
                f"context_length {context_length} is longer than the model's context of "
                f"{max_context_length} tokens; use context_length <= {max_context_length}"
            )
        if ids.ndim != 1:
            raise ValueError(f"token_ids must be one flat sequence, got shape {tuple(ids.shape)}")
        if len(ids) < context_length + 1:
            raise ValueError(
                f"the text is too short for one window: {len(ids)} tokens, but a window needs "
                f"context_length + 1 = {context_length + 1} (inputs plus the shifted target). "
                "Use more text or a smaller context_length."
            )
        self.token_ids = ids
        self.context_length = context_length
        self.stride = stride
        windows = ids.unfold(0, context_length + 1, stride)  # a view: (n_windows, context + 1)
        self.inputs: Int[Tensor, "n_windows seq"] = windows[:, :-1]
        self.targets: Int[Tensor, "n_windows seq"] = windows[:, 1:]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i: int) -> tuple[Int[Tensor, " seq"], Int[Tensor, " seq"]]:
        return self.inputs[i], self.targets[i]


class ResumableSampler(Sampler[int]):
    """Indices in a seeded order that depends only on (seed, epoch), so a run can resume mid-epoch.

    ``set_position(epoch, start)`` makes the next iteration yield epoch ``epoch``'s order from
    index ``start`` on; the training loop uses it to continue exactly where a checkpoint stopped.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[int]:
        yield from self.order(self.epoch)[self.start :].tolist()

    def __len__(self) -> int:
        return self.n - self.start


def create_dataloader(
    token_ids: Int[Tensor, " n_tokens"] | Sequence[int],
    *,
    batch_size: int,
    context_length: int,
    stride: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    max_context_length: int | None = None,
) -> DataLoader:
    """A DataLoader of (inputs, targets) batches, each of shape (batch_size, context_length).

    ``stride`` defaults to ``context_length`` (windows that do not overlap). The shuffle order
    depends only on ``seed`` and the epoch (see :class:`ResumableSampler`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = NextTokenDataset(token_ids, context_length, stride, max_context_length)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"the text is too short for one batch: it gives {len(dataset)} windows of "
            f"{context_length} tokens (stride {dataset.stride}) but batch_size is {batch_size}. "
            "Lower batch_size, context_length or stride, use more text, or pass drop_last=False."
        )
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed)
    # Its own generator, so iterating never consumes the global RNG (which dropout uses).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, generator=generator)

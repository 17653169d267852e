"""The corpus: Tiny Shakespeare (or any UTF-8 text file), and BPE tokenizers trained on it, cached.

The tokenizer module knows nothing about any particular text; this module ties a text to the
tokenizer trained on its training split, so that validation scores stay honest (the validation
part is never seen by the tokenizer).
"""

import hashlib
import json
from pathlib import Path

from shared.datasets import train_val_split
from shared.files import data_dir, fetch
from shared.tokenizer import BPETokenizer

__all__ = ["read_text_file", "shakespeare_bpe", "text_bpe", "tiny_shakespeare"]


def tiny_shakespeare() -> str:
    """The Tiny Shakespeare corpus (1,115,394 characters) as one string."""
    return fetch("tinyshakespeare.txt").read_text(encoding="utf-8")


def read_text_file(path: str | Path) -> str:
    """A training text from a file, with errors that say what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path}: give the path of a UTF-8 text file to train on")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}). Convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`."
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty: there is nothing to train on")
    return text


def text_bpe(train_text: str, vocab_size: int = 1024) -> BPETokenizer:
    """A BPE tokenizer trained on ``train_text``, cached in ``data/`` under a hash of the text.

    Training takes about a second per megabyte; the result is saved the first time and loaded
    after that. Pass only the *training* part of a text, so validation scores stay honest.
    """
    text_hash = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:16]
    path = data_dir() / f"bpe_{vocab_size}_{text_hash}.json"
    if path.exists():
        try:
            return BPETokenizer.load(path)
        except (ValueError, KeyError, json.JSONDecodeError):
            path.unlink()  # a damaged cache: train again
    tokenizer = BPETokenizer.train(train_text, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tokenizer.save(tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written tokenizer
    return tokenizer


def shakespeare_bpe(vocab_size: int = 1024) -> BPETokenizer:
    """Chapter 1's BPE: trained on the *training* 90% of Tiny Shakespeare (see :func:`text_bpe`)."""
    train_text, _ = train_val_split(tiny_shakespeare())
    return text_bpe(train_text, vocab_size)

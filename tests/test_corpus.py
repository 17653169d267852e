import pytest

from shared.corpus import read_text_file, shakespeare_bpe, text_bpe, tiny_shakespeare
from shared.datasets import train_val_split
from shared.tokenizer import BPETokenizer


def test_shakespeare_bpe_trains_once_on_the_training_split_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path))  # an empty data dir: text comes from the mirror
    first = shakespeare_bpe(300)
    assert first.vocab_size == 300 and len(list(tmp_path.glob("bpe_300_*.json"))) == 1
    train_text, _ = train_val_split(tiny_shakespeare())
    assert first.merges == BPETokenizer.train(train_text, 300).merges

    def no_training(*args, **kwargs):
        raise AssertionError("shakespeare_bpe trained again instead of loading its cached copy")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    assert shakespeare_bpe(300).merges == first.merges


def test_text_bpe_caches_per_text_and_retrains_over_a_damaged_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path))
    a = text_bpe("to be or not to be, that is the question " * 50, 270)
    b = text_bpe("all the world's a stage, and all the men and women merely players " * 50, 270)
    assert a.merges != b.merges and len(list(tmp_path.glob("bpe_270_*.json"))) == 2
    for path in tmp_path.glob("bpe_270_*.json"):
        path.write_text("{ not json")
    again = text_bpe("to be or not to be, that is the question " * 50, 270)
    assert again.merges == a.merges


def test_read_text_file_explains_what_is_wrong(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Now is the winter of our discontent", encoding="utf-8")
    assert read_text_file(good).startswith("Now is")
    with pytest.raises(FileNotFoundError, match="no text file at"):
        read_text_file(tmp_path / "missing.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text .*iconv"):
        read_text_file(latin)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        read_text_file(empty)

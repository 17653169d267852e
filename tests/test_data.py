import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

import shared.files as data
from shared.corpus import tiny_shakespeare
from shared.datasets import train_val_split
from shared.files import ChecksumMismatchError, DataFile, DataUnavailableError, fetch

REPO = Path(__file__).resolve().parent.parent


def test_checksums_file_lists_the_same_sums_as_the_code():
    lines = (REPO / "data" / "SHA256SUMS").read_text().split("\n")
    listed = dict(reversed(line.split()) for line in lines if line.strip())
    assert listed == {path: f.sha256 for path, f in data.FILES.items()}


def test_tiny_shakespeare_is_the_known_text():
    text = tiny_shakespeare()
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_train_val_split_keeps_the_last_tenth_for_validation():
    train, val = train_val_split("abcdefghij" * 10)
    assert train + val == "abcdefghij" * 10 and len(val) == 10
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_val_split("abc", 1.5)


@pytest.fixture
def tiny_file(tmp_path, monkeypatch):
    """A registered data file with known content, fetched into an empty data dir."""
    content = b"To be, or not to be\n"
    sha = hashlib.sha256(content).hexdigest()
    file = DataFile("texts/hamlet.txt", "http://127.0.0.1:9/hamlet.txt", sha)
    monkeypatch.setitem(data.FILES, file.path, file)
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LLM_DATA_MIRROR", raising=False)
    return file, content


def _files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_fetch_copies_from_the_mirror_and_reuses_the_verified_copy(tiny_file, tmp_path, monkeypatch):
    file, content = tiny_file
    mirror = tmp_path / "mirror"
    (mirror / "texts").mkdir(parents=True)
    (mirror / "texts" / "hamlet.txt").write_bytes(content)
    monkeypatch.setenv("LLM_DATA_MIRROR", str(mirror))
    path = fetch(file.path)
    assert path == tmp_path / "data" / "texts" / "hamlet.txt" and path.read_bytes() == content

    (mirror / "texts" / "hamlet.txt").unlink()  # the verified copy is reused, the mirror not read
    assert fetch(file.path) == path


def test_mirror_with_a_wrong_file_raises_and_leaves_nothing_behind(tiny_file, tmp_path, monkeypatch):
    file, _ = tiny_file
    mirror = tmp_path / "mirror"
    (mirror / "texts").mkdir(parents=True)
    (mirror / "texts" / "hamlet.txt").write_bytes(b"To be, or not to be?\n")
    monkeypatch.setenv("LLM_DATA_MIRROR", str(mirror))
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(file.path)
    message = str(info.value)
    for expected in ("texts/hamlet.txt", file.url, file.sha256, "LLM_DATA_MIRROR", "connect"):
        assert expected in message
    assert _files_in(tmp_path / "data") == []


def test_mirror_without_the_file_says_where_it_looked(tiny_file, tmp_path, monkeypatch):
    file, _ = tiny_file
    monkeypatch.setenv("LLM_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    with pytest.raises(DataUnavailableError, match=r"has no file 'texts/hamlet\.txt'"):
        fetch(file.path)


def test_offline_without_mirror_names_the_file_url_and_both_ways_out(tiny_file, tmp_path):
    file, _ = tiny_file  # its URL points at a closed local port: the download fails at once
    with pytest.raises(DataUnavailableError) as info:
        fetch(file.path)
    message = str(info.value)
    assert not isinstance(info.value, ChecksumMismatchError)
    target = tmp_path / "data" / "texts" / "hamlet.txt"
    for expected in ("texts/hamlet.txt", file.url, "connect to the internet", "LLM_DATA_MIRROR", str(target)):
        assert expected in message
    assert _files_in(tmp_path / "data") == []


@pytest.fixture
def http_server(tmp_path):
    """A local web server over tmp_path/www (stands in for the canonical host)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_the_hash(tiny_file, http_server, monkeypatch, tmp_path):
    file, content = tiny_file
    root, base = http_server
    (root / "hamlet.txt").write_bytes(content)
    monkeypatch.setitem(data.FILES, file.path, DataFile(file.path, f"{base}/hamlet.txt", file.sha256))
    assert fetch(file.path).read_bytes() == content


def test_download_with_a_wrong_hash_raises_and_leaves_nothing_behind(tiny_file, http_server, monkeypatch, tmp_path):
    file, _ = tiny_file
    root, base = http_server
    (root / "hamlet.txt").write_bytes(b"tampered\n")
    url = f"{base}/hamlet.txt"
    monkeypatch.setitem(data.FILES, file.path, DataFile(file.path, url, file.sha256))
    with pytest.raises(ChecksumMismatchError) as info:
        fetch(file.path)
    assert url in str(info.value) and "LLM_DATA_MIRROR" in str(info.value)
    assert _files_in(tmp_path / "data") == []


def test_unknown_file_name_is_refused():
    with pytest.raises(KeyError, match="unknown data file"):
        fetch("no-such-file.txt")


def test_seeded_batches_walk_every_example_once_per_pass_in_a_seeded_order():
    from shared.datasets import seeded_batches

    batches = list(seeded_batches(10, 4, 5, seed=3))  # 20 indices: two whole passes
    flat = [i for batch in batches for i in batch]
    assert [len(b) for b in batches] == [4] * 5
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert batches == list(seeded_batches(10, 4, 5, seed=3))
    assert batches != list(seeded_batches(10, 4, 5, seed=4))
    assert all(len(b) == 3 for b in seeded_batches(3, 8, 2, 0))  # a batch never exceeds the examples

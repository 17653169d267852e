"""Shared fixtures. Tests that need the public data files get them through shared.files, so they
run offline when LLM_DATA_MIRROR points at a mirror (CI sets it to ../shared/data)."""

import hashlib
import os
import shutil

import pytest
import tiktoken
import tiktoken.registry
import torch
from hypothesis import HealthCheck, settings

from shared.files import FILES, gpt2_bpe_files

# One profile everywhere: no per-example deadline (the first call of a checked function compiles
# its checker), derandomized so CI failures reproduce.
settings.register_profile("course", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("course")

# Unit tests use tiny tensors, for which one thread is fastest; with two, OpenMP's spin-waiting
# makes each small op up to 15x slower whenever another process (a notebook kernel) is busy.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiktoken_gpt2(tmp_path_factory) -> tiktoken.Encoding:
    """The *official* ``tiktoken.get_encoding("gpt2")``, built offline.

    tiktoken caches the files it downloads under sha1(url) in TIKTOKEN_CACHE_DIR and checks
    their hashes; seeding that cache with our verified copies lets it load without a network.
    """
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for local in gpt2_bpe_files():
        url = FILES[f"gpt2/{local.name}"].url
        shutil.copy(local, cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        return tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old

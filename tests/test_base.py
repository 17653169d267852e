"""The post-training base: chapter 7's recipe as a function, trained once when missing, and GPT-2's weights."""

import os
import threading
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared import base as base_module
from shared.base import CHAPTER7_INIT_SEED, _exclusive, chapter7_is_complete, load_base, pretrain_chapter7
from shared.model import GPTModel
from shared.settings import pick_setting
from shared.train import read_checkpoint

SMOKE = pick_setting("cpu", name="cpu", smoke=True)


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "ch07.pt"
    model, history = pretrain_chapter7(SMOKE, "cpu", path=path)
    return path, model, history


def test_pretrain_chapter7_follows_chapter_7s_recipe_and_saves_the_whole_run(smoke_checkpoint):
    path, model, history = smoke_checkpoint
    assert chapter7_is_complete(SMOKE, path) and len(history.step_losses) == SMOKE.run.max_steps
    torch.manual_seed(CHAPTER7_INIT_SEED)
    fresh = GPTModel(SMOKE.gpt)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, dict(fresh.named_parameters())[n])]
    assert moved, "training changed no weight"  # it started from chapter 7's initial weights and trained
    again, _ = pretrain_chapter7(SMOKE, "cpu", path=path.with_name("again.pt"))
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"{name}: the recipe is not deterministic"


def test_load_base_loads_a_complete_checkpoint_without_training(smoke_checkpoint, monkeypatch):
    path, model, _ = smoke_checkpoint
    monkeypatch.setattr(base_module, "pretrain_chapter7", lambda *a, **k: pytest.fail("trained again"))
    loaded = load_base(SMOKE, "chapter7", "cpu", checkpoint=path)
    assert loaded.source == "chapter7" and "chapter 7's checkpoint" in loaded.description
    assert not loaded.model.training
    ids = torch.randint(0, SMOKE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.model(ids), model.eval()(ids), rtol=0, atol=0)
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size


def test_a_missing_or_unfinished_checkpoint_is_trained_or_named(smoke_checkpoint, tmp_path):
    path, _, _ = smoke_checkpoint
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="python -m shared pretrain --chapter7"):
        load_base(SMOKE, "chapter7", "cpu", checkpoint=missing, train_if_missing=False)
    unfinished = tmp_path / "unfinished.pt"
    state = read_checkpoint(path)
    state["step"] = 1
    torch.save(state, unfinished)
    old = time.time() - 3_600  # written an hour ago: nobody is still training it
    os.utime(unfinished, (old, old))
    assert not chapter7_is_complete(SMOKE, unfinished)
    trained = load_base(SMOKE, "chapter7", "cpu", checkpoint=unfinished)
    assert "trained here" in trained.description and chapter7_is_complete(SMOKE, unfinished)
    assert not unfinished.with_name(unfinished.name + ".lock").exists()


def test_a_second_process_waits_for_the_lock_and_a_stale_lock_is_taken_over(tmp_path):
    lock = tmp_path / "x.lock"
    held = threading.Event()
    release = threading.Event()

    def holder():
        with _exclusive(lock):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with pytest.raises(TimeoutError, match="delete the file"):
        with _exclusive(lock, wait_s=1.5):
            pass
    release.set()
    thread.join()
    assert not lock.exists()
    lock.write_text("12345")  # a lock left by a killed process, long ago
    old = time.time() - 3_600
    os.utime(lock, (old, old))
    with _exclusive(lock, wait_s=2):
        assert lock.exists()
    assert not lock.exists()


def test_gpt2_weights_from_a_local_folder_give_hugging_faces_logits(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_base(SMOKE, "gpt2", "cpu", gpt2_weights=tmp_path)
    assert loaded.source == "gpt2" and loaded.tokenizer.vocab_size == 50_257
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:\nBut soft, what light")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_bad_sources_and_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        load_base(SMOKE, "gpt3", "cpu")
    with pytest.raises(FileNotFoundError, match=r"config\.json and model\.safetensors"):
        load_base(SMOKE, "gpt2", "cpu", gpt2_weights=tmp_path)

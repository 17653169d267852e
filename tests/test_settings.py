import os

import pytest

from shared.model import GPT_CPU, GPTModel, count_parameters
from shared.settings import (
    GPT_GPU,
    SETTING_VARIABLE,
    SMOKE_STEPS,
    SMOKE_VARIABLE,
    llama_like,
    pick_setting,
    smoke_model,
)


def test_the_default_follows_the_device_and_the_variable_overrides_it(monkeypatch):
    monkeypatch.delenv(SETTING_VARIABLE, raising=False)
    monkeypatch.delenv(SMOKE_VARIABLE, raising=False)
    assert pick_setting("cpu").name == "cpu"
    assert pick_setting("cuda").name == "gpu"  # only the device's type is read: no GPU needed
    monkeypatch.setenv(SETTING_VARIABLE, "GPU")
    assert pick_setting("cpu").name == "gpu"
    assert pick_setting("cpu", name="cpu").name == "cpu"  # an explicit name wins
    monkeypatch.setenv(SETTING_VARIABLE, "tpu")
    with pytest.raises(ValueError, match=r"unknown setting 'tpu' .* use 'cpu' or 'gpu'"):
        pick_setting("cpu")


@pytest.mark.parametrize("value, smoke", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_smoke_runs_cut_every_long_loop(monkeypatch, value, smoke):
    monkeypatch.setenv(SMOKE_VARIABLE, value)
    for name in ("cpu", "gpu"):
        setting = pick_setting(name=name)
        assert setting.smoke is smoke
        full = pick_setting(name=name, smoke=False)
        if smoke:
            assert setting.run.max_steps == SMOKE_STEPS and setting.ablation_steps == SMOKE_STEPS
            assert setting.batch_size <= 8 and setting.cap(1_000) == SMOKE_STEPS and setting.cap(2) == 2
            # the same model's structure (heads, context, vocabulary, dropout), smaller: 8 dimensions a head, 2 blocks
            assert setting.gpt == smoke_model(full.gpt) != full.gpt
            assert setting.gpt.emb_dim == 8 * full.gpt.n_heads and setting.gpt.n_layers == 2
            kept = ("n_heads", "context_length", "vocab_size", "drop_rate", "qkv_bias", "tie_weights")
            assert all(getattr(setting.gpt, field) == getattr(full.gpt, field) for field in kept)
            assert setting.llama == llama_like(setting.gpt)
            assert setting.checkpoint_path().name == f"ch07_gpt_{name}_smoke.pt"  # never overwrites a real one
        else:
            assert setting == full and setting.cap(1_000) == 1_000
            assert setting.checkpoint_path().name == f"ch07_gpt_{name}.pt"


def test_the_settings_models_and_their_compute():
    cpu, gpu = pick_setting(name="cpu", smoke=False), pick_setting(name="gpu", smoke=False)
    assert cpu.gpt == GPT_CPU and gpu.gpt == GPT_GPU
    assert cpu.tokenizer().vocab_size == cpu.gpt.vocab_size == gpu.gpt.vocab_size
    n = count_parameters(GPTModel(gpu.gpt))
    # nanoGPT's Shakespeare run: 6 x 10.65 M parameters x 5,000 steps x 16,384 tokens
    assert gpu.training_flops(n) <= 6 * 10.65e6 * 5_000 * 16_384
    assert gpu.training_flops(n) == 6 * n * gpu.run.max_steps * gpu.batch_size * gpu.gpt.context_length
    llama = llama_like(gpu.gpt)
    assert (llama.emb_dim, llama.n_layers, llama.n_heads, llama.context_length, llama.vocab_size) == (
        gpu.gpt.emb_dim, gpu.gpt.n_layers, gpu.gpt.n_heads, gpu.gpt.context_length, gpu.gpt.vocab_size)
    assert gpu.stride == gpu.gpt.context_length // 2  # training windows overlap by half


def test_the_device_variable_forces_a_device_and_refuses_one_the_machine_lacks(monkeypatch):
    import torch

    from shared.runtime import DEVICE_VARIABLE, pick_device

    assert os.environ.get(DEVICE_VARIABLE) == "cpu"  # conftest.py: stored outputs are compared with a CPU run
    monkeypatch.setenv(DEVICE_VARIABLE, "CPU")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "tpu")
    with pytest.raises(ValueError, match="expected cpu, cuda or mps"):
        pick_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
    with pytest.raises(ValueError, match="this machine has no cuda device"):
        pick_device()
    monkeypatch.delenv(DEVICE_VARIABLE)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_capstone_stops_where_chapter_7_evaluated_its_gpt(name, smoke):
    setting = pick_setting(name=name, smoke=smoke)
    # Chapter 9 compares its Llama with chapter 7's evaluation of the GPT at the same step of the same run.
    assert 0 < setting.capstone_steps <= setting.run.max_steps
    assert setting.capstone_steps % setting.run.eval_every == 0

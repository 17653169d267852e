import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shared.datasets import create_dataloader
from shared.llama import LlamaModel
from shared.model import GPTConfig, GPTModel
from shared.settings import llama_like
from shared.shapes import shape_checks, shape_checks_enabled
from shared.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    bits_per_character,
    cross_entropy,
    evaluate_loss,
    load_checkpoint,
    lr_at,
    read_checkpoint,
    resolve_precision,
    save_checkpoint,
    train,
)

TINY = GPTConfig(vocab_size=40, context_length=16, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.1)
TOKENS = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(0))


def loaders(batch_size=4):
    train_loader = create_dataloader(TOKENS[:300], batch_size=batch_size, context_length=16, stride=8, seed=5)
    val_loader = create_dataloader(TOKENS[300:], batch_size=2, context_length=16, shuffle=False)
    return train_loader, val_loader


def fresh_model(config=TINY):
    torch.manual_seed(0)
    return GPTModel(config)


def test_cross_entropy_is_the_mean_negative_log_probability_of_the_targets():
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    log_probs = torch.log_softmax(logits, dim=-1)
    manual = -log_probs.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(cross_entropy(logits, targets), manual)
    torch.testing.assert_close(
        cross_entropy(logits, targets), F.cross_entropy(logits.reshape(10, 7), targets.reshape(10))
    )


def test_learning_rate_warms_up_then_decays_along_a_cosine():
    config = TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lr_at(100, config) == pytest.approx(1e-4)
    assert lr_at(55, config) == pytest.approx(5.5e-4)  # half way down the cosine


def test_the_loop_learns_a_tiny_model_overfits_a_few_hundred_tokens():
    config = replace(TINY, drop_rate=0.0)
    train_loader = create_dataloader(TOKENS[:200], batch_size=8, context_length=16, stride=4, seed=1)
    history = train(
        fresh_model(config),
        train_loader,
        None,
        TrainConfig(max_steps=300, lr=3e-3, warmup_steps=20, weight_decay=0.0, eval_every=300, progress=False),
    )
    assert history.step_losses[0] > math.log(40) - 0.5  # starts near ln(vocab): uniform guessing
    assert history.step_losses[-1] < 0.1


class InterruptAfter(DataLoader):
    """A copy of a loader that raises KeyboardInterrupt (as Ctrl-C would) when batch `n` is fetched."""

    def __init__(self, loader, n):
        super().__init__(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            drop_last=True,
            generator=loader.generator,
        )
        self.n, self.fetched = n, 0

    def __iter__(self):
        return self._interrupting(super().__iter__())  # create the real iterator now, as DataLoader does

    def _interrupting(self, batches):
        for batch in batches:
            if self.fetched == self.n:
                raise KeyboardInterrupt
            self.fetched += 1
            yield batch


@pytest.mark.parametrize("interrupt_at", [5, 13])  # 9 batches per epoch: inside the first or second epoch
def test_resuming_an_interrupted_run_gives_exactly_the_uninterrupted_losses(tmp_path, interrupt_at):
    config = TrainConfig(
        max_steps=24, lr=2e-3, warmup_steps=4, eval_every=6, progress=False, checkpoint_path=str(tmp_path / "run.pt")
    )
    train_loader, val_loader = loaders()
    assert len(train_loader) == 9
    uninterrupted = train(fresh_model(), train_loader, val_loader, replace(config, checkpoint_path=None))

    first = train(fresh_model(), InterruptAfter(loaders()[0], interrupt_at), val_loader, config)
    assert len(first.step_losses) == interrupt_at
    assert read_checkpoint(tmp_path / "run.pt")["step"] == interrupt_at
    torch.manual_seed(999)  # whatever happens in between must not matter
    resumed = train(fresh_model(), loaders()[0], val_loader, config, resume=True)
    assert resumed.step_losses == uninterrupted.step_losses  # exactly equal, not approximately
    assert [e["val_loss"] for e in resumed.evals] == [e["val_loss"] for e in uninterrupted.evals]


def test_a_paused_run_resumes_to_the_same_losses(tmp_path):
    config = TrainConfig(
        max_steps=16, lr=2e-3, warmup_steps=4, eval_every=8, progress=False, checkpoint_path=str(tmp_path / "run.pt")
    )
    train_loader, val_loader = loaders()
    uninterrupted = train(fresh_model(), train_loader, val_loader, replace(config, checkpoint_path=None))
    paused = train(fresh_model(), loaders()[0], val_loader, replace(config, stop_at_step=11))
    assert len(paused.step_losses) == 11 and read_checkpoint(tmp_path / "run.pt")["step"] == 11
    resumed = train(fresh_model(), loaders()[0], val_loader, config, resume=True)
    assert resumed.step_losses == uninterrupted.step_losses


def test_a_checkpoint_from_another_config_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, fresh_model(), step=0)
    other = GPTModel(replace(TINY, emb_dim=16, n_layers=3))
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, other)
    assert "emb_dim: checkpoint 32, this model 16" in str(info.value)
    assert "n_layers: checkpoint 2, this model 3" in str(info.value)
    same = fresh_model()
    load_checkpoint(path, same)  # the matching config loads


class ExplodingModel(GPTModel):
    """Returns NaN logits from its `explode_at`-th training forward pass on."""

    def __init__(self, config, explode_at):
        super().__init__(config)
        self.calls, self.explode_at = 0, explode_at

    def forward(self, idx, cache=None):
        logits = super().forward(idx, cache)
        if self.training:
            self.calls += 1
            if self.calls >= self.explode_at:
                return logits * float("nan")
        return logits


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ExplodingModel(TINY, explode_at=8)
    train_loader, val_loader = loaders()
    config = TrainConfig(max_steps=20, eval_every=3, progress=False, checkpoint_path=str(tmp_path / "run.pt"))
    with pytest.raises(
        NonFiniteLossError, match=r"at step 8, so training stopped\. The last good checkpoint is kept"
    ) as info:
        train(model, train_loader, val_loader, config)
    assert str(tmp_path / "run.pt") in str(info.value)
    state = read_checkpoint(tmp_path / "run.pt")
    assert state["step"] == 6
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_resume_without_a_checkpoint_says_so(tmp_path):
    config = TrainConfig(max_steps=2, checkpoint_path=str(tmp_path / "missing.pt"), progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(fresh_model(), loaders()[0], None, config, resume=True)


def test_history_records_tokens_seen_and_both_losses():
    train_loader, val_loader = loaders()
    history = train(fresh_model(), train_loader, val_loader, TrainConfig(max_steps=10, eval_every=5, progress=False))
    assert [e["step"] for e in history.evals] == [5, 10]
    assert [e["tokens_seen"] for e in history.evals] == [5 * 4 * 16, 10 * 4 * 16]
    assert history.evals[0]["train_loss"] == pytest.approx(sum(history.step_losses[:5]) / 5)
    model = fresh_model()
    assert evaluate_loss(model, val_loader) == pytest.approx(
        sum(cross_entropy(model.eval()(x), y).item() for x, y in val_loader) / len(val_loader)
    )


class CharTokenizer:
    """Lowercase letters as ids 0..25 (also used by test_generate)."""

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 97) for i in ids)


def test_bits_per_character_sums_every_predicted_token_once():
    torch.manual_seed(0)
    model = GPTModel(replace(TINY, vocab_size=26, drop_rate=0.0)).eval()
    text = "".join(chr(97 + (i * 7) % 26) for i in range(45))  # 45 characters: 2 full windows + 12
    ids = torch.tensor(CharTokenizer().encode(text))
    nats = 0.0
    with torch.no_grad():
        for start in range(0, 44, 16):  # windows [0,16), [16,32), [32,44)
            window = ids[start : min(start + 17, 45)]
            nats += F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="sum").item()
    expected = nats / 44 / math.log(2)  # 44 predicted characters
    assert bits_per_character(model, CharTokenizer(), text, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert bits_per_character(model, CharTokenizer(), text, batch_size=8) == pytest.approx(expected, rel=1e-5)


# -- mixed precision ------------------------------------------------------------------------------


def test_auto_precision_fits_the_device(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "mps") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_precision("auto", "cuda") == "bf16"  # Ampere and later: bf16 natively
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda") == "fp16"  # a T4: bf16 only emulated, so fp16 with a scaler
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(max_steps=1, precision="fp8")


def test_bf16_autocast_trains_close_to_fp32():
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = train(fresh_model(replace(TINY, drop_rate=0.0)), loaders()[0], None,
                                TrainConfig(max_steps=30, lr=3e-3, eval_every=30, progress=False, precision=precision))
    fp32, bf16 = runs["fp32"].step_losses, runs["bf16"].step_losses
    assert fp32 != bf16  # autocast really ran in bfloat16
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.05
    assert bf16[-1] < bf16[0] - 0.1


def test_fp16_uses_a_gradient_scaler_saved_in_checkpoints_and_resumes_exactly(tmp_path):
    config = TrainConfig(max_steps=16, lr=2e-3, warmup_steps=4, eval_every=8, progress=False, precision="fp16",
                         checkpoint_path=str(tmp_path / "run.pt"))
    uninterrupted = train(fresh_model(), loaders()[0], None, replace(config, checkpoint_path=None))
    train(fresh_model(), loaders()[0], None, replace(config, stop_at_step=5))
    state = read_checkpoint(tmp_path / "run.pt")
    assert state["scaler"]["scale"] > 1 and state["scaler"]["_growth_tracker"] == 5  # 5 steps without overflow
    resumed = train(fresh_model(), loaders()[0], None, config, resume=True)
    assert resumed.step_losses == uninterrupted.step_losses
    assert all(math.isfinite(v) for v in resumed.step_losses)


def test_resuming_with_other_training_settings_is_refused(tmp_path):
    config = TrainConfig(max_steps=8, eval_every=4, progress=False, checkpoint_path=str(tmp_path / "run.pt"))
    train(fresh_model(), loaders()[0], None, replace(config, stop_at_step=4))
    with pytest.raises(CheckpointMismatchError, match=r"other settings: lr: checkpoint 0.001, this run 0.002"):
        train(fresh_model(), loaders()[0], None, replace(config, lr=2e-3), resume=True)
    with pytest.raises(CheckpointMismatchError, match=r"tokens per step: checkpoint 64, this run 128"):
        train(fresh_model(), loaders(batch_size=8)[0], None, config, resume=True)
    resumed = train(fresh_model(), loaders()[0], None, replace(config, eval_every=2, progress=False), resume=True)
    assert len(resumed.step_losses) == 8  # how often it evaluates may change


# -- torch.compile ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_the_models_compile_without_graph_breaks(family, use_sdpa):
    model = GPTModel(TINY, use_sdpa) if family == "gpt" else LlamaModel(llama_like(TINY), use_sdpa)
    idx = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    torch._dynamo.reset()
    with shape_checks(False):  # the project's own switch: the checking wrappers cannot be traced
        explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_training_with_compile_matches_eager(monkeypatch):
    # Inductor's C++ code generation takes a minute on a small CPU; aot_eager traces the same graph
    # (Dynamo and AOTAutograd) without generating code, which is what this test is about.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw))
    config = TrainConfig(max_steps=6, lr=2e-3, warmup_steps=2, eval_every=6, progress=False)
    eager = train(fresh_model(replace(TINY, drop_rate=0.0)), loaders()[0], None, config)
    torch._dynamo.reset()
    with shape_checks(True):
        compiled = train(fresh_model(replace(TINY, drop_rate=0.0)), loaders()[0], None, replace(config, compile=True))
        assert not shape_checks_enabled()  # compiling gives the checks up for the rest of the process
    torch.testing.assert_close(compiled.step_losses, eager.step_losses, rtol=1e-4, atol=0)

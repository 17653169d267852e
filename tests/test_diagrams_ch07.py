"""Chapter 7's diagram: one training step, drawn from a step measured on the real model."""

from dataclasses import replace

import matplotlib
import pytest
import torch

from shared.diagrams import draw_training_step, trace_training_step
from shared.model import GPT_CPU, GPTModel
from shared.train import TrainConfig, cross_entropy, lr_at

matplotlib.use("Agg")

TINY = replace(GPT_CPU, vocab_size=50, context_length=16, emb_dim=32, n_heads=2, n_layers=1)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    x, y = torch.randint(0, 50, (2, 4, 16), generator=torch.Generator().manual_seed(1))
    return model, x, y


def test_the_trace_is_the_step_that_train_takes(setup):
    model, x, y = setup
    config = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=5, grad_clip=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace = trace_training_step(model, x, y, config, step=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left alone
    assert trace["input"] == (4, 16) and trace["logits"] == (4, 16, 50)
    assert trace["loss"] == pytest.approx(cross_entropy(model(x), y).item(), rel=1e-6)
    assert trace["norm_before"] > 0.05 and trace["norm_after"] == pytest.approx(0.05, rel=1e-4)
    assert trace["lr"] == lr_at(7, config) and trace["next_lr"] == lr_at(8, config)
    assert trace["grad_numbers"] == sum(p.numel() for p in model.parameters())
    assert trace["change"] > 0


def test_the_diagram_carries_the_measured_numbers(setup):
    model, x, y = setup
    config = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=5)
    fig = draw_training_step(model, x, y, config)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    trace = trace_training_step(model, x, y, config)
    assert f"{trace['loss']:.4f}" in texts and "(4, 16, 50)" in texts and "warmup" in texts
    assert ("scaled down" if trace["norm_before"] > 1.0 else "under it: unchanged") in texts
    matplotlib.pyplot.close(fig)

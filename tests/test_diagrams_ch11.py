"""Chapter 11's figures: LoRA's matrices beside the frozen weight, and accuracies with their spread over seeds."""

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from shared import diagrams
from shared.lora import LoRALinear
from shared.plotting import plot_accuracy_bars, plot_accuracy_vs_labels


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def lora_layer(out_features=12, in_features=10, rank=2) -> LoRALinear:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(in_features, out_features), rank=rank, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_draw_lora_shows_the_real_matrices_with_their_shapes():
    layer = lora_layer()
    fig = diagrams.draw_lora(layer)
    w, b, a, delta = (ax.images[0].get_array() for ax in fig.axes)
    assert torch.equal(torch.tensor(w.data), layer.base.weight.detach())
    assert torch.equal(torch.tensor(b.data), layer.lora_B.detach())
    assert torch.equal(torch.tensor(a.data), layer.lora_A.detach())
    assert torch.allclose(torch.tensor(delta.data), 2.0 * layer.lora_B.detach() @ layer.lora_A.detach())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].endswith("12 × 10\n= 120") and titles[1].endswith("12 × 2\n= 24") and "10\n= 20" in titles[2]
    assert "44 numbers instead of 120" in fig._suptitle.get_text()


def test_draw_lora_cuts_big_matrices_and_refuses_what_it_cannot_draw():
    fig = diagrams.draw_lora(lora_layer(100, 80, 4), max_rows=20, max_cols=30)
    assert fig.axes[0].images[0].get_array().shape == (20, 30) and "(corner)" in fig.axes[0].get_title()
    with pytest.raises(TypeError, match=r"takes a shared\.lora\.LoRALinear"):
        diagrams.draw_lora(nn.Linear(3, 3))
    merged = lora_layer()
    merged.merge()
    with pytest.raises(ValueError, match="unmerge it first"):
        diagrams.draw_lora(merged)


def test_accuracy_bars_are_means_with_one_standard_deviation():
    ax = plot_accuracy_bars({"a": [0.5, 0.7], "b": [0.9, 0.9, 0.9]}, baseline=0.5)
    assert [round(bar.get_height(), 6) for bar in ax.patches] == [0.6, 0.9]
    assert "0.600 ± 0.141" in [t.get_text() for t in ax.texts]  # three decimals, as the chapter's tables
    assert ax.lines[-1].get_ydata()[0] == 0.5  # the baseline
    with pytest.raises(ValueError, match="at least one run"):
        plot_accuracy_bars({"a": []})


def test_accuracy_vs_labels_has_a_line_per_method_with_its_means():
    ax = plot_accuracy_vs_labels({"scratch": {50: [0.5, 0.6], 200: [0.7, 0.7]}, "pretrained": {50: [0.8], 200: [0.9]}})
    assert [c.get_label() for c in ax.containers] == ["scratch", "pretrained"]
    means = [[round(float(y), 6) for y in c.lines[0].get_ydata()] for c in ax.containers]
    assert means == [[0.55, 0.7], [0.8, 0.9]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "200"]

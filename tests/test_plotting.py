"""The shared plots draw what they say: one panel per head, the weights as given, labels where promised."""

import matplotlib.pyplot as plt
import pytest
import torch

from shared.model import GPTConfig, GPTModel
from shared.plotting import plot_attention, plot_attention_grid


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_attention_draws_the_weights_and_an_optional_colour_bar():
    weights = torch.softmax(torch.randn(5, 5), dim=-1)
    ax = plot_attention(weights, list("abcde"), list("abcde"), title="one head")
    assert torch.allclose(torch.tensor(ax.images[0].get_array()), weights)
    assert len(ax.figure.axes) == 2  # the map and its colour bar
    _, bare = plt.subplots()
    plot_attention(weights, ax=bare, colorbar=False)
    assert len(bare.figure.axes) == 1


def test_plot_attention_grid_has_a_panel_per_layer_and_head_with_the_model_s_maps():
    config = GPTConfig(vocab_size=20, context_length=8, emb_dim=16, n_heads=2, n_layers=3)
    model = GPTModel(config)
    maps = model.attention_maps(torch.randint(0, 20, (1, 6)))[:, 0]  # (layers, heads, seq, seq)
    tokens = [f"t{i}" for i in range(6)]
    fig = plot_attention_grid(maps, tokens, title="every head")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == config.n_layers * config.n_heads
    assert len(fig.axes) == len(panels) + 1  # one shared colour bar
    last = panels[-1]  # layer 2, head 1: key labels (bottom row) but no query labels (not the first column)
    assert last.get_title() == "layer 2, head 1"
    assert torch.allclose(torch.tensor(last.images[0].get_array()), maps[2, 1])
    assert [t.get_text() for t in last.get_xticklabels()] == tokens and not last.get_yticklabels()
    assert [t.get_text() for t in panels[0].get_yticklabels()] == tokens and not panels[0].get_xticklabels()

"""Plots the chapters share: attention maps and training curves."""

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from shared.train import History

__all__ = ["plot_attention", "plot_losses"]


def _pyplot():
    # Imported on first use: matplotlib takes seconds to import, and a training process that never
    # plots (every rank but 0 of a data-parallel run) should not pay for it.
    import matplotlib.pyplot as plt

    return plt


def plot_attention(
    weights: Float[Tensor, "seq kv_seq"],
    queries: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
):
    """Heatmap of one attention matrix: a row per query, a column per key, 0 to 1."""
    plt = _pyplot()
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    image = ax.imshow(weights.detach().float().cpu(), cmap="viridis", vmin=0.0, vmax=1.0)
    if queries is not None:
        ax.set_yticks(range(len(queries)), queries)
    if keys is not None:
        ax.set_xticks(range(len(keys)), keys, rotation=90)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_losses(history: History, ax=None, label: str = "", bpc_scale: float | None = None):
    """Training and validation loss against tokens seen, on one figure.

    With ``bpc_scale`` (= tokens / characters / ln 2 of the validation text) the y axis shows
    bits per character instead of nats per token, so runs with different tokenizers compare.
    """
    ax = ax or _pyplot().subplots(figsize=(7, 4))[1]
    scale = bpc_scale if bpc_scale is not None else 1.0
    tokens = history.column("tokens_seen")
    prefix = f"{label} " if label else ""
    ax.plot(tokens, [v * scale for v in history.column("train_loss")], "-", label=f"{prefix}train")
    ax.plot(tokens, [v * scale for v in history.column("val_loss")], "--", label=f"{prefix}validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits per character" if bpc_scale is not None else "cross-entropy (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax

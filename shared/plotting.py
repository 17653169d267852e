"""Plots the chapters share: attention maps and training curves."""

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from shared.train import History, TrainConfig, lr_at

__all__ = ["plot_attention", "plot_attention_grid", "plot_losses", "plot_steps"]


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
    colorbar: bool = True,
):
    """Heatmap of one attention matrix: a row per query, a column per key, 0 to 1."""
    plt = _pyplot()
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    image = ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    if queries is not None:
        ax.set_yticks(range(len(queries)), queries)
    if keys is not None:
        ax.set_xticks(range(len(keys)), keys, rotation=90)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    if colorbar:
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_attention_grid(
    weights: Float[Tensor, "layers heads seq seq"],
    tokens: Sequence[str] | None = None,
    panel_size: float = 2.4,
    title: str | None = None,
    label_size: float = 10,
):
    """Every head of every layer on one text: a row of panels per layer, a column per head.

    ``weights`` is one sequence's slice of ``GPTModel.attention_maps`` (``maps[:, b]``). The
    tokens label the queries of the first column and the keys of the last row; one colour bar
    (0 to 1) serves every panel; ``label_size`` is the tokens' font size in points. Returns the figure.
    """
    plt = _pyplot()
    n_layers, n_heads = weights.shape[0], weights.shape[1]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(panel_size * n_heads + 1.0, panel_size * n_layers),
                             squeeze=False, layout="constrained")
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            plot_attention(weights[layer, head], ax=ax, title=f"layer {layer}, head {head}", colorbar=False)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("")
            ax.set_ylabel("")
            if tokens is not None and head == 0:
                ax.set_yticks(range(len(tokens)), tokens, fontsize=label_size)
            if tokens is not None and layer == n_layers - 1:
                ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=label_size)
    fig.colorbar(axes[0, 0].images[0], ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


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


def plot_steps(history: History, config: TrainConfig | None = None, ax=None, smooth: int = 20):
    """Every step's training loss, its running mean over ``smooth`` steps, the validation loss at
    each evaluation, and (given the run's ``config``) the learning rate of every step on a second
    y axis. Returns the loss axis; the learning-rate axis is ``ax.lr_axis``."""
    ax = ax or _pyplot().subplots(figsize=(8, 4))[1]
    losses = history.step_losses
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="training loss, every step")
    if len(losses) >= smooth:
        means = [sum(losses[i - smooth : i]) / smooth for i in range(smooth, len(losses) + 1)]
        ax.plot(range(smooth, len(losses) + 1), means, color="tab:blue", label=f"mean of the last {smooth} steps")
    if history.evals:
        ax.plot(history.column("step"), history.column("val_loss"), "o--", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if config is not None:
        lr_axis = ax.twinx()
        lr_axis.plot(steps, [lr_at(step - 1, config) for step in steps], color="tab:green", label="learning rate")
        lr_axis.set_ylabel("learning rate", color="tab:green")
        lr_axis.tick_params(axis="y", colors="tab:green")
        more_handles, more_labels = lr_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
        ax.lr_axis = lr_axis
    # Below the axes: inside, the legend would hide part of the learning-rate curve or the losses.
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(labels), fontsize="small",
              frameon=False)
    ax.figure.tight_layout()
    return ax

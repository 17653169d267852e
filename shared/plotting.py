"""Plots the chapters share: attention maps and training curves."""

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from shared.train import History, TrainConfig, lr_at

__all__ = [
    "plot_accuracy_bars",
    "plot_accuracy_vs_labels",
    "plot_attention",
    "plot_attention_grid",
    "plot_losses",
    "plot_steps",
]


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a few runs' scores."""
    if not values:
        raise ValueError("got no values: every entry needs at least one run's score")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def plot_accuracy_bars(results: dict[str, Sequence[float]], baseline: float | None = None, ax=None,
                       ylabel: str = "test accuracy", baseline_label: str = "majority class"):
    """One bar per method at the mean of its runs (``results[method]`` lists one score per seed), an
    error bar of one standard deviation, a dot per run, and ``baseline`` as a dashed line. Each bar is
    labelled with its mean and spread. Returns the axes."""
    ax = ax or _pyplot().subplots(figsize=(8, 4))[1]
    for k, values in enumerate(results.values()):
        mean, std = _mean_std(list(values))
        ax.bar([k], [mean], yerr=[std], capsize=5, color="tab:blue", alpha=0.35 + 0.1 * (k % 2), edgecolor="black")
        ax.scatter([k] * len(values), list(values), color="black", s=12, zorder=3)
        ax.text(k, mean + std + 0.01, f"{mean:.3f} ± {std:.3f}", ha="center", va="bottom", fontsize=9)
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", linestyle="--", linewidth=1.2, label=f"{baseline_label} ({baseline:.2f})")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_xticks(range(len(results)), list(results), fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3, axis="y")
    return ax


def plot_accuracy_vs_labels(curves: dict[str, dict[int, Sequence[float]]], baseline: float | None = None, ax=None,
                            ylabel: str = "test accuracy"):
    """Score against the number of labelled examples, one line per method: ``curves[method][n]`` lists
    one score per seed for ``n`` labels; each point is the mean with an error bar of one standard
    deviation, on a logarithmic x axis. ``baseline`` is drawn dashed. Returns the axes."""
    ax = ax or _pyplot().subplots(figsize=(7, 4))[1]
    for k, (method, points) in enumerate(curves.items()):
        ns = sorted(points)
        stats = [_mean_std(list(points[n])) for n in ns]
        shift = 1 + 0.03 * (k - (len(curves) - 1) / 2)  # side by side, so the error bars do not hide each other
        ax.errorbar([n * shift for n in ns], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=4, label=method)
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", linestyle="--", linewidth=1.2, label=f"majority class ({baseline:.2f})")
    ns = sorted({n for points in curves.values() for n in points})
    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax

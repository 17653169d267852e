"""Architecture diagrams drawn from a model's config: the causal mask, the head split, a GPT with
every shape, the KV cache, GPT against Llama.

Nothing in a diagram is typed in by hand. Each one builds the real modules of :mod:`shared` on
PyTorch's ``meta`` device (tensors with shapes but no storage), runs them on a dummy batch and reads
off the shapes, parameter counts and masks it draws, so a diagram cannot drift from the code.
Every function returns the matplotlib ``Figure``; in a notebook, end the cell with ``plt.show()``.
A diagram takes a few tenths of a second, GPT-2 124M's included; the first one in a process takes
a few seconds more, while PyTorch loads the machinery that runs modules on the meta device.
"""

from collections.abc import Sequence
from dataclasses import replace

import torch
from einops import rearrange

from shared.attention import LayerKVCache, MultiHeadAttention, attend, attention_weights, causal_mask, repeat_kv
from shared.llama import LlamaBlock, LlamaConfig, LlamaModel, swiglu_hidden_dim
from shared.model import GPTConfig, GPTModel, TransformerBlock, count_parameters
from shared.settings import llama_like

__all__ = [
    "bpe_merge_steps",
    "draw_all_reduce",
    "draw_attention_average",
    "draw_bpe_merges",
    "draw_causal_mask",
    "draw_chat_template",
    "draw_dpo_log_ratios",
    "draw_gpt",
    "draw_gpt_vs_llama",
    "draw_head_split",
    "draw_kv_cache",
    "draw_lora",
    "draw_sampler_shards",
    "draw_training_step",
    "draw_transformer_block",
    "draw_windows",
    "label_points",
    "plot_tuning_results",
    "trace_training_step",
]

# Okabe & Ito's colour-blind-safe palette; boxes use light tints of it so that black text stays
# readable, and every colour is backed by a label or a hatch, never the only cue.
ORANGE, SKY, GREEN, YELLOW = "#E69F00", "#56B4E9", "#009E73", "#F0E442"
BLUE, VERMILLION, PURPLE, INK, GREY = "#0072B2", "#D55E00", "#CC79A7", "#222222", "#6E6E6E"
# Paul Tol's "light" scheme, made for filled cells with text on them: one colour per head.
HEAD_COLOURS = ["#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00", "#DDDDDD"]
MONO = "DejaVu Sans Mono"  # ships with matplotlib, so JupyterLab, GitHub and Colab show the same glyphs

# The einops patterns of shared.attention: applied below to real tensors, so a wrong one fails.
SPLIT = "b t (h d) -> b h t d"
MERGE = "b h t d -> b t (h d)"


def _tint(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` mixed with white: 1.0 is the colour itself, 0.0 white."""
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return tuple(1 - amount * (1 - c) for c in (r, g, b))


EMBED, ATTN, FF, NORM = _tint(SKY, 0.4), _tint(ORANGE, 0.4), _tint(GREEN, 0.3), _tint(YELLOW, 0.5)
HEAD, DATA, PANEL = _tint(PURPLE, 0.35), "#EDEDED", "#F7F7F7"


def _pyplot():
    # Imported on first use: matplotlib takes seconds to import, and a process that never draws a
    # diagram should not pay for it.
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------
# Reading shapes and counts off the real modules
# ---------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _count(module: torch.nn.Module) -> str:
    return f"{count_parameters(module):,}"


def _embedding(layer: torch.nn.Embedding) -> str:
    return f"Embedding({layer.num_embeddings:,}, {layer.embedding_dim})"


def _expect_config(config, kind: type, function: str) -> None:
    if not isinstance(config, kind):
        other = {GPTConfig: "a LlamaConfig", LlamaConfig: "a GPTConfig"}.get(kind, "")
        hint = f" (for {other}, see draw_gpt_vs_llama)" if other and function != "draw_gpt_vs_llama" else ""
        raise TypeError(f"{function} takes a {kind.__name__}, got {type(config).__name__}{hint}.")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _check_seq(seq: int, config, function: str) -> None:
    if seq > config.context_length:
        raise ValueError(
            f"{function}: seq ({seq}) exceeds the model's context length ({config.context_length}); "
            f"pass seq={config.context_length} or less."
        )


def _recorder(seen: dict[str, str], name: str):
    """A forward hook that writes its module's output shape into ``seen[name]``."""

    def hook(_module, _inputs, output) -> None:
        seen[name] = _shape(output)

    return hook


def _trace_gpt(config: GPTConfig, batch: int, seq: int) -> dict:
    """Run a GPTModel of this config on a (batch, seq) dummy batch; record every stage's shape and
    parameter count.

    The model is built with one block: its blocks are identical (a block maps (batch, seq, emb_dim)
    to the same shape, and has the same parameters), so the others add ``n_layers - 1`` times the
    first one's parameters and nothing else. That keeps GPT-2 124M's diagram fast; the tests check
    the total against ``count_parameters(GPTModel(config))``. The forward pass is GPTModel.forward's,
    stage by stage, because its token-id check reads the ids' values and meta tensors have none.
    """
    with torch.device("meta"):
        model = GPTModel(replace(config, n_layers=1))
    idx = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    tok = model.embed.tok(idx)
    pos = model.embed.pos(torch.arange(seq, device="meta"))
    x = model.drop_emb(tok + pos)
    block = model.blocks[0]
    seen: dict[str, str] = {}
    parts = {"norm1": block.norm1, "qkv": block.attn.qkv, "attn": block.attn, "norm2": block.norm2}
    parts |= {"expand": block.ff.expand, "gelu": block.ff.gelu, "project": block.ff.project}
    hooks = [m.register_forward_hook(_recorder(seen, name)) for name, m in parts.items()]
    cache = LayerKVCache()  # its keys are the real split into heads: (batch, heads, seq, head_dim)
    h = block(x, cache)
    for hook in hooks:
        hook.remove()
    normed = model.final_norm(h)
    logits = model.out_head(normed)
    outside_head = sum(count_parameters(m) for m in (model.embed, model.blocks, model.final_norm))
    return {
        "model": model,
        "block": block,
        "ids": _shape(idx),
        "tok": _shape(tok),
        "pos": _shape(pos),
        "x": _shape(x),
        "blocks_out": _shape(h),
        "normed": _shape(normed),
        "logits": _shape(logits),
        "heads": _shape(cache.keys),
        "head_params": count_parameters(model) - outside_head,  # 0 when tied to the embedding
        "total": count_parameters(model) + (config.n_layers - 1) * count_parameters(block),
        **seen,
    }


def _trace_llama(config: LlamaConfig) -> dict:
    """A one-block LlamaModel of this config and the parameter counts of its parts, as
    :func:`_trace_gpt` counts them."""
    with torch.device("meta"):
        model = LlamaModel(replace(config, n_layers=1))
    block = model.blocks[0]
    outside_head = sum(count_parameters(m) for m in (model.tok_emb, model.blocks, model.final_norm))
    return {
        "model": model,
        "block": block,
        "head_params": count_parameters(model) - outside_head,
        "total": count_parameters(model) + (config.n_layers - 1) * count_parameters(block),
    }


# ---------------------------------------------------------------------------------------------
# Drawing primitives, in inches: every diagram is one axes that fills its figure, 1 unit = 1 inch,
# so font sizes (points) and box sizes (inches) can be planned together.
# ---------------------------------------------------------------------------------------------


def _canvas(width: float, height: float):
    # Sizes rounded to whole pixels at 100 dpi keep the figure's repr, "<Figure size 700x613 ...>",
    # short; notebooks store and compare it.
    width, height = round(width, 2), round(height, 2)
    plt = _pyplot()
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def _fit(fig, ax, bottom: float, top: float) -> None:
    """Crop the canvas to the drawing, from ``top`` down to ``bottom``: the layout sets the height."""
    bottom = top - round(top - bottom, 2)
    ax.set_ylim(bottom, top)
    fig.set_size_inches(fig.get_size_inches()[0], top - bottom)


def _box(ax, cx, cy, w, h, title, detail="", face=DATA, *, edge=INK, lw=1.2, size=11, detail_size=9.5, hatch=None):
    """A rounded box centred at (cx, cy) with a bold title and optional detail lines under it."""
    from matplotlib.patches import FancyBboxPatch

    gid = f"box{len(ax.patches)}"  # ties the texts to their box, so tests can check that they fit in it
    ax.add_patch(
        FancyBboxPatch(
            (cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.07",
            facecolor=face, edgecolor=edge, linewidth=lw, hatch=hatch, zorder=2, gid=gid,
        )
    )
    if not detail:
        ax.text(cx, cy, title, ha="center", va="center", fontsize=size, fontweight="bold", zorder=3, gid=gid)
        return
    lines = detail.count("\n") + 1
    # Title and detail share the box's height in proportion to their line heights (in points).
    title_h, detail_h = size * 1.25 / 72, detail_size * 1.3 * lines / 72
    top = cy + (title_h + detail_h + 0.04) / 2
    ax.text(cx, top, title, ha="center", va="top", fontsize=size, fontweight="bold", zorder=3, gid=gid)
    ax.text(cx, top - title_h - 0.04, detail, ha="center", va="top", fontsize=detail_size, zorder=3, linespacing=1.3,
            gid=gid)


def _arrow(ax, start, end, *, colour=INK, lw=1.3, style="-|>", connection="arc3"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=11, shrinkA=0, shrinkB=0, linewidth=lw,
            color=colour, connectionstyle=connection, zorder=1,
        )
    )


def _line(ax, xs, ys, *, colour=INK, lw=1.3, style="-", zorder=1):
    ax.plot(xs, ys, color=colour, linewidth=lw, linestyle=style, solid_capstyle="butt", zorder=zorder)


def _plus(ax, cx, cy, r=0.14):
    """The ⊕ where a branch is added back to the residual stream."""
    from matplotlib.patches import Circle

    ax.add_patch(Circle((cx, cy), r, facecolor="white", edgecolor=INK, linewidth=1.3, zorder=3))
    _line(ax, [cx - r * 0.6, cx + r * 0.6], [cy, cy], zorder=4)
    _line(ax, [cx, cx], [cy - r * 0.6, cy + r * 0.6], zorder=4)


def _rect(ax, x, y, w, h, face, *, edge=INK, lw=1.0, hatch=None, zorder=2):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor=edge, linewidth=lw, hatch=hatch, zorder=zorder))


def _show_token(token: str) -> str:
    shown = token.replace("\n", "\\n").replace("\t", "\\t").strip()
    return shown if shown else repr(token)


def _legend(ax, x, y, entries, *, size=9.5):
    """Swatches with labels in a row from (x, y): entries are (face, hatch, label)."""
    for face, hatch, label in entries:
        _rect(ax, x, y - 0.09, 0.26, 0.18, face, hatch=hatch, lw=0.8)
        text = ax.text(x + 0.36, y, label, ha="left", va="center", fontsize=size)
        x += 0.36 + 0.064 * size / 9.5 * len(label) + 0.35
    return text


# ---------------------------------------------------------------------------------------------
# Chapter 4: the causal mask
# ---------------------------------------------------------------------------------------------


def draw_causal_mask(tokens: Sequence[str], cached: int = 0):
    """The causal mask of ``shared.attention.causal_mask`` as a grid, one row per query and one column
    per key, labelled with ``tokens``: the cells a query may attend to, and the masked future.

    With ``cached > 0`` the first ``cached`` tokens come from a KV cache: they are keys only, and the
    remaining tokens are the queries of this call (``causal_mask(seq, kv_seq)`` with ``kv_seq > seq``).
    Returns the matplotlib Figure.
    """
    if isinstance(tokens, str):
        raise TypeError("draw_causal_mask takes a sequence of tokens (a list of strings), not one string")
    kv_seq = len(tokens)
    if not 1 <= kv_seq <= 24:
        raise ValueError(f"draw_causal_mask draws 1 to 24 tokens (a readable grid), got {kv_seq}")
    if not 0 <= cached < kv_seq:
        raise ValueError(
            f"cached must be between 0 and len(tokens) - 1 = {kv_seq - 1} (at least one query), got {cached}"
        )
    seq = kv_seq - cached
    mask = causal_mask(seq, kv_seq)  # True where a query may not look
    labels = [_show_token(t) for t in tokens]

    cell = 0.5 if kv_seq <= 12 else 0.36
    label_w = max(0.9, 0.085 * max(len(s) for s in labels) + 0.5)  # room for row labels (queries)
    longest = max(len(f"{s} ({j})") for j, s in enumerate(labels))
    top = 0.15 + 0.068 * longest * 0.87 + 0.15 + (0.45 if cached else 0)  # column labels, turned 60°
    width = max(label_w + kv_seq * cell + 0.4 + 0.4 * longest * 0.068, 7.0)
    height = 0.75 + top + seq * cell + 1.25
    fig, ax = _canvas(width, height)
    x0 = label_w + (width - label_w - 0.4 - kv_seq * cell) / 2
    y_top = height - 0.75 - top  # top edge of the grid

    allowed, masked = _tint(BLUE, 0.55), "white"
    for i in range(seq):
        for j in range(kv_seq):
            x, y = x0 + j * cell, y_top - (i + 1) * cell
            if mask[i, j]:
                _rect(ax, x, y, cell, cell, masked, edge=GREY, lw=0.6, hatch="///")
            else:
                _rect(ax, x, y, cell, cell, allowed, edge="white", lw=1.0)
    _rect(ax, x0, y_top - seq * cell, kv_seq * cell, seq * cell, "none", edge=INK, lw=1.2, zorder=3)
    for j, label in enumerate(labels):  # keys along the top
        ax.text(x0 + (j + 0.5) * cell, y_top + 0.08, f"{label} ({j})", rotation=60, ha="left", va="bottom",
                fontsize=10, rotation_mode="anchor")
    for i in range(seq):  # queries down the left
        ax.text(x0 - 0.1, y_top - (i + 0.5) * cell, f"({cached + i}) {labels[cached + i]}", ha="right",
                va="center", fontsize=10)
    ax.text(x0 - 0.1, y_top + 0.1, "query ↓   key →", ha="right", va="bottom", fontsize=9.5, color=GREY)

    if cached:
        bracket_y = y_top + top - 0.42
        for first, last, text in ((0, cached, "keys from the cache"), (cached, kv_seq, "new")):
            xa, xb = x0 + first * cell + 0.04, x0 + last * cell - 0.04
            _line(ax, [xa, xa, xb, xb], [bracket_y - 0.06, bracket_y, bracket_y, bracket_y - 0.06], lw=1.0)
            ax.text((xa + xb) / 2, bracket_y + 0.05, text, ha="center", va="bottom", fontsize=9.5)
        title = f"Causal mask with a KV cache: {seq} new queries, {kv_seq} keys"
    else:
        title = "Causal mask: each query attends to its own and earlier positions"
    ax.text(width / 2, height - 0.3, title, ha="center", va="center", fontsize=12.5, fontweight="bold")
    call = f"causal_mask({seq})" if not cached else f"causal_mask({seq}, {kv_seq})"
    ax.text(width / 2, 0.95, f"mask = {call}: shape {tuple(mask.shape)} = (seq, kv_seq), True where masked",
            ha="center", va="center", fontsize=9.5, family=MONO)
    entries = [(allowed, None, "allowed: the key is not in the future"), (masked, "///", "masked: score −∞, weight 0")]
    legend_w = sum(0.36 + 0.064 * len(label) + 0.35 for _, _, label in entries) - 0.35
    _legend(ax, max(0.2, (width - legend_w) / 2), 0.45, entries)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 5: the head split and merge
# ---------------------------------------------------------------------------------------------


def _text_colour(face: str) -> str:
    r, g, b = (int(face[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45 else INK


def draw_head_split(d_out: int, n_heads: int, batch: int = 2, seq: int = 6):
    """How multi-head attention splits its width into heads and merges them back, for one layer
    ``MultiHeadAttention(d_out, d_out, n_heads, ...)`` on a (batch, seq) input.

    From top to bottom: the queries (batch, seq, d_out), coloured by the slice of the width each
    head gets; the einops split into (batch, heads, seq, head_dim); causal attention inside every
    head, never across heads; the merge back to (batch, seq, d_out); and the output projection,
    which mixes the heads. The shapes come from applying the patterns on the arrows to tensors, and
    the split is checked against the module's own. Returns the matplotlib Figure.
    """
    _check_positive(d_out=d_out, n_heads=n_heads, batch=batch, seq=seq)
    if n_heads > 32:
        raise ValueError(f"draw_head_split draws at most 32 heads (one coloured slice each), got {n_heads}")
    with torch.device("meta"):  # refuses a width that does not split evenly, with its own message
        layer = MultiHeadAttention(d_out, d_out, n_heads, context_length=seq)
    head_dim = d_out // n_heads
    queries = torch.zeros(batch, seq, d_out, device="meta")
    q = rearrange(queries, SPLIT, h=n_heads)
    mask = causal_mask(seq, device=torch.device("meta"))
    weights = attention_weights(q, q, mask)
    context = attend(q, q, q, mask)
    merged = rearrange(context, MERGE)
    output = layer.out_proj(merged)
    cache = LayerKVCache()
    layer(torch.zeros(batch, seq, d_out, device="meta"), cache)
    assert cache.keys.shape == q.shape, "the diagram's split pattern no longer matches MultiHeadAttention's"

    width, left, bar_w, bar_h = 11.2, 1.0, 5.9, 0.55  # the bars between left and left + bar_w, notes on the right
    right = left + bar_w + 0.45
    gap = 0.16 if n_heads <= 8 else (0.08 if n_heads <= 16 else 0.04)
    piece = (bar_w - (n_heads - 1) * gap) / n_heads
    whole_x0 = left + (bar_w - n_heads * piece) / 2  # the unsplit bar: the pieces without gaps
    piece_x = [left + h * (piece + gap) for h in range(n_heads)]
    colours = [HEAD_COLOURS[h % len(HEAD_COLOURS)] for h in range(n_heads)]
    square = min(piece, 0.55)
    steps = [("q", 0.0), ("split", bar_h + 0.75), ("weights", bar_h + 0.6), ("context", square + 0.55),
             ("merged", bar_h + 0.75), ("out", bar_h + 0.7)]
    height = 1.3 + sum(step for _, step in steps) + bar_h + 0.3
    tops, y = {}, height - 1.3  # the top edge of each row, from the top of the figure down
    for name, step in steps:
        y -= step
        tops[name] = y
    behind = "the other one stacks" if batch == 2 else f"the other {batch - 1} stack"
    fig, ax = _canvas(width, height)
    ax.text(width / 2, height - 0.3, f"Splitting d_out = {d_out} into {n_heads} heads of head_dim = {head_dim}",
            ha="center", va="center", fontsize=13, fontweight="bold")
    ax.text(width / 2, height - 0.62,
            f"one sequence of the batch shown ({behind} behind it); keys and values split like the queries"
            if batch > 1 else "keys and values split like the queries",
            ha="center", va="center", fontsize=9.5, color=GREY)

    def label(piece_width: float, h: int) -> str:
        return f"head {h}" if piece_width > 0.75 else (str(h) if piece_width > 0.17 else "")

    def rows(x: float, y_top: float, w: float) -> None:
        """Faint lines between the seq rows of a (seq, width) matrix, when there are few enough to see."""
        if seq <= 16:
            for i in range(1, seq):
                _line(ax, [x, x + w], [y_top - i * bar_h / seq] * 2, colour="white", lw=0.6, zorder=2.5)

    def bar(y_top: float, coloured: bool, name: str) -> None:
        if batch > 1:
            _rect(ax, whole_x0 + 0.07, y_top - bar_h + 0.07, n_heads * piece, bar_h, "white", edge=GREY, lw=0.8,
                  zorder=1)
        for h in range(n_heads):
            face = colours[h] if coloured else "#BBBBBB"
            _rect(ax, whole_x0 + h * piece, y_top - bar_h, piece, bar_h, face, edge="white" if coloured else face,
                  lw=0.8)
            if coloured and label(piece, h):
                ax.text(whole_x0 + (h + 0.5) * piece, y_top - bar_h / 2, label(piece, h), ha="center", va="center",
                        fontsize=9 if piece > 0.3 else 7.5, color=_text_colour(colours[h]), zorder=3)
        rows(whole_x0, y_top, n_heads * piece)
        _rect(ax, whole_x0, y_top - bar_h, n_heads * piece, bar_h, "none", lw=1.2, zorder=3)
        if not coloured:
            ax.text(whole_x0 + n_heads * piece / 2, y_top - bar_h / 2, "the heads, mixed", ha="center", va="center",
                    fontsize=9, zorder=3)
        ax.text(whole_x0 - 0.12, y_top - bar_h / 2, name, ha="right", va="center", fontsize=10.5, fontweight="bold")

    def pieces(y_top: float, name: str) -> None:
        for h in range(n_heads):
            if batch > 1:
                _rect(ax, piece_x[h] + 0.05, y_top - bar_h + 0.05, piece, bar_h, "white", edge=GREY, lw=0.7, zorder=1)
            _rect(ax, piece_x[h], y_top - bar_h, piece, bar_h, colours[h], lw=1.0)
            rows(piece_x[h], y_top, piece)
            if label(piece, h):
                ax.text(piece_x[h] + piece / 2, y_top - bar_h / 2, label(piece, h), ha="center", va="center",
                        fontsize=9 if piece > 0.3 else 7.5, color=_text_colour(colours[h]), zorder=3)
        ax.text(left - 0.12, y_top - bar_h / 2, name, ha="right", va="center", fontsize=10.5, fontweight="bold")

    def note(y_mid: float, first: str, second: str = "", mono: bool = False) -> None:
        if second:
            ax.text(right, y_mid + 0.11, first, ha="left", va="center", fontsize=9.5 if mono else 10,
                    family=MONO if mono else None)
            ax.text(right, y_mid - 0.13, second, ha="left", va="center", fontsize=9.5, color=GREY)
        else:
            ax.text(right, y_mid, first, ha="left", va="center", fontsize=9.5 if mono else 10,
                    family=MONO if mono else None)

    def arrows(y_from: float, y_to: float, xs_from, xs_to) -> None:
        for a, b in zip(xs_from, xs_to, strict=True):
            _arrow(ax, (a, y_from - 0.06), (b, y_to + 0.06), lw=1.0, colour=GREY)

    whole_mid = [whole_x0 + (h + 0.5) * piece for h in range(n_heads)]
    piece_mid = [x + piece / 2 for x in piece_x]
    t = tops
    bar(t["q"], True, "q")
    ax.text(whole_x0 + n_heads * piece / 2, t["q"] + 0.1, f"d_out = {d_out} = {n_heads} heads × head_dim {head_dim}",
            ha="center", va="bottom", fontsize=9.5)
    note(t["q"] - bar_h / 2, f"queries {_shape(queries)}", "(batch, seq, d_out)")

    arrows(t["q"] - bar_h, t["split"], whole_mid, piece_mid)
    note((t["q"] - bar_h + t["split"]) / 2, f'rearrange(q, "{SPLIT}", h={n_heads})', "split: the width into heads",
         mono=True)
    pieces(t["split"], "q")
    note(t["split"] - bar_h / 2, f"q {_shape(q)}", "(batch, heads, seq, head_dim)")

    arrows(t["split"] - bar_h, t["weights"], piece_mid, piece_mid)
    note((t["split"] - bar_h + t["weights"]) / 2, f"softmax(q kᵀ / √{head_dim}), causal mask",
         "each head on its own: heads never mix here")
    for h in range(n_heads):  # each head's (seq, seq) weights: lower triangular
        x, y0 = piece_x[h] + (piece - square) / 2, t["weights"] - square
        ax.fill([x, x, x + square], [y0 + square, y0, y0], color=colours[h], zorder=2, linewidth=0)
        _rect(ax, x, y0, square, square, "none", lw=0.9, zorder=3)
    ax.text(left - 0.12, t["weights"] - square / 2, "weights", ha="right", va="center", fontsize=10.5,
            fontweight="bold")
    note(t["weights"] - square / 2, f"weights {_shape(weights)}", "(batch, heads, seq, seq)")

    arrows(t["weights"] - square, t["context"], piece_mid, piece_mid)
    note((t["weights"] - square + t["context"]) / 2, "weights @ v")
    pieces(t["context"], "context")
    note(t["context"] - bar_h / 2, f"context {_shape(context)}", "(batch, heads, seq, head_dim)")

    arrows(t["context"] - bar_h, t["merged"], piece_mid, whole_mid)
    note((t["context"] - bar_h + t["merged"]) / 2, f'rearrange(context, "{MERGE}")', "merge: heads side by side again",
         mono=True)
    bar(t["merged"], True, "merged")
    note(t["merged"] - bar_h / 2, f"merged {_shape(merged)}", "(batch, seq, d_out)")

    centre = whole_x0 + n_heads * piece / 2
    _arrow(ax, (centre, t["merged"] - bar_h - 0.06), (centre, t["out"] + 0.06), lw=1.3)
    note((t["merged"] - bar_h + t["out"]) / 2, f"out_proj = Linear({d_out}, {d_out}): {_count(layer.out_proj)} params",
         "every output dimension mixes all the heads")
    bar(t["out"], False, "output")
    note(t["out"] - bar_h / 2, f"output {_shape(output)}", "(batch, seq, d_out)")
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 6: the GPT and its transformer block
# ---------------------------------------------------------------------------------------------


def _block_panel(ax, x0: float, y_top: float, trace: dict, config: GPTConfig) -> float:
    """Draw one pre-LayerNorm transformer block, 4.9 inches wide, with its top-left corner at
    (x0, y_top); return the y of its bottom."""
    block = trace["block"]
    stream_x, col_x, box_w = x0 + 0.45, x0 + 2.85, 3.3
    y = y_top - 0.3
    ax.text(x0 + 2.45, y, "one transformer block (pre-LayerNorm)", ha="center", va="center", fontsize=11.5,
            fontweight="bold")
    y -= 0.42
    ax.text(stream_x - 0.1, y, f"x {trace['x']}", ha="left", va="center", fontsize=9.5, family=MONO)
    stream_top = y - 0.15

    def branch(y_start: float, boxes: list[tuple], formula: str) -> float:
        """A residual branch: leave the stream at y_start, run the boxes, add back into the stream."""
        _line(ax, [stream_x, col_x], [y_start, y_start])
        ax.plot([stream_x], [y_start], "o", color=INK, markersize=4.5, zorder=3)
        bottom = y_start
        for i, (title, detail, face, h) in enumerate(boxes):
            top = bottom - (0.25 if i == 0 else 0.35)
            _arrow(ax, (col_x, bottom), (col_x, top))
            _box(ax, col_x, top - h / 2, box_w, h, title, detail, face, size=10.5, detail_size=9)
            bottom = top - h
        y_plus = bottom - 0.4
        _line(ax, [col_x, col_x], [bottom, y_plus])
        _arrow(ax, (col_x, y_plus), (stream_x + 0.14, y_plus))
        _plus(ax, stream_x, y_plus)
        ax.text(stream_x + 0.3, y_plus + 0.17, formula, ha="left", va="center", fontsize=10, family=MONO)
        return y_plus

    n_heads, head_dim, hidden = config.n_heads, config.emb_dim // config.n_heads, 4 * config.emb_dim
    drop = f"dropout {config.drop_rate:g} on each branch's output before the addition" if config.drop_rate else ""
    y_plus1 = branch(
        stream_top - 0.2,
        [
            ("LayerNorm (norm1)", f"{_count(block.norm1)} params", NORM, 0.55),
            (
                "causal multi-head attention",
                f"{n_heads} heads × head_dim {head_dim}\nqkv {trace['qkv']} → q, k, v {trace['heads']}\n"
                f"{_count(block.attn)} params",
                ATTN,
                1.0,
            ),
        ],
        "x = x + attn(LN(x))",
    )
    y_plus2 = branch(
        y_plus1 - 0.45,
        [
            ("LayerNorm (norm2)", f"{_count(block.norm2)} params", NORM, 0.55),
            (
                "feed-forward, 4× wider inside",
                f"Linear({config.emb_dim}, {hidden}) · {_count(block.ff.expand)} params\n"
                f"GELU on {trace['gelu']}, 4 × emb_dim\n"
                f"Linear({hidden}, {config.emb_dim}) · {_count(block.ff.project)} params",
                FF,
                1.0,
            ),
        ],
        "x = x + ff(LN(x))",
    )
    _line(ax, [stream_x, stream_x], [stream_top, y_plus1 + 0.14], lw=2.4)
    _line(ax, [stream_x, stream_x], [y_plus1 - 0.14, y_plus2 + 0.14], lw=2.4)
    for y_a, y_b in ((stream_top - 0.2, y_plus1), (y_plus1 - 0.45, y_plus2)):
        ax.text(stream_x - 0.1, (y_a + y_b) / 2, "shortcut", rotation=90, ha="right", va="center", fontsize=9,
                color=GREY)
    y_out = y_plus2 - 0.5
    _arrow(ax, (stream_x, y_plus2 - 0.14), (stream_x, y_out + 0.12), lw=2.4)
    ax.text(stream_x - 0.1, y_out, f"x {trace['blocks_out']}", ha="left", va="top", fontsize=9.5, family=MONO)
    ax.text(x0 + 2.45, y_out - 0.42, f"{_count(block)} params per block", ha="center", va="center", fontsize=10.5,
            fontweight="bold")
    bottom = y_out - 0.62
    if drop:
        ax.text(x0 + 2.45, bottom - 0.05, drop, ha="center", va="center", fontsize=9, color=GREY)
        bottom -= 0.25
    return bottom - 0.1


def draw_transformer_block(config, batch: int = 2, seq: int | None = None):
    """One pre-LayerNorm transformer block of a GPT with this ``GPTConfig``, on a (batch, seq) input:
    the residual stream with its two branches, x + attn(LN(x)) and x + ff(LN(x)), the attention's
    heads, the feed-forward's 4× expansion, every shape and every part's parameter count, read off
    a real ``TransformerBlock``. ``seq`` defaults to the context length. Returns the matplotlib Figure.
    """
    _expect_config(config, GPTConfig, "draw_transformer_block")
    seq = config.context_length if seq is None else seq
    _check_positive(batch=batch, seq=seq)
    _check_seq(seq, config, "draw_transformer_block")
    trace = _trace_gpt(config, batch, seq)
    fig, ax = _canvas(5.3, 10.0)
    _fit(fig, ax, _block_panel(ax, 0.2, 10.0, trace, config), 10.0)
    return fig


def draw_gpt(config, batch: int = 2, seq: int | None = None):
    """The data flow through a GPT with this ``GPTConfig`` (e.g. ``shared.model.GPT_CPU``), on a
    (batch, seq) batch of token ids: embeddings, the ``n_layers`` transformer blocks, the final
    LayerNorm and the output head, with the shape of every tensor between them and the parameter
    count of every stage, read off a real ``GPTModel`` (the total is what ``count_parameters``
    counts). On the right, one transformer block opened up. ``seq`` defaults to the context length.
    Returns the matplotlib Figure.
    """
    _expect_config(config, GPTConfig, "draw_gpt")
    seq = config.context_length if seq is None else seq
    _check_positive(batch=batch, seq=seq)
    _check_seq(seq, config, "draw_gpt")
    trace = _trace_gpt(config, batch, seq)
    model = trace["model"]
    width, top = 11.0, 10.0
    fig, ax = _canvas(width, top)
    ax.text(width / 2, top - 0.3, "A GPT, stage by stage, with every shape and parameter count", ha="center",
            va="center", fontsize=13.5, fontweight="bold")
    ax.text(width / 2, top - 0.62,
            f"vocab_size {config.vocab_size:,} · context_length {config.context_length:,} · emb_dim {config.emb_dim} · "
            f"n_heads {config.n_heads} · n_layers {config.n_layers} · batch {batch}, seq {seq}",
            ha="center", va="center", fontsize=10, color=GREY)

    cx, box_w = 2.75, 3.9
    tok_x, pos_x, emb_w = cx - 1.0, cx + 1.02, 1.9
    y = top - 1.1
    _box(ax, tok_x, y - 0.3, emb_w, 0.6, "token ids", f"{trace['ids']} = (batch, seq)", DATA, size=10, detail_size=9)
    _box(ax, pos_x, y - 0.3, emb_w, 0.6, "positions", f"arange({seq}): 0 … {seq - 1}", DATA, size=10, detail_size=9)
    y -= 0.6
    # The two embeddings side by side, then their sum.
    emb_top = y - 0.35
    for x in (tok_x, pos_x):
        _arrow(ax, (x, y), (x, emb_top))
    tok, pos = model.embed.tok, model.embed.pos
    for x, name, emb in ((tok_x, "token embedding", tok), (pos_x, "position embedding", pos)):
        _box(ax, x, emb_top - 0.42, emb_w, 0.84, name,
             f"Embedding({emb.num_embeddings:,}, {emb.embedding_dim})\n{_count(emb)} params", EMBED, size=10,
             detail_size=9)
    y = emb_top - 0.84
    y_plus = y - 0.5
    _arrow(ax, (tok_x, y), (cx - 0.14, y_plus), connection="angle,angleA=-90,angleB=0,rad=0")
    _arrow(ax, (pos_x, y), (cx + 0.14, y_plus), connection="angle,angleA=-90,angleB=180,rad=0")
    ax.text(tok_x - 0.08, y - 0.2, trace["tok"], ha="right", va="center", fontsize=9, family=MONO)
    ax.text(pos_x + 0.08, y - 0.2, trace["pos"], ha="left", va="center", fontsize=9, family=MONO)
    _plus(ax, cx, y_plus)
    y = y_plus - 0.14

    def stage(y_from: float, shape: str, box_h: float, title: str, detail: str, face, note: str = "",
              arrow: float = 0.55) -> float:
        y_to = y_from - arrow
        _arrow(ax, (cx, y_from), (cx, y_to))
        ax.text(cx + 0.12, (y_from + y_to) / 2, shape, ha="left", va="center", fontsize=9.5, family=MONO)
        dims = f"{note}\n(batch, seq, emb_dim)" if note else "(batch, seq, emb_dim)"
        ax.text(cx - 0.12, (y_from + y_to) / 2, dims, ha="right", va="center", fontsize=9, color=GREY,
                linespacing=1.25)
        _box(ax, cx, y_to - box_h / 2, box_w, box_h, title, detail, face)
        return y_to - box_h

    per_block = count_parameters(trace["block"])
    stack_top, stack_h = y - 0.8, 0.9
    for k in (2, 1):  # the blocks after the first, as a stack of cards behind it
        _rect(ax, cx - box_w / 2 + 0.09 * k, stack_top - stack_h + 0.09 * k, box_w, stack_h, ATTN, edge=GREY, lw=0.8,
              zorder=1)
    y = stage(y, trace["x"], stack_h, f"transformer block × {config.n_layers}",
              f"{per_block:,} params each\n{config.n_layers * per_block:,} in all", ATTN,
              f"after dropout {config.drop_rate:g}" if config.drop_rate else "", arrow=0.8)
    stack_bottom = y
    y = stage(y, trace["blocks_out"], 0.6, "final LayerNorm", f"{_count(model.final_norm)} params", NORM)
    head = model.out_head
    head_detail = "weight tied to the token embedding: 0 new params" if config.tie_weights else (
        f"{trace['head_params']:,} params")
    y = stage(y, trace["normed"], 0.8, "output head",
              f"Linear({head.in_features}, {head.out_features:,}, bias=False)\n{head_detail}", HEAD)
    y_end = y - 0.5
    _arrow(ax, (cx, y), (cx, y_end))
    _box(ax, cx, y_end - 0.3, 2.9, 0.6, "logits", f"{trace['logits']} = (batch, seq, vocab)", DATA, size=10,
         detail_size=9)
    ax.text(cx, y_end - 0.95, f"total: {trace['total']:,} parameters", ha="center", va="center", fontsize=12,
            fontweight="bold")
    left_bottom = y_end - 1.2

    # The block, opened up, on the right; dashed lines join it to the stack it explains.
    from matplotlib.patches import FancyBboxPatch

    panel_x, panel_top = 5.85, top - 1.0
    bottom = _block_panel(ax, panel_x, panel_top, trace, config)
    ax.add_patch(FancyBboxPatch((panel_x, bottom), 4.95, panel_top - bottom, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor=PANEL, edgecolor=GREY, linewidth=1.0, linestyle="--", zorder=0))
    right = cx + box_w / 2 + 0.2
    _line(ax, [right, panel_x], [stack_top + 0.18, panel_top], colour=GREY, lw=1.0, style="--")
    _line(ax, [right, panel_x], [stack_bottom, bottom], colour=GREY, lw=1.0, style="--")
    _fit(fig, ax, min(bottom, left_bottom) - 0.1, top)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 8: the KV cache
# ---------------------------------------------------------------------------------------------


def _one_block(config):
    """One block of the model this config describes, on the meta device, and its name for heads."""
    if isinstance(config, GPTConfig):
        with torch.device("meta"):
            return TransformerBlock(config)
    if isinstance(config, LlamaConfig):
        with torch.device("meta"):
            return LlamaBlock(config)
    raise TypeError(f"draw_kv_cache takes a GPTConfig or a LlamaConfig, got {type(config).__name__}")


def draw_kv_cache(config, prompt_len: int = 4, steps: int = 3, batch: int = 1, tokens: Sequence[str] | None = None):
    """A KV cache growing during generation, for a model with this ``GPTConfig`` or ``LlamaConfig``.

    One panel per call of the model: the prefill (the whole prompt of ``prompt_len`` tokens), then
    ``steps`` decoding steps of one new token each. In each panel, the keys and values of one layer,
    one column per position, are either computed in this call or reused from the cache; the new
    queries attend to every cached position. The cache's shapes (batch, heads, positions so far,
    head_dim) are read off a real ``LayerKVCache`` filled by a real block; a Llama with
    ``n_kv_heads < n_heads`` caches fewer key/value heads than it has query heads. ``tokens``
    optionally names the positions. At most 3 steps and 12 positions, to stay legible. Returns the
    matplotlib Figure.
    """
    block = _one_block(config)
    _check_positive(prompt_len=prompt_len, steps=steps, batch=batch)
    total = prompt_len + steps
    if total > config.context_length:
        raise ValueError(
            f"draw_kv_cache: prompt_len + steps = {total} positions exceed the model's context length "
            f"({config.context_length})"
        )
    if total > 12 or steps > 3:
        raise ValueError(
            f"draw_kv_cache draws at most 3 steps and 12 positions in all (to stay legible), got {steps} steps "
            f"and {total} positions"
        )
    if tokens is not None and len(tokens) != total:
        raise ValueError(f"tokens must name all prompt_len + steps = {total} positions, got {len(tokens)}")
    names = [_show_token(t) for t in tokens] if tokens is not None else [str(i) for i in range(total)]

    cache = LayerKVCache()
    calls = []  # per call: (positions cached before it, new positions, shapes of keys, queries, weights)
    n_heads = config.n_heads
    for new in [prompt_len] + [1] * steps:
        start = cache.seq_len
        block(torch.zeros(batch, new, config.emb_dim, device="meta"), cache)
        keys = cache.keys
        queries = torch.zeros(batch, n_heads, new, keys.shape[-1], device="meta")
        weights = attention_weights(queries, repeat_kv(keys, n_heads // keys.shape[1]),
                                    causal_mask(new, cache.seq_len, device=torch.device("meta")))
        calls.append((start, new, _shape(keys), _shape(queries), _shape(weights)))
    kv_heads = "kv_heads" if isinstance(config, LlamaConfig) and config.kv_heads < config.n_heads else "heads"

    cell = min(0.3, 2.2 / total)
    panel_w = max(2.3, total * cell + 0.4)
    n_panels = steps + 1
    margin = 0.85
    width = max(margin + n_panels * panel_w + (n_panels - 1) * 0.2 + 0.15, 7.5)
    top = 10.0
    fig, ax = _canvas(width, top)
    ax.text(width / 2, top - 0.3, "The KV cache: each step computes one new position and reuses the rest",
            ha="center", va="center", fontsize=12.5, fontweight="bold")
    head_dim = config.emb_dim // config.n_heads
    group = f"{config.n_heads} heads" if kv_heads == "heads" else (
        f"{config.kv_heads} key/value heads, each shared by {config.n_heads // config.kv_heads} query heads")
    ax.text(width / 2, top - 0.6,
            f"one layer of {config.n_layers}, each with its own cache; a column is one position's key or value: "
            f"{group}, head_dim {head_dim}",
            ha="center", va="center", fontsize=9.5, color=GREY)
    ax.text(width / 2, top - 0.85,
            f"K, V: (batch, {kv_heads}, positions so far, head_dim) · q: (batch, heads, new, head_dim) · "
            "attn: (batch, heads, new, positions so far)",
            ha="center", va="center", fontsize=9, color=GREY)
    new_face, old_face = _tint(ORANGE, 0.75), _tint(BLUE, 0.45)
    panel_top = top - 1.1
    y_title = panel_top - 0.25
    y_q = y_title - 0.55 - cell  # bottom edges of the three rows
    y_k = y_q - 0.85 - cell
    y_v = y_k - 0.18 - cell
    y_tokens = y_v - 0.1
    y_text = y_tokens - (0.12 + 0.068 * max(len(n) for n in names) if tokens is not None else 0.05) - 0.2
    panel_bottom = y_text - 0.95
    for row_y, label in ((y_q, "queries"), (y_k, "keys"), (y_v, "values")):
        ax.text(margin - 0.1, row_y + cell / 2, label, ha="right", va="center", fontsize=10, fontweight="bold")
    for p, (start, new, keys_shape, queries_shape, weights_shape) in enumerate(calls):
        x0 = margin + p * (panel_w + 0.2)
        _rect(ax, x0, panel_bottom, panel_w, panel_top - panel_bottom, PANEL, edge="#CCCCCC", lw=0.8, zorder=0)
        kv = start + new
        title = f"prefill: {new} prompt tokens" if p == 0 else f"step {p}: 1 new token"
        ax.text(x0 + panel_w / 2, y_title, title, ha="center", va="center", fontsize=10.5, fontweight="bold")
        gx = x0 + (panel_w - total * cell) / 2
        for j in range(total):
            if j < kv:
                fresh = j >= start
                face, hatch = (new_face, "..") if fresh else (old_face, None)
                for row_y in (y_k, y_v):
                    _rect(ax, gx + j * cell, row_y, cell, cell, face, hatch=hatch, lw=0.8)
                if fresh:
                    _rect(ax, gx + j * cell, y_q, cell, cell, new_face, hatch="..", lw=0.8)
            else:  # positions not generated yet
                for row_y in (y_k, y_v):
                    _rect(ax, gx + j * cell, row_y, cell, cell, "none", edge="#CCCCCC", lw=0.6, zorder=1)
            ax.text(gx + (j + 0.5) * cell, y_q + cell + 0.06, str(j), ha="center", va="bottom",
                    fontsize=8.5 if cell >= 0.25 else 7.5, color=INK if j < kv else "#AAAAAA")
            if tokens is not None and j < kv:
                ax.text(gx + (j + 0.5) * cell, y_tokens, names[j], ha="center", va="top", fontsize=8.5, rotation=90)
        # The newest query looks at every cached key (the prefill's earlier queries look at fewer).
        qx = gx + (kv - 0.5) * cell
        for j in range(kv):
            _line(ax, [qx, gx + (j + 0.5) * cell], [y_q, y_k + cell], colour=GREY, lw=0.7)
        for i, (name, shape) in enumerate((("K, V", keys_shape), ("q", queries_shape), ("attn", weights_shape))):
            ax.text(x0 + 0.12, y_text - 0.23 * i, f"{name:5}{shape}", ha="left", va="center", fontsize=8.5,
                    family=MONO)
        counts = f"new: {new} · reused: {start}"
        ax.text(x0 + panel_w / 2, panel_bottom + 0.15, counts, ha="center", va="center", fontsize=9.5)
    entries = [(new_face, "..", "computed in this call"), (old_face, None, "reused from the cache")]
    legend_w = sum(0.36 + 0.064 * len(label) + 0.35 for _, _, label in entries) - 0.35
    _legend(ax, (width - legend_w) / 2, panel_bottom - 0.35, entries)
    _fit(fig, ax, panel_bottom - 0.6, top)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 9: GPT against Llama
# ---------------------------------------------------------------------------------------------


def draw_gpt_vs_llama(gpt_config, llama_config=None):
    """A GPT (``GPTConfig``) and a Llama-style model (``LlamaConfig``; by default
    ``shared.settings.llama_like(gpt_config)``, a Llama with the GPT's sizes) side by side, part by
    part: LayerNorm against RMSNorm, learned positions added to the input against RoPE on queries
    and keys, the GELU MLP (4×) against SwiGLU (hidden_dim), biases against none, tied or untied
    output head, multi-head against grouped-query attention, with every layer's size and every
    part's parameter count read off the real modules. Parts that differ are outlined in vermillion,
    and the middle column says how. Returns the matplotlib Figure.
    """
    _expect_config(gpt_config, GPTConfig, "draw_gpt_vs_llama")
    llama_config = llama_like(gpt_config) if llama_config is None else llama_config
    _expect_config(llama_config, LlamaConfig, "draw_gpt_vs_llama")
    gt, lt = _trace_gpt(gpt_config, 1, 1), _trace_llama(llama_config)
    gm, lm, gb, lb = gt["model"], lt["model"], gt["block"], lt["block"]
    ga, la, gf, lf = gb.attn, lb.attn, gb.ff, lb.ff

    def linear(layer) -> str:
        return f"Linear({layer.in_features}, {layer.out_features})"

    gqa = llama_config.kv_heads < llama_config.n_heads
    g_bias = "biases on Q/K/V and out_proj" if gpt_config.qkv_bias else "a bias on out_proj, none on Q/K/V"
    if gqa:
        l_heads = (f"{llama_config.n_heads} query heads, {llama_config.kv_heads} key/value heads, "
                   f"head_dim {llama_config.head_dim}")
    else:
        l_heads = f"{llama_config.n_heads} heads × head_dim {llama_config.head_dim}"
    ratio = llama_config.hidden_dim / llama_config.emb_dim
    if llama_config.hidden_dim == swiglu_hidden_dim(llama_config.emb_dim):  # Llama's rule, not a plain multiple
        ff_width = f"hidden_dim {llama_config.hidden_dim} = 8/3 × emb_dim, rounded up"
    else:
        ff_width = f"hidden_dim {llama_config.hidden_dim} = {ratio:.3g} × emb_dim"

    def head_text(config, trace) -> str:
        return "tied to the token embedding: 0 new params" if config.tie_weights else (
            f"untied · {trace['head_params']:,} params")

    rows = [
        # (gpt title, gpt detail, llama title, llama detail, face, height, what differs, gap above)
        ("token + position embeddings",
         f"{_embedding(gm.embed.tok)} + {_embedding(gm.embed.pos)}\nlearned positions, added to the input\n"
         f"{_count(gm.embed)} params",
         "token embedding only",
         f"{_embedding(lm.tok_emb)}, no position table\npositions: RoPE, inside attention\n{_count(lm.tok_emb)} params",
         EMBED, 1.0, ["positions"], 0.3),
        (f"LayerNorm · {_count(gb.norm1)} params", "", f"RMSNorm · {_count(lb.norm1)} params", "", NORM, 0.42,
         ["norm"], 0.62),
        ("multi-head attention",
         f"{gpt_config.n_heads} heads × head_dim {gpt_config.emb_dim // gpt_config.n_heads}\n"
         f"qkv {linear(ga.qkv)} · out_proj {linear(ga.out_proj)}\n{g_bias}\n{_count(ga)} params",
         ("grouped-query attention" if gqa else "attention") + ", RoPE on q and k",
         f"{l_heads}\nq {linear(la.q_proj)} · k, v {linear(la.k_proj)}\no_proj {linear(la.o_proj)} · no biases\n"
         f"{_count(la)} params",
         ATTN, 1.2, ["positions", "biases"] + (["heads"] if gqa else []), 0.28),
        (f"LayerNorm · {_count(gb.norm2)} params", "", f"RMSNorm · {_count(lb.norm2)} params", "", NORM, 0.42,
         ["norm"], 0.5),
        ("GELU MLP",
         f"{linear(gf.expand)} → GELU → {linear(gf.project)}\n4 × emb_dim inside, with biases\n{_count(gf)} params",
         "SwiGLU: down(SiLU(gate(x)) · up(x))",
         f"gate, up {linear(lf.gate)} · down {linear(lf.down)}\n"
         f"{ff_width}\nno biases · {_count(lf)} params",
         FF, 1.0, ["feed-forward", "biases"], 0.28),
        (f"final LayerNorm · {_count(gm.final_norm)} params", "", f"final RMSNorm · {_count(lm.final_norm)} params", "",
         NORM, 0.42, ["norm"], 0.75),
        ("output head", head_text(gpt_config, gt), "output head", head_text(llama_config, lt), HEAD, 0.6,
         ["tying"] if gpt_config.tie_weights != llama_config.tie_weights else [], 0.28),
    ]
    width, col_w = 11.0, 4.3
    gx, lx = 0.25 + col_w / 2, width - 0.25 - col_w / 2
    top = 20.0
    fig, ax = _canvas(width, top)
    ax.text(width / 2, top - 0.3, "GPT against Llama, part by part", ha="center", va="center", fontsize=13.5,
            fontweight="bold")
    for x, name, config in ((gx, "GPT", gpt_config), (lx, "Llama", llama_config)):
        ax.text(x, top - 0.72, name, ha="center", va="center", fontsize=12.5, fontweight="bold")
        ax.text(x, top - 0.98, f"vocab {config.vocab_size:,} · context {config.context_length:,} · emb_dim "
                f"{config.emb_dim} · {config.n_heads} heads · {config.n_layers} layers", ha="center", va="center",
                fontsize=9.5, color=GREY)
    y = top - 1.35
    for x in (gx, lx):
        _box(ax, x, y - 0.2, 1.8, 0.4, "token ids", face=DATA, size=10)
    ax.text(width / 2, y - 0.2, "same input", ha="center", va="center", fontsize=9, color=GREY)
    y -= 0.4
    edges = []
    for g_title, g_detail, l_title, l_detail, face, h, differs, gap in rows:
        for x in (gx, lx):
            _arrow(ax, (x, y), (x, y - gap))
        y -= gap
        edge, lw = (VERMILLION, 2.0) if differs else (INK, 1.2)
        for x, title, detail in ((gx, g_title, g_detail), (lx, l_title, l_detail)):
            _box(ax, x, y - h / 2, col_w, h, title, detail, face, edge=edge, lw=lw, size=10.5 if detail else 10,
                 detail_size=9)
        if differs:
            ax.text(width / 2, y - h / 2, "\n".join(f"≠ {d}" for d in differs), ha="center", va="center",
                    fontsize=9.5, color=VERMILLION, fontweight="bold", linespacing=1.35)
        edges.append((y, y - h))
        y -= h
    # The block: from the first norm to the feed-forward, n_layers times, with the same two
    # residual additions in both models.
    from matplotlib.patches import FancyBboxPatch

    block_top, block_bottom = edges[1][0] + 0.17, edges[4][1] - 0.42
    for x, config, block in ((gx, gpt_config, gb), (lx, llama_config, lb)):
        ax.add_patch(FancyBboxPatch((x - col_w / 2 - 0.1, block_bottom), col_w + 0.2, block_top - block_bottom,
                                    boxstyle="round,pad=0,rounding_size=0.1", facecolor=PANEL, edgecolor=GREY,
                                    linewidth=1.0, linestyle="--", zorder=0))
        ax.text(x - col_w / 2 - 0.05, block_top + 0.15, f"block × {config.n_layers}: {_count(block)} params each",
                ha="left", va="center", fontsize=9.5, fontweight="bold")
        for y_text, formula in (((edges[2][1] + edges[3][0]) / 2, "x + attn(norm(x))"),
                                (edges[4][1] - 0.22, "x + ff(norm(x))")):
            ax.text(x + col_w / 2 - 0.05, y_text, formula, ha="right", va="center", fontsize=9, family=MONO,
                    color=GREY)
    y -= 0.45
    for x, trace in ((gx, gt), (lx, lt)):
        ax.text(x, y, f"total: {trace['total']:,} parameters", ha="center", va="center", fontsize=11.5,
                fontweight="bold")
    ax.text(width / 2, y - 0.4, f"Llama − GPT = {lt['total'] - gt['total']:+,} parameters", ha="center", va="center",
            fontsize=10)
    _fit(fig, ax, y - 0.7, top)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 7: one training step, measured
# ---------------------------------------------------------------------------------------------


def trace_training_step(model, x, y, config, step: int = 0) -> dict:
    """Run one step of ``shared.train.train``'s recipe on a copy of ``model`` and record what it saw.

    The recipe: the learning rate of ``step`` (``lr_at``), a forward pass, the cross-entropy, the
    backward pass, clipping to ``config.grad_clip``, one AdamW step on ``param_groups``. ``model`` is
    left as it was. Returns shapes, the loss, the gradient norm before and after clipping, the
    size of the weights' change and the learning rates of this step and the next.
    """
    import copy

    from shared.model import param_groups
    from shared.train import cross_entropy, lr_at

    model = copy.deepcopy(model).train()
    groups = param_groups(model, config.weight_decay)
    lr = lr_at(step, config)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    logits = model(x)  # (batch, seq, vocab)
    loss = cross_entropy(logits, y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm_before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    norm_after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item()
    before = [p.detach().clone() for p in params]
    optimizer.step()
    change = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - b)
                                                   for p, b in zip(params, before, strict=True)])).item()
    return {
        "input": tuple(x.shape), "logits": tuple(logits.shape), "loss": loss.item(),
        "grad_tensors": len(params), "grad_numbers": sum(p.numel() for p in params),
        "norm_before": norm_before, "norm_after": norm_after, "grad_clip": config.grad_clip,
        "decayed": len(groups[0]["params"]), "not_decayed": len(groups[1]["params"]),
        "weight_decay": config.weight_decay, "lr": lr, "next_lr": lr_at(step + 1, config),
        "step": step, "max_steps": config.max_steps, "warmup_steps": config.warmup_steps, "change": change,
    }


def draw_training_step(model, x, y, config, step: int = 0):
    """One training step as a row of boxes, forward to schedule, each carrying the shapes and numbers
    that :func:`trace_training_step` measured on the real model and batch."""
    t = trace_training_step(model, x, y, config, step)
    clipped = t["grad_clip"] is not None and t["norm_before"] > t["grad_clip"]
    clip_detail = ("no clipping" if t["grad_clip"] is None else
                   f"max norm {t['grad_clip']:g}\n{t['norm_before']:.3f} → {t['norm_after']:.3f}\n"
                   + ("scaled down" if clipped else "under it: unchanged"))
    phase = "warmup" if step < t["warmup_steps"] else "cosine decay"
    boxes = [
        ("batch", f"inputs, targets\n{t['input']} each\n(batch, seq)", DATA),
        ("forward", f"model(inputs)\nlogits {t['logits']}\n(batch, seq, vocab)", EMBED),
        ("loss", f"cross-entropy\n{t['loss']:.4f} nats\nshape ()", ATTN),
        ("backward", f"loss.backward()\n{t['grad_tensors']} gradients,\n{t['grad_numbers']:,} numbers", ATTN),
        ("clip", clip_detail, NORM),
        ("AdamW step", f"lr {t['lr']:.2e}\ndecay {t['weight_decay']:g} on {t['decayed']} tensors,\n"
                       f"0 on {t['not_decayed']}", FF),
        ("weights move", f"‖Δθ‖ = {t['change']:.4f}\ngradients cleared\n(zero_grad)", FF),
        ("schedule", f"step {step} → {step + 1} of {t['max_steps']}\n{phase}\nnext lr {t['next_lr']:.2e}", HEAD),
    ]
    per_row, w, h, gap = 4, 2.35, 1.25, 0.45
    width = per_row * w + (per_row - 1) * gap + 0.4
    fig, ax = _canvas(width, 4.2)
    top = 4.2
    centres = []
    for i, (title, detail, face) in enumerate(boxes):
        row, col = divmod(i, per_row)
        cx = 0.2 + w / 2 + col * (w + gap)
        cy = top - 0.5 - h / 2 - row * (h + 0.75)
        _box(ax, cx, cy, w, h, title, detail, face, size=11, detail_size=9.5)
        centres.append((cx, cy))
    for i in range(1, len(centres)):
        (x0, y0), (x1, y1) = centres[i - 1], centres[i]
        if abs(y0 - y1) < 1e-9:
            _arrow(ax, (x0 + w / 2, y0), (x1 - w / 2, y1))
        else:  # from the end of the first row down to the start of the second
            _line(ax, [x0, x0], [y0 - h / 2, y0 - h / 2 - 0.3])
            _line(ax, [x0, x1], [y0 - h / 2 - 0.3, y0 - h / 2 - 0.3])
            _arrow(ax, (x1, y0 - h / 2 - 0.3), (x1, y1 + h / 2))
    ax.text(0.2, top - 0.2, f"one training step, measured on a {t['grad_numbers']:,}-parameter model",
            ha="left", va="center", fontsize=11.5, fontweight="bold")
    bottom = centres[-1][1] - h / 2 - 0.15
    _fit(fig, ax, bottom, top)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 1: byte-pair encoding, merge by merge
# ---------------------------------------------------------------------------------------------


def bpe_merge_steps(tokenizer, text: str) -> list[tuple[tuple[int, int] | None, int | None, list[list[int]]]]:
    """How ``tokenizer`` (a :class:`shared.tokenizer.BPETokenizer`) encodes ``text``, one merge at a time.

    Each step is ``(pair, new_id, pieces)``: the merge applied (``None`` for the starting bytes) and the
    token ids of every pre-token after it. Every step applies the earliest-learned merge found anywhere
    in the text, in every pre-token that has it; merges never cross pre-tokens, so the last step equals
    ``tokenizer.encode_ordinary(text)`` (checked).
    """
    from itertools import pairwise

    import regex

    pieces = [[tokenizer.byte_ids[b] for b in piece.encode("utf-8")]
              for piece in regex.findall(tokenizer.pattern, text)]
    steps = [(None, None, pieces)]
    while True:
        found = [(tokenizer.merges[pair], pair) for piece in pieces
                 for pair in pairwise(piece) if pair in tokenizer.merges]
        if not found:
            break
        new_id, pair = min(found)  # the earliest-learned merge: merged ids grow with merge order
        merged = []
        for piece in pieces:
            out, i = [], 0
            while i < len(piece):
                if i + 1 < len(piece) and (piece[i], piece[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(piece[i])
                    i += 1
            merged.append(out)
        pieces = merged
        steps.append((pair, new_id, pieces))
    final = [i for piece in pieces for i in piece]
    if final != tokenizer.encode_ordinary(text):
        raise AssertionError("bpe_merge_steps disagrees with the tokenizer's own encoding")
    return steps


def _shown_bytes(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace(" ", "␣").replace("\n", "\\n")


def draw_bpe_merges(tokenizer, text: str, max_steps: int = 16):
    """``text``'s bytes fusing into tokens, one row per merge, as ``tokenizer`` (a trained
    :class:`shared.tokenizer.BPETokenizer`) applies its merges (:func:`bpe_merge_steps`). Each box is
    one token, as wide as its bytes; the tokens a merge just made are coloured; gaps separate the
    pre-tokens, which no merge crosses. Returns the matplotlib Figure.
    """
    n_bytes = len(text.encode("utf-8"))
    if not 1 <= n_bytes <= 32:
        raise ValueError(f"draw_bpe_merges draws 1 to 32 bytes of text (a readable row), got {n_bytes}")
    steps = bpe_merge_steps(tokenizer, text)
    if len(steps) - 1 > max_steps:
        raise ValueError(f"{text!r} takes {len(steps) - 1} merges; draw a shorter text or raise max_steps")
    rank = {new_id: k + 1 for k, new_id in enumerate(sorted(tokenizer.merges.values()))}
    cell, gap, row, label_w = 0.46, 0.16, 0.42, 2.9
    n_pieces = len(steps[0][2])
    width = label_w + n_bytes * cell + (n_pieces - 1) * gap + 0.3
    top = 0.85 + len(steps) * row + 0.75
    fig, ax = _canvas(max(width, 7.0), top)
    y = top - 0.85
    ax.text(0.15, top - 0.35, f"BPE merges, one per row: how {text!r} becomes {sum(map(len, steps[-1][2]))} tokens",
            ha="left", va="center", fontsize=12, fontweight="bold")
    new_face, old_face = _tint(ORANGE, 0.55), DATA
    for pair, new_id, pieces in steps:
        if pair is None:
            label = "start: the UTF-8 bytes"
        else:
            left, right = (_shown_bytes(tokenizer.vocab[i]) for i in pair)
            label = f"merge {rank[new_id]:>3}: {left} + {right}"
        ax.text(label_w - 0.15, y - row / 2, label, ha="right", va="center", fontsize=9.5, family=MONO)
        x = label_w
        for piece in pieces:
            for token in piece:
                data = tokenizer.vocab[token]
                w = len(data) * cell
                _rect(ax, x + 0.02, y - row + 0.05, w - 0.04, row - 0.1, new_face if token == new_id else old_face,
                      lw=0.8)
                ax.text(x + w / 2, y - row / 2, _shown_bytes(data), ha="center", va="center", fontsize=10,
                        family=MONO)
                x += w
            x += gap
        y -= row
    ax.text(0.15, 0.4, "coloured: the tokens the merge of that row made   ·   gaps: pre-token boundaries, "
            "never merged across   ·   ␣ is a space", ha="left", va="center", fontsize=9.5, color=GREY)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 2: windows and stride; labels that do not overlap
# ---------------------------------------------------------------------------------------------


def draw_windows(tokens: Sequence[str], context_length: int, strides: Sequence[int]):
    """The windows that :class:`shared.datasets.NextTokenDataset` cuts from ``tokens``, one panel per
    stride: every window's inputs and its targets (the same window shifted by one), and under each
    panel how many windows have each token as a target. The windows are read off a real dataset
    built over the positions ``0, 1, ..., len(tokens) - 1``. Returns the matplotlib Figure.
    """
    from shared.datasets import NextTokenDataset

    if isinstance(tokens, str):
        raise TypeError("draw_windows takes a sequence of tokens (a list of strings), not one string")
    n = len(tokens)
    if not 2 <= n <= 16:
        raise ValueError(f"draw_windows draws 2 to 16 tokens (a readable row), got {n}")
    if not strides:
        raise ValueError("give at least one stride")
    datasets = [NextTokenDataset(torch.arange(n), context_length, stride) for stride in strides]
    labels = [_show_token(t) for t in tokens]
    cell = max(0.62, 0.075 * max(len(s) for s in labels) + 0.14)
    row, label_w = 0.3, 1.75
    width = label_w + n * cell + 0.3
    height = 0.7 + sum(0.45 + row * (2 * len(d) + 2) + 0.35 for d in datasets) + 0.5
    fig, ax = _canvas(width, height)
    input_face, target_face = _tint(SKY, 0.55), _tint(ORANGE, 0.5)
    ax.text(width / 2, height - 0.35, f"Windows of context_length {context_length}: inputs, and targets shifted by one",
            ha="center", va="center", fontsize=12, fontweight="bold")
    y = height - 0.75

    def cells(positions, face, y_row, *, text=True):
        for p in positions:
            _rect(ax, label_w + p * cell + 0.02, y_row - row + 0.03, cell - 0.04, row - 0.06, face, lw=0.7)
            if text:
                ax.text(label_w + (p + 0.5) * cell, y_row - row / 2, labels[p], ha="center", va="center",
                        fontsize=8.5, family=MONO)

    for stride, dataset in zip(strides, datasets, strict=True):
        ax.text(0.15, y - 0.2, f"stride {stride}: {len(dataset)} windows", ha="left", va="center", fontsize=10.5,
                fontweight="bold")
        for p in range(n):
            ax.text(label_w + (p + 0.5) * cell, y - 0.2, str(p), ha="center", va="center", fontsize=8, color=GREY)
        y -= 0.45
        cells(range(n), "white", y)
        ax.text(label_w - 0.1, y - row / 2, "tokens", ha="right", va="center", fontsize=9)
        y -= row
        for k in range(len(dataset)):
            inputs, targets = dataset[k]
            cells(inputs.tolist(), input_face, y)
            ax.text(label_w - 0.1, y - row / 2, f"window {k} inputs", ha="right", va="center", fontsize=9)
            y -= row
            cells(targets.tolist(), target_face, y)
            ax.text(label_w - 0.1, y - row / 2, "targets", ha="right", va="center", fontsize=9)
            y -= row
        counts = torch.bincount(dataset.targets.flatten(), minlength=n).tolist()
        ax.text(label_w - 0.1, y - row / 2, "times a target", ha="right", va="center", fontsize=9)
        for p, c in enumerate(counts):
            ax.text(label_w + (p + 0.5) * cell, y - row / 2, str(c), ha="center", va="center", fontsize=9.5,
                    fontweight="bold", color=VERMILLION if c == 0 else INK)
        y -= row + 0.35
    last = _legend(ax, label_w, 0.35, [(input_face, None, "inputs"), (target_face, None, "targets")])
    right = last.get_position()[0] + 0.064 * len("targets") + 0.35
    ax.text(right, 0.35, "0 in red: never a target", ha="left", va="center", fontsize=9.5, color=VERMILLION)
    return fig


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *, fontsize: float = 10):
    """Write ``labels`` beside the points ``(xs, ys)`` of a scatter plot so that no two labels overlap
    each other or cover another point: each label takes the first of several places around its point
    (right, left, above, below, then the diagonals, further out if needed) that is still free.
    Returns the text objects."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    points = [to_pixels((x, y)) for x, y in zip(xs, ys, strict=True)]
    taken = [(px - 6, py - 6, px + 6, py + 6) for px, py in points]  # the markers themselves
    pad = 2  # pixels kept free around every label

    def free(box):
        return all(box[2] + pad <= t[0] or box[0] - pad >= t[2] or box[3] + pad <= t[1] or box[1] - pad >= t[3]
                   for t in taken)

    directions = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
    placed = []
    for (x, y), label in zip(zip(xs, ys, strict=True), labels, strict=True):
        text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 0), fontsize=fontsize,
                           ha="center", va="center")
        w, h = (lambda e: (e.width, e.height))(text.get_window_extent(renderer))
        px, py = to_pixels((x, y))
        choice = None
        for distance in (8, 14, 22, 32, 44):
            for dx, dy in directions:
                cx = px + dx * (distance + w / 2)
                cy = py + dy * (distance + h / 2)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                if free(box):
                    choice = (cx - px, cy - py, box, distance)
                    break
            if choice:
                break
        if choice is None:  # crowded everywhere: right of the point, as a plain annotation would
            choice = (8 + w / 2, 0, (px + 8, py - h / 2, px + 8 + w, py + h / 2), 8)
        text.remove()  # measured; now placed, with a thin line to its point if it had to move away
        dpi_scale = 72 / fig.dpi  # pixels to points
        line = {"arrowstyle": "-", "color": "#6E6E6E", "lw": 0.6, "shrinkA": 1, "shrinkB": 4}
        text = ax.annotate(label, (x, y), textcoords="offset points", fontsize=fontsize, ha="center", va="center",
                           xytext=(choice[0] * dpi_scale, choice[1] * dpi_scale),
                           arrowprops=line if choice[3] > 8 else None)
        taken.append(choice[2])
        placed.append(text)
    return placed


# ---------------------------------------------------------------------------------------------
# Chapter 3: attention as a weighted average, for one query
# ---------------------------------------------------------------------------------------------


def draw_attention_average(tokens: Sequence[str], queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                           query: int):
    """Attention for one query, as a weighted average in three panels: the query's scaled score
    against every key, the softmax weights (``shared.attention.attention_weights``), and the values
    multiplied by their weights, whose sum is the query's context vector (``shared.attention.attend``).

    ``queries`` and ``keys`` have shape ``(seq, dim)``, ``values`` ``(seq, v_dim)``, one row per token
    of ``tokens``; ``query`` is the position that asks. Returns the matplotlib Figure.
    """
    if isinstance(tokens, str):
        raise TypeError("draw_attention_average takes a sequence of tokens (a list of strings), not one string")
    seq = len(tokens)
    if not 1 <= seq <= 16:
        raise ValueError(f"draw_attention_average draws 1 to 16 tokens (readable bars), got {seq}")
    for name, t in [("queries", queries), ("keys", keys), ("values", values)]:
        if t.dim() != 2 or t.shape[0] != seq:
            raise ValueError(f"{name} should have shape (seq, dim) with seq = len(tokens) = {seq}, got "
                             f"{tuple(t.shape)}: pass one sequence's rows, without a batch axis")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries and keys need the same width to be compared, got {queries.shape[1]} and "
                         f"{keys.shape[1]}")
    if values.shape[1] > 12:
        raise ValueError(f"draw_attention_average draws values of at most 12 dimensions, got {values.shape[1]}")
    if not 0 <= query < seq:
        raise ValueError(f"query must be a position between 0 and {seq - 1}, got {query}")

    with torch.no_grad():
        q, k, v = queries[query : query + 1].detach(), keys.detach(), values.detach()
        scores = (q @ k.T)[0] / k.shape[-1] ** 0.5  # (seq,)
        weights = attention_weights(q, k)[0]  # (seq,)
        context = attend(q, k, v)[0]  # (v_dim,)
        weighted = weights[:, None] * v  # (seq, v_dim): each value scaled by its weight
    if not torch.allclose(torch.softmax(scores, dim=-1), weights, atol=1e-6):
        raise AssertionError("the drawn scores do not give shared.attention's weights")
    labels = [_show_token(t) for t in tokens]

    plt = _pyplot()
    v_dim = v.shape[1]
    fig, (ax_s, ax_w, ax_v) = plt.subplots(
        1, 3, figsize=(13.0, round(0.45 * (seq + 1) + 1.9, 2)),
        gridspec_kw={"width_ratios": [1.0, 1.0, 0.35 + 0.3 * v_dim], "wspace": 0.55},
    )
    rows = list(range(seq))
    for ax, numbers, colour, title in [
        (ax_s, scores, ORANGE, f"1. score of query {labels[query]!r}\nagainst each key: q·k / √{k.shape[-1]}"),
        (ax_w, weights, BLUE, "2. weights = softmax(scores):\npositive, summing to 1"),
    ]:
        ax.barh(rows, numbers.tolist(), color=[_tint(colour, 1.0 if j == query else 0.55) for j in rows],
                edgecolor=INK, linewidth=0.6)
        ax.axvline(0, color=INK, linewidth=0.8)
        ax.set_yticks(rows, [f"{s} ({j})" for j, s in enumerate(labels)], fontsize=10)
        ax.set_ylim(seq - 0.5, -0.5)
        ax.set_title(title, fontsize=10.5)
        span = max(float(numbers.abs().max()), 1e-6)
        low = min(0.0, float(numbers.min())) - 0.45 * span
        high = max(0.0, float(numbers.max())) + 0.45 * span
        ax.set_xlim(low, high)
        for j, value in enumerate(numbers.tolist()):
            ax.text(value + (0.04 * span if value >= 0 else -0.04 * span), j, f"{value:.2f}", va="center",
                    ha="left" if value >= 0 else "right", fontsize=9)
        ax.tick_params(axis="x", labelsize=9)
    ax_s.set_ylabel("key (each token's k)", fontsize=10)
    ax_w.set_yticks(rows, [])

    table = torch.cat([weighted, context[None]])  # (seq + 1, v_dim): the weighted values, then their sum
    limit = max(float(table.abs().max()), 1e-6)
    ax_v.imshow(table.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(seq + 1):
        for j in range(v_dim):
            value = float(table[i, j])
            ax_v.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8.5,
                      color="white" if abs(value) > 0.6 * limit else INK, fontweight="bold" if i == seq else None)
    ax_v.axhline(seq - 0.5, color=INK, linewidth=2)
    ax_v.set_yticks(range(seq + 1), [f"{float(w):.2f} × v({s})" for w, s in zip(weights, labels, strict=True)]
                    + ["context = sum"], fontsize=9.5)
    ax_v.yaxis.tick_right()
    ax_v.set_xticks(range(v_dim), [str(j) for j in range(v_dim)], fontsize=9)
    ax_v.set_xlabel("value dimension", fontsize=10)
    ax_v.set_title("3. each value times its weight;\nthe column sums are the context vector", fontsize=10.5)
    fig.subplots_adjust(left=0.12, right=0.86, top=0.82, bottom=0.08)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 10: data parallelism
# ---------------------------------------------------------------------------------------------


def draw_all_reduce(rank_grads: Sequence[torch.Tensor], whole: torch.Tensor, labels: Sequence[str]):
    """An all-reduce of real gradients: left, each rank's gradient for a few parameters (one group of
    bars per parameter, one bar per rank); right, what every rank holds afterwards, the mean, drawn
    once per rank, with the whole batch's gradient as a black mark on each. ``rank_grads`` are 1-D
    tensors of the same length as ``whole`` and ``labels``. Returns the matplotlib Figure."""
    plt = _pyplot()
    n_ranks, k = len(rank_grads), len(labels)
    if n_ranks < 2 or any(g.shape != (k,) for g in [*rank_grads, whole]):
        raise ValueError(f"draw_all_reduce takes at least two 1-D gradients of {k} values (one per label) and the "
                         f"whole batch's; got shapes {[tuple(g.shape) for g in rank_grads]} and {tuple(whole.shape)}")
    mean = torch.stack(list(rank_grads)).mean(dim=0)
    colours = [VERMILLION, BLUE, GREEN, PURPLE]
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 5.0), sharey=True)
    width = 0.8 / n_ranks
    for r, grad in enumerate(rank_grads):
        xs = [j + (r - (n_ranks - 1) / 2) * width for j in range(k)]
        ax_l.bar(xs, grad.tolist(), width, color=colours[r % len(colours)], label=f"rank {r}: its share's gradient")
        ax_r.bar(xs, mean.tolist(), width, color=colours[r % len(colours)], alpha=0.55,
                 label=f"rank {r} after the all-reduce")
    ax_r.scatter(range(k), whole.tolist(), marker="_", s=900, color=INK, linewidths=2.5, zorder=3,
                 label="the whole batch's gradient, one process")
    for ax, title in [(ax_l, "before: every rank has its own gradient"),
                      (ax_r, "after all_reduce(mean): every rank holds the same")]:
        ax.axhline(0, color=INK, linewidth=0.8)
        ax.set_xticks(range(k), list(labels), fontsize=9, rotation=25, ha="right")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3, axis="y")
        # under the axes, not in a corner: inside, it can hide the tallest bars and their marks
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.42), markerscale=0.4, frameon=False)
    ax_l.set_ylabel("gradient", fontsize=10)
    fig.tight_layout()
    return fig


def draw_sampler_shards(shares: Sequence[Sequence[int]], batch_size: int, steps: int):
    """Which windows each process learns from at each step: one row per step, one cell per window of
    that step's global batch (its index written in it), coloured by the process that gets it.
    ``shares[r]`` is the list of window indices process ``r`` yields, in order (e.g. from
    ``ResumableSampler(..., rank=r, world_size=len(shares))``). Returns the matplotlib Figure."""
    world = len(shares)
    per_rank = batch_size // world
    if world < 1 or per_rank * world != batch_size or any(len(s) < steps * per_rank for s in shares):
        raise ValueError(f"draw_sampler_shards needs {world} shares of at least {steps} x {per_rank} indices for a "
                         f"global batch of {batch_size}")
    colours = [VERMILLION, BLUE, GREEN, PURPLE]
    fig, ax = _canvas(0.75 * batch_size + 2.2, 0.62 * steps + 0.75)
    for step in range(steps):
        for r, share in enumerate(shares):
            for j, index in enumerate(share[step * per_rank:(step + 1) * per_rank]):
                x, y = r * per_rank + j, steps - 1 - step
                _rect(ax, 1.6 + 0.75 * x, 0.2 + 0.62 * y, 0.7, 0.55, _tint(colours[r % len(colours)], 0.45))
                ax.text(1.6 + 0.75 * x + 0.35, 0.2 + 0.62 * y + 0.275, str(index), ha="center", va="center",
                        fontsize=10, color=INK)
        ax.text(1.45, 0.2 + 0.62 * (steps - 1 - step) + 0.275, f"step {step}", ha="right", va="center", fontsize=10)
    for r in range(world):
        ax.text(1.6 + 0.75 * (r * per_rank + per_rank / 2) - 0.025, 0.2 + 0.62 * steps + 0.15, f"process {r}",
                ha="center", va="bottom", fontsize=10.5, color=colours[r % len(colours)], fontweight="bold")
    return fig


# -- chapter 12 --
# The chat template with its loss mask, a DPO pair's log-probabilities before and after, and the
# comparison of base, SFT and DPO models over seeds.

_SPECIAL_SHOWN = {"<|turn|>": "TURN", "<|endofturn|>": "END"}  # the chat tokens, short enough for a cell
_ROLE_FACE = {"prompt": _tint(SKY, 0.35), "response": _tint(ORANGE, 0.55), "pad": (1.0, 1.0, 1.0)}


def draw_chat_template(rows: Sequence[Sequence[str]], roles: Sequence[Sequence[str]], *, max_chars: int = 7):
    """A padded batch of rendered conversations, one row per conversation and one cell per token:
    blue for prompt tokens (context: their targets do not count), orange for response tokens (the
    loss counts them), white with hatching for right padding. ``rows[i]`` holds the token strings of
    conversation ``i`` (padding included) and ``roles[i]`` the role of each: ``"prompt"``,
    ``"response"`` or ``"pad"`` (from ``shared.sft.collate_instructions``'s mask). The chat tokens are
    written TURN and END, in bold. Returns the Figure."""
    if len(rows) != len(roles) or any(len(r) != len(o) for r, o in zip(rows, roles, strict=False)):
        raise ValueError("draw_chat_template: give one role per token, for every row")
    unknown = {role for row in roles for role in row} - set(_ROLE_FACE)
    if unknown or not rows:
        raise ValueError(f"draw_chat_template: roles must be 'prompt', 'response' or 'pad', got {sorted(unknown)}")
    seq = max(len(r) for r in rows)
    cell_w, cell_h = 0.62, 0.5
    fig, ax = _canvas(0.5 + cell_w * seq + 0.2, 0.95 + cell_h * 1.25 * len(rows))
    for i, (row, role_row) in enumerate(zip(rows, roles, strict=True)):
        y = 0.75 + cell_h * 1.25 * (len(rows) - 1 - i)
        ax.text(0.4, y + cell_h / 2, f"{i}", ha="right", va="center", fontsize=10, color=GREY)
        for t, (token, role) in enumerate(zip(row, role_row, strict=True)):
            x = 0.5 + cell_w * t
            _rect(ax, x, y, cell_w * 0.94, cell_h, _ROLE_FACE[role], lw=0.6, hatch="///" if role == "pad" else None)
            special = token.startswith("<|") and token.endswith("|>")
            shown = "" if role == "pad" else _SPECIAL_SHOWN.get(token, _show_token(token))
            shown = shown if len(shown) <= max_chars else shown[: max_chars - 1] + "…"
            ax.text(x + cell_w * 0.47, y + cell_h / 2, shown, ha="center",
                    va="center", fontsize=6.5, family=MONO, color=INK, rotation=90 if len(shown) > 3 else 0,
                    fontweight="bold" if special else "normal")
    for k, (label, role) in enumerate([("prompt (target not counted)", "prompt"),
                                       ("response (counted in the loss)", "response"), ("padding", "pad")]):
        x = 0.5 + k * 3.6
        _rect(ax, x, 0.15, 0.35, 0.3, _ROLE_FACE[role], lw=0.6, hatch="///" if role == "pad" else None)
        ax.text(x + 0.45, 0.3, label, ha="left", va="center", fontsize=9.5, color=INK)
    return fig


def draw_dpo_log_ratios(
    before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor], *, pair: int = 0
):
    """What DPO changed, from the summed response log-probabilities of N preference pairs: ``before``
    and ``after`` are ``(chosen, rejected)``, each of shape (N,), under the reference (the SFT model)
    and under the DPO policy. Left: pair ``pair``'s log p(chosen) and log p(rejected), before and
    after. Right: every pair's log-ratio (after - before) of the rejected response against the
    chosen one's; points above the diagonal gained on the chosen side. Returns the Figure."""
    shapes = {tuple(t.shape) for t in (*before, *after)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"draw_dpo_log_ratios: four 1-D tensors of one length, got shapes {sorted(shapes)}")
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    values = [[float(before[0][pair]), float(after[0][pair])], [float(before[1][pair]), float(after[1][pair])]]
    for k, (colour, (b, a)) in enumerate(zip([GREEN, VERMILLION], values,
                                                       strict=True)):
        left.bar([k - 0.18], [b], width=0.34, color=_tint(colour, 0.35), edgecolor=INK, label=None)
        left.bar([k + 0.18], [a], width=0.34, color=colour, edgecolor=INK)
        left.text(k - 0.18, b, f"{b:.1f}", ha="center", va="top", fontsize=9)
        left.text(k + 0.18, a, f"{a:.1f}", ha="center", va="top", fontsize=9)
    left.set_xticks([-0.18, 0.18, 0.82, 1.18], ["before", "after", "before", "after"], fontsize=9)
    left.set_xlabel("chosen (the asked character's reply)            rejected (another's)", fontsize=9)
    left.set_ylabel("log p(response | prompt), nats")
    left.set_title(f"pair {pair}: before (reference) and after DPO", fontsize=10)
    left.axhline(0, color=INK, lw=0.6)
    chosen_ratio, rejected_ratio = after[0] - before[0], after[1] - before[1]
    right.scatter(rejected_ratio.tolist(), chosen_ratio.tolist(), s=12, color=BLUE, alpha=0.7)
    low = float(torch.cat([chosen_ratio, rejected_ratio]).min()) - 0.1
    high = float(torch.cat([chosen_ratio, rejected_ratio]).max()) + 0.1
    right.plot([low, high], [low, high], color=GREY, lw=0.8, ls="--")
    right.axhline(0, color=INK, lw=0.5)
    right.axvline(0, color=INK, lw=0.5)
    right.scatter([float(rejected_ratio.mean())], [float(chosen_ratio.mean())], s=80, marker="X", color=VERMILLION,
                  label="mean", zorder=3)
    right.set_xlabel("log-ratio of the rejected reply (policy - reference)")
    right.set_ylabel("log-ratio of the chosen reply")
    right.set_title(f"all {len(chosen_ratio)} pairs: above the diagonal = chosen gained", fontsize=10)
    right.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


def plot_tuning_results(
    results: dict[str, dict[str, Sequence[float]]],
    metrics: Sequence[str],
    references: dict[str, dict[str, float]] | None = None,
):
    """One panel per metric, one bar per model (e.g. base, SFT, DPO) at the mean over seeds, an error
    bar of one standard deviation and a dot per seed. ``results[model][metric]`` lists the seeds'
    values; ``references[metric]`` maps labels to levels drawn as dashed lines across that panel (a
    judge's rate on real replies, a chance level). Returns the Figure."""
    models = list(results)
    if not models or any(len(results[m].get(k, [])) < 1 for m in models for k in metrics):
        raise ValueError(f"plot_tuning_results: every model needs at least one value of each metric {list(metrics)}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    colours = [GREY, BLUE, VERMILLION, GREEN, PURPLE]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for k, model in enumerate(models):
            values = torch.tensor([float(v) for v in results[model][metric]], dtype=torch.float64)
            std = float(values.std()) if len(values) > 1 else 0.0
            ax.bar([k], [float(values.mean())], yerr=[std], capsize=4, color=_tint(colours[k % 5], 0.45),
                   edgecolor=INK)
            ax.scatter([k] * len(values), values.tolist(), color=INK, s=10, zorder=3)
        for j, (label, level) in enumerate((references or {}).get(metric, {}).items()):
            ax.axhline(level, color=[INK, GREY, PURPLE][j % 3], lw=1.0, ls=["--", ":", "-."][j % 3], label=label)
        if (references or {}).get(metric):
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(models)), models)
        ax.set_title(metric, fontsize=10)
    fig.tight_layout()
    return fig


# -- chapter 11 --
# LoRA's low-rank update beside the frozen weight it adapts, drawn from a real LoRALinear.


def draw_lora(layer, max_rows: int = 48, max_cols: int = 48):
    """A :class:`shared.lora.LoRALinear` as four heat maps of its real numbers: the frozen weight W
    (out × in), B (out × rank), A (rank × in) and the update ``scaling · B A`` (out × in, rank at
    most ``rank``), each titled with its shape and how many numbers it holds. Large matrices show
    their top-left ``max_rows`` × ``max_cols`` corner (said in the title). Returns the Figure."""
    from shared.lora import LoRALinear

    if not isinstance(layer, LoRALinear):
        raise TypeError(f"draw_lora takes a shared.lora.LoRALinear, got a {type(layer).__name__}; "
                        "wrap a layer with apply_lora or LoRALinear(linear, rank, alpha) first")
    if layer.merged:
        raise ValueError("draw_lora: this layer is merged, so its W already holds the update; unmerge it first")
    plt = _pyplot()
    with torch.no_grad():
        w, b, a = (t.detach().float().cpu() for t in (layer.base.weight, layer.lora_B, layer.lora_A))
        delta = layer.delta_weight().detach().float().cpu()
    rows, cols = min(w.shape[0], max_rows), min(w.shape[1], max_cols)
    panels = [("W, frozen", w[:rows, :cols], w.shape), ("B, trains", b[:rows], b.shape),
              ("A, trains", a[:, :cols], a.shape),
              (f"update = {layer.scaling:g} · B A", delta[:rows, :cols], delta.shape)]
    fig, axes = plt.subplots(1, 4, figsize=(12.5, 3.9), width_ratios=[cols, max(b.shape[1], 10), cols, cols])
    for ax, (title, values, shape) in zip(axes, panels, strict=True):
        limit = float(values.abs().max()) or 1.0
        ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        cut = " (corner)" if tuple(values.shape) != tuple(shape) else ""
        ax.set_title(f"{title}\n{shape[0]} × {shape[1]}\n= {shape[0] * shape[1]:,}{cut}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    trained = layer.rank * (layer.in_features + layer.out_features)
    fig.suptitle(f"LoRA on a {layer.out_features} × {layer.in_features} layer: W stays, rank {layer.rank} trains "
                 f"{trained:,} numbers instead of {layer.out_features * layer.in_features:,} "
                 f"({trained / (layer.out_features * layer.in_features):.1%})", fontsize=11)
    fig.tight_layout()
    return fig

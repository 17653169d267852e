"""The diagrams of shared.diagrams: what they draw comes from the real modules, and they stay legible.

Each diagram is drawn for a small config and for GPT-2 124M. The numbers in its text (shapes,
parameter counts) are compared with real models; the layout is checked by rendering: no two labels
overlap, none leaves the figure, and every box's text fits inside its box.
"""

import ast
import itertools
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from jaxtyping import install_import_hook

import shared
from shared.llama import LlamaConfig, LlamaModel
from shared.model import GPT2_124M, GPT_CPU, GPTConfig, GPTModel, count_parameters
from shared.settings import llama_like

# What shared/__init__.py does for every module of the package: the functions are type-checked.
with install_import_hook("shared.diagrams", "shared.typechecker"):
    import shared.diagrams as diagrams

WORDS = ["now", "is", "the", "winter", "of", "discontent"]
TINY = GPTConfig(vocab_size=50, context_length=16, emb_dim=24, n_heads=3, n_layers=2, qkv_bias=True)
TINY_TIED = replace(TINY, tie_weights=True)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: a.__class__.__name__ == "Text") if t.get_text()]


def text_of(fig) -> str:
    return "\n".join(texts(fig))


def meta_count(model_class, config) -> int:
    """Parameters of the full-depth model, built without storage (GPT-2 124M would take seconds on the CPU)."""
    with torch.device("meta"):
        return count_parameters(model_class(config))


# ---------------------------------------------------------------------------------------------
# Chapter 4: the causal mask
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [0, 4])
def test_causal_mask_draws_the_masked_cells_of_causal_mask(cached):
    fig = diagrams.draw_causal_mask(WORDS, cached=cached)
    seq = len(WORDS) - cached
    mask = shared.attention.causal_mask(seq, len(WORDS))
    cells = [p for p in fig.axes[0].patches if p.get_hatch() == "///" and p.get_width() > 0.3]  # not the legend's
    assert len(cells) == int(mask.sum())
    drawn = text_of(fig)
    for j, word in enumerate(WORDS):
        assert f"{word} ({j})" in drawn  # every key, with its position
    for i in range(cached, len(WORDS)):
        assert f"({i}) {WORDS[i]}" in drawn  # only the new positions are queries
    call = f"causal_mask({seq})" if not cached else f"causal_mask({seq}, {len(WORDS)})"
    assert f"mask = {call}: shape {(seq, len(WORDS))}" in drawn
    if cached:
        assert "keys from the cache" in drawn


def test_causal_mask_refuses_impossible_arguments():
    with pytest.raises(TypeError, match="list of strings"):
        diagrams.draw_causal_mask("now is the winter")
    with pytest.raises(ValueError, match="at least one query"):
        diagrams.draw_causal_mask(WORDS, cached=6)
    with pytest.raises(ValueError, match="1 to 24 tokens"):
        diagrams.draw_causal_mask([])


def test_tokens_with_spaces_and_newlines_are_shown_readably():
    drawn = text_of(diagrams.draw_causal_mask([" First", " Citizen", ":\n"]))
    assert "First (0)" in drawn and ":\\n (2)" in drawn


# ---------------------------------------------------------------------------------------------
# Chapter 5: the head split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d_out", "n_heads", "batch", "seq"), [(12, 3, 2, 6), (768, 12, 2, 1024)])
def test_head_split_shapes_and_patterns(d_out, n_heads, batch, seq):
    fig = diagrams.draw_head_split(d_out, n_heads, batch=batch, seq=seq)
    drawn = text_of(fig)
    head_dim = d_out // n_heads
    assert f"queries {(batch, seq, d_out)}" in drawn
    assert f"q {(batch, n_heads, seq, head_dim)}" in drawn
    assert f"weights {(batch, n_heads, seq, seq)}" in drawn
    assert f"context {(batch, n_heads, seq, head_dim)}" in drawn
    assert f"merged {(batch, seq, d_out)}" in drawn
    assert f'rearrange(q, "b t (h d) -> b h t d", h={n_heads})' in drawn
    assert 'rearrange(context, "b h t d -> b t (h d)")' in drawn
    assert f"{count_parameters(torch.nn.Linear(d_out, d_out)):,} params" in drawn
    # The split pattern is the one MultiHeadAttention uses: its cache holds the same shape.
    layer = shared.attention.MultiHeadAttention(d_out, d_out, n_heads, context_length=seq, use_sdpa=True)
    cache = shared.attention.LayerKVCache()
    with torch.no_grad():
        layer(torch.zeros(1, min(seq, 8), d_out), cache)
    assert cache.keys.shape == (1, n_heads, min(seq, 8), head_dim)


def test_head_split_refuses_a_width_that_does_not_split():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        diagrams.draw_head_split(10, 3)
    with pytest.raises(ValueError, match="at least 1"):
        diagrams.draw_head_split(12, 3, batch=0)


# ---------------------------------------------------------------------------------------------
# Chapter 6: the GPT and its block
# ---------------------------------------------------------------------------------------------


def test_gpt_diagram_of_gpt_cpu_matches_the_real_model():
    fig = diagrams.draw_gpt(GPT_CPU, batch=2)
    drawn = text_of(fig)
    model = GPTModel(GPT_CPU).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, GPT_CPU.context_length, dtype=torch.long))
    assert "(2, 64, 128)" in drawn  # (batch, seq, emb_dim)
    assert f"{tuple(logits.shape)} = (batch, seq, vocab)" in drawn
    assert f"total: {count_parameters(model):,} parameters" in drawn
    assert f"{count_parameters(model.blocks[0]):,} params each" in drawn
    assert f"{GPT_CPU.n_layers * count_parameters(model.blocks[0]):,} in all" in drawn
    assert f"{count_parameters(model.embed.tok):,} params" in drawn
    assert f"{count_parameters(model.out_head):,} params" in drawn  # untied: the head has its own matrix
    assert "transformer block × 3" in drawn


def test_gpt_diagram_of_gpt2_counts_124m_with_a_tied_head():
    fig = diagrams.draw_gpt(GPT2_124M, batch=2, seq=1024)
    drawn = text_of(fig)
    assert meta_count(GPTModel, GPT2_124M) == 124_439_808
    assert "total: 124,439,808 parameters" in drawn
    assert "(2, 1024, 768)" in drawn and "(2, 1024, 50257) = (batch, seq, vocab)" in drawn
    assert "weight tied to the token embedding: 0 new params" in drawn
    assert "transformer block × 12" in drawn
    assert "qkv (2, 1024, 2304) → q, k, v (2, 12, 1024, 64)" in drawn
    assert "GELU on (2, 1024, 3072), 4 × emb_dim" in drawn
    assert "dropout 0.1" in drawn


@pytest.mark.parametrize("config", [TINY, TINY_TIED])
def test_gpt_total_equals_count_parameters(config):
    drawn = text_of(diagrams.draw_gpt(config, batch=1, seq=5))
    assert f"total: {count_parameters(GPTModel(config)):,} parameters" in drawn
    assert "(1, 5, 24)" in drawn and "(1, 5, 50) = (batch, seq, vocab)" in drawn


@pytest.mark.parametrize("config", [GPT_CPU, GPT2_124M])
def test_transformer_block_diagram(config):
    fig = diagrams.draw_transformer_block(config, batch=2, seq=8)
    drawn = text_of(fig)
    block = shared.model.TransformerBlock(config)
    d, h = config.emb_dim, config.n_heads
    assert "x = x + attn(LN(x))" in drawn and "x = x + ff(LN(x))" in drawn
    assert f"{count_parameters(block):,} params per block" in drawn
    assert f"{count_parameters(block.attn):,} params" in drawn
    assert f"Linear({d}, {4 * d}) · {count_parameters(block.ff.expand):,} params" in drawn
    assert f"qkv (2, 8, {3 * d}) → q, k, v (2, {h}, 8, {d // h})" in drawn
    assert f"GELU on (2, 8, {4 * d})" in drawn


def test_gpt_diagrams_refuse_the_wrong_config_or_sizes():
    with pytest.raises(TypeError, match="takes a GPTConfig, got LlamaConfig"):
        diagrams.draw_gpt(llama_like(GPT_CPU))
    with pytest.raises(TypeError, match="takes a GPTConfig"):
        diagrams.draw_transformer_block({"emb_dim": 128})
    with pytest.raises(ValueError, match=r"seq \(65\) exceeds the model's context length \(64\)"):
        diagrams.draw_gpt(GPT_CPU, seq=65)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        diagrams.draw_gpt(GPT_CPU, batch=0)


# ---------------------------------------------------------------------------------------------
# Chapter 8: the KV cache
# ---------------------------------------------------------------------------------------------


def real_cache_shapes(model, prompt_len: int, steps: int, batch: int) -> list[tuple]:
    cache = model.new_cache()
    shapes = []
    with torch.no_grad():
        for new in [prompt_len] + [1] * steps:
            model(torch.zeros(batch, new, dtype=torch.long), cache)
            shapes.append(tuple(cache[0].keys.shape))
    return shapes


@pytest.mark.parametrize(
    ("config", "model_class"),
    [(GPT_CPU, GPTModel), (replace(llama_like(GPT_CPU), n_kv_heads=2), LlamaModel)],
)
def test_kv_cache_diagram_shows_the_real_cache(config, model_class):
    fig = diagrams.draw_kv_cache(config, prompt_len=4, steps=3)
    drawn = text_of(fig)
    model = model_class(config).eval()
    for step, shape in enumerate(real_cache_shapes(model, 4, 3, 1)):
        assert f"K, V {shape}" in drawn
        new = 4 if step == 0 else 1
        assert f"q    {(1, config.n_heads, new, shape[-1])}" in drawn
        assert f"attn {(1, config.n_heads, new, shape[2])}" in drawn
        assert f"new: {new} · reused: {shape[2] - new}" in drawn
    if isinstance(config, LlamaConfig):
        assert "2 key/value heads, each shared by 2 query heads" in drawn


def test_kv_cache_diagram_of_gpt2_with_tokens():
    tokens = ["First", " Citizen", ":", "\n", "We", " are", " all"]
    fig = diagrams.draw_kv_cache(GPT2_124M, prompt_len=5, steps=2, batch=2, tokens=tokens)
    drawn = text_of(fig)
    assert "K, V (2, 12, 7, 64)" in drawn and "attn (2, 12, 1, 7)" in drawn
    assert "Citizen" in texts(fig) and "\\n" in texts(fig)


def test_kv_cache_diagram_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="exceed the model's context length"):
        diagrams.draw_kv_cache(TINY, prompt_len=14, steps=3)
    with pytest.raises(ValueError, match="tokens must name all prompt_len"):
        diagrams.draw_kv_cache(GPT_CPU, prompt_len=4, steps=3, tokens=WORDS)
    with pytest.raises(ValueError, match="at most 3 steps"):
        diagrams.draw_kv_cache(GPT_CPU, steps=4)
    with pytest.raises(TypeError, match="GPTConfig or a LlamaConfig"):
        diagrams.draw_kv_cache(GPTModel(TINY))


# ---------------------------------------------------------------------------------------------
# Chapter 9: GPT against Llama
# ---------------------------------------------------------------------------------------------


def test_gpt_vs_llama_counts_both_real_models():
    fig = diagrams.draw_gpt_vs_llama(GPT_CPU)
    drawn = text_of(fig)
    gpt, llama = GPTModel(GPT_CPU), LlamaModel(llama_like(GPT_CPU))
    assert f"total: {count_parameters(gpt):,} parameters" in drawn
    assert f"total: {count_parameters(llama):,} parameters" in drawn
    assert f"{count_parameters(llama) - count_parameters(gpt):+,} parameters" in drawn
    assert f"block × 3: {count_parameters(llama.blocks[0]):,} params each" in drawn
    assert f"RMSNorm · {count_parameters(llama.blocks[0].norm1):,} params" in drawn
    assert f"hidden_dim {llama_like(GPT_CPU).hidden_dim}" in drawn
    assert "4 heads × head_dim 32" in drawn and "grouped-query" not in drawn
    assert "≠ tying" not in drawn  # both untied


def test_gpt_vs_llama_with_gpt2_and_grouped_query_attention():
    llama_config = replace(llama_like(GPT2_124M), n_kv_heads=4)
    fig = diagrams.draw_gpt_vs_llama(GPT2_124M, llama_config)
    drawn = text_of(fig)
    assert "total: 124,439,808 parameters" in drawn
    assert f"total: {meta_count(LlamaModel, llama_config):,} parameters" in drawn
    assert "grouped-query attention, RoPE on q and k" in drawn
    assert "12 query heads, 4 key/value heads, head_dim 64" in drawn
    assert "k, v Linear(768, 256)" in drawn
    assert "≠ tying" in drawn  # GPT-2 ties its head, the Llama does not
    assert "biases on Q/K/V and out_proj" in drawn


def test_gpt_vs_llama_refuses_swapped_configs():
    with pytest.raises(TypeError, match="draw_gpt_vs_llama takes a GPTConfig, got LlamaConfig"):
        diagrams.draw_gpt_vs_llama(llama_like(GPT_CPU), GPT_CPU)
    with pytest.raises(TypeError, match="takes a LlamaConfig, got GPTConfig"):
        diagrams.draw_gpt_vs_llama(GPT_CPU, GPT_CPU)


# ---------------------------------------------------------------------------------------------
# Every diagram: legible, deterministic, quiet, and cheap to import
# ---------------------------------------------------------------------------------------------

EVERY_DIAGRAM = {
    "mask": lambda: diagrams.draw_causal_mask(WORDS),
    "mask, cached": lambda: diagrams.draw_causal_mask(WORDS, cached=4),
    "heads, chapter 5": lambda: diagrams.draw_head_split(12, 3),
    "heads, GPT-2": lambda: diagrams.draw_head_split(768, 12, seq=1024),
    "gpt, GPT_CPU": lambda: diagrams.draw_gpt(GPT_CPU),
    "gpt, GPT-2": lambda: diagrams.draw_gpt(GPT2_124M),
    "block, GPT_CPU": lambda: diagrams.draw_transformer_block(GPT_CPU),
    "block, GPT-2": lambda: diagrams.draw_transformer_block(GPT2_124M),
    "kv, GPT_CPU": lambda: diagrams.draw_kv_cache(GPT_CPU),
    "kv, longest": lambda: diagrams.draw_kv_cache(GPT_CPU, prompt_len=9, steps=3, batch=3),
    "kv, GPT-2": lambda: diagrams.draw_kv_cache(GPT2_124M, prompt_len=5, steps=2, batch=2,
                                               tokens=["First", " Citizen", ":", "\n", "We", " are", " all"]),
    "vs, GPT_CPU": lambda: diagrams.draw_gpt_vs_llama(GPT_CPU),
    "vs, GPT-2 with GQA": lambda: diagrams.draw_gpt_vs_llama(GPT2_124M, replace(llama_like(GPT2_124M), n_kv_heads=4)),
}


def layout_problems(fig) -> list[str]:
    """Labels that overlap, leave the figure, or stick out of the box they belong to."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    labels = [(t, t.get_window_extent(renderer)) for t in fig.findobj(lambda a: a.__class__.__name__ == "Text")
              if t.get_visible() and t.get_text().strip()]
    problems = []
    for t, e in labels:
        if e.x0 < -1 or e.y0 < -1 or e.x1 > width + 1 or e.y1 > height + 1:
            problems.append(f"outside the figure: {t.get_text()!r}")
    for (a, ea), (b, eb) in itertools.combinations(labels, 2):
        if ea.x0 < eb.x1 - 1 and eb.x0 < ea.x1 - 1 and ea.y0 < eb.y1 - 1 and eb.y0 < ea.y1 - 1:
            problems.append(f"overlap: {a.get_text()!r} and {b.get_text()!r}")
    boxes = {p.get_gid(): p.get_window_extent(renderer) for p in fig.axes[0].patches if p.get_gid()}
    for t, e in labels:
        box = boxes.get(t.get_gid())
        if box is not None and (e.x0 < box.x0 + 2 or e.x1 > box.x1 - 2 or e.y0 < box.y0 + 1 or e.y1 > box.y1 - 1):
            problems.append(f"sticks out of its box: {t.get_text()!r}")
    return problems


@pytest.mark.parametrize("name", list(EVERY_DIAGRAM))
def test_every_diagram_is_legible_deterministic_and_quiet(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = EVERY_DIAGRAM[name]()
        again = EVERY_DIAGRAM[name]()
        assert layout_problems(fig) == []
    width, height = fig.get_size_inches()
    assert 5 <= width <= 12 and 4 <= height <= 12, (width, height)
    assert [(t.get_text(), t.get_position()) for t in fig.texts + fig.axes[0].texts] == [
        (t.get_text(), t.get_position()) for t in again.texts + again.axes[0].texts
    ]
    assert min(t.get_fontsize() for t in fig.axes[0].texts) >= 7


def test_importing_diagrams_does_not_import_matplotlib():
    # matplotlib takes seconds to import; processes that never draw must not pay for it.
    tree = ast.parse(Path(diagrams.__file__).read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.split(".")[0] == "matplotlib" for n in names), ast.unparse(node)

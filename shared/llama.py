"""A Llama-style model: RMSNorm, rotary position embeddings (RoPE), SwiGLU, grouped-query attention.

It reuses the attention functions and KV cache of :mod:`shared.attention`, and works with
:mod:`shared.train` and :mod:`shared.generate` like :class:`shared.model.GPTModel`.
Rotary embeddings use Hugging Face's layout (rotate the two halves of each head); Meta's
original code rotates interleaved pairs, and :func:`halves_permutation` maps one to the other.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from shared.attention import (
    KVCache,
    LayerKVCache,
    attend,
    causal_mask,
    check_context,
    repeat_kv,
    sdpa_attend,
)
from shared.embeddings import check_token_ids
from shared.weights import load_renamed, load_state_dict_file

__all__ = [
    "LlamaAttention",
    "LlamaBlock",
    "LlamaConfig",
    "LlamaModel",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "apply_rope_interleaved",
    "halves_permutation",
    "load_llama_from_hf",
    "rope_angles",
    "rotate_half",
    "swiglu_hidden_dim",
]


def swiglu_hidden_dim(emb_dim: int, multiple_of: int = 64) -> int:
    """Llama's feed-forward width: 2/3 of 4 × emb_dim (three matrices instead of two keep the
    parameter count of a 4× MLP), rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * 4 * emb_dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-style model. ``n_kv_heads < n_heads`` gives grouped-query attention."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    hidden_dim: int
    n_kv_heads: int | None = None  # None: as many key/value heads as query heads
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    tie_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"LlamaConfig: emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        if (self.emb_dim // self.n_heads) % 2:
            raise ValueError(f"LlamaConfig: the head dimension ({self.emb_dim // self.n_heads}) must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"LlamaConfig: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads}); "
                "each key/value head serves a group of query heads"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"LlamaConfig.drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """Scale each token's feature vector by 1 / its root mean square (no mean subtraction), then by a
    learned weight. Normalises over features only, never across positions. Computed in float32."""

    def __init__(self, emb_dim: int, eps: float = 1e-6):
        super().__init__()
        self.emb_dim, self.eps = emb_dim, eps
        self.weight = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: Float[Tensor, "*batch emb_dim={self.emb_dim}"]) -> Float[Tensor, "*batch emb_dim"]:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_angles(
    head_dim: int, context_length: int, theta: float = 10_000.0
) -> tuple[Float[Tensor, "seq head_dim"], Float[Tensor, "seq head_dim"]]:
    """cos and sin of the rotation angles, position × frequency, laid out for :func:`apply_rope`.

    Dimension pair ``i`` (of ``head_dim / 2``) turns at frequency ``theta^(-2i / head_dim)``;
    every head uses the same frequencies. Both halves of the last axis repeat the same angles.
    """
    # Written as 1 / theta^(2i/d) in float32, exactly like the reference implementations.
    frequencies = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(context_length, dtype=torch.float32), frequencies)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: Float[Tensor, "*batch head_dim"]) -> Float[Tensor, "*batch head_dim"]:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a 90° turn of every pair (x1_i, x2_i)."""
    first, second = rearrange(x, "... (two half) -> two ... half", two=2)
    return torch.cat([-second, first], dim=-1)


def apply_rope(
    x: Float[Tensor, "batch heads seq head_dim"], cos: Float[Tensor, "seq head_dim"], sin: Float[Tensor, "seq head_dim"]
) -> Float[Tensor, "batch heads seq head_dim"]:
    """Rotate queries or keys by their positions' angles (Hugging Face's halves layout).

    Pair ``i`` is (x[i], x[i + head_dim/2]); each pair turns by position × frequency_i.
    """
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(
    x: Float[Tensor, "batch heads seq head_dim"], cos: Float[Tensor, "seq head_dim"], sin: Float[Tensor, "seq head_dim"]
) -> Float[Tensor, "batch heads seq head_dim"]:
    """The same rotation in Meta's layout: pair ``i`` is (x[2i], x[2i + 1]). Takes :func:`rope_angles`'
    tables (only their first half is used)."""
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    pairs = rearrange(x, "... (half two) -> ... half two", two=2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rearrange(rotated, "... half two -> ... (half two)")


def halves_permutation(head_dim: int) -> Int[Tensor, " head_dim"]:
    """Index that reorders one head's interleaved features (0, 1, 2, 3, ...) into halves order
    (0, 2, 4, ..., 1, 3, 5, ...). Applying it to the rows of each head's Q and K projections turns a
    model written for :func:`apply_rope_interleaved` into one for :func:`apply_rope`."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


class SwiGLU(nn.Module):
    """Gated feed-forward: down(SiLU(gate(x)) * up(x)). SiLU is Swish with β fixed at 1; no biases."""

    def __init__(self, emb_dim: int, hidden_dim: int):
        super().__init__()
        self.emb_dim = emb_dim
        self.gate = nn.Linear(emb_dim, hidden_dim, bias=False)  # W1 in the paper
        self.up = nn.Linear(emb_dim, hidden_dim, bias=False)  # W3
        self.down = nn.Linear(hidden_dim, emb_dim, bias=False)  # W2

    def forward(self, x: Float[Tensor, "batch seq emb_dim={self.emb_dim}"]) -> Float[Tensor, "batch seq emb_dim"]:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaAttention(nn.Module):
    """Causal self-attention with rotary position embeddings and grouped-query attention.

    Q and K are rotated after their projections and before the dot product; V is not rotated.
    The KV cache stores the ``n_kv_heads`` rotated keys and values (the memory GQA saves); they are
    shared among query heads only inside :func:`shared.attention.repeat_kv`. The signature matches
    :class:`shared.attention.MultiHeadAttention`, so it can replace it inside a GPT block.
    """

    def __init__(self, config: LlamaConfig, use_sdpa: bool = False):
        super().__init__()
        self.emb_dim, self.n_heads, self.kv_heads = config.emb_dim, config.n_heads, config.kv_heads
        self.head_dim, self.context_length, self.use_sdpa = config.head_dim, config.context_length, use_sdpa
        self.q_proj = nn.Linear(config.emb_dim, config.n_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.emb_dim, config.kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.emb_dim, config.kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.emb_dim, bias=False)
        self.dropout = nn.Dropout(config.drop_rate)
        cos, sin = rope_angles(config.head_dim, config.context_length, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # derived from the config: not saved
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", causal_mask(config.context_length), persistent=False)

    def forward(
        self, x: Float[Tensor, "batch seq emb_dim={self.emb_dim}"], cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch seq emb_dim"]:
        seq = x.shape[1]
        start = cache.seq_len if cache is not None else 0
        check_context(seq, start, self.context_length)
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.kv_heads)
        cos, sin = self.cos[start : start + seq].to(x.dtype), self.sin[start : start + seq].to(x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        groups = self.n_heads // self.kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        if self.use_sdpa:
            context = sdpa_attend(q, k, v, self.dropout.p if self.training else 0.0)
        else:
            context = attend(q, k, v, self.mask[start : start + seq, : start + seq], self.dropout)
        return self.o_proj(rearrange(context, "b h t d -> b t (h d)"))


class LlamaBlock(nn.Module):
    """x + attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: LlamaConfig, use_sdpa: bool = False):
        super().__init__()
        self.emb_dim = config.emb_dim
        self.norm1 = RMSNorm(config.emb_dim, config.norm_eps)
        self.attn = LlamaAttention(config, use_sdpa)
        self.norm2 = RMSNorm(config.emb_dim, config.norm_eps)
        self.ff = SwiGLU(config.emb_dim, config.hidden_dim)
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(
        self, x: Float[Tensor, "batch seq emb_dim={self.emb_dim}"], cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch seq emb_dim"]:
        x = x + self.drop_shortcut(self.attn(self.norm1(x), cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class LlamaModel(nn.Module):
    """Token embedding (no position embedding: RoPE inside attention), Llama blocks, final RMSNorm,
    untied output head. Maps token ids (batch, seq) to logits (batch, seq, vocab)."""

    def __init__(self, config: LlamaConfig, use_sdpa: bool = False):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(LlamaBlock(config, use_sdpa) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.emb_dim, config.norm_eps)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:  # scaled residual projections, as in GPTModel
            for proj in (block.attn.o_proj, block.ff.down):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    def hidden_states(
        self, idx: Int[Tensor, "batch seq"], cache: KVCache | None = None
    ) -> Float[Tensor, "batch seq emb_dim"]:
        """The body's output: embedding, every block, the final norm; what ``out_head`` turns into logits."""
        check_token_ids(idx, self.config.vocab_size)
        x = self.drop_emb(self.tok_emb(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None)
        return self.final_norm(x)

    def forward(self, idx: Int[Tensor, "batch seq"], cache: KVCache | None = None) -> Float[Tensor, "batch seq vocab"]:
        return self.out_head(self.hidden_states(idx, cache))


_LLAMA_RENAMES = [
    (r"model\.embed_tokens\.weight", "tok_emb.weight", False),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight", r"blocks.\1.attn.\2_proj.weight", False),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.ff.\2.weight", False),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.norm1.weight", False),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.norm2.weight", False),
    (r"model\.norm\.weight", "final_norm.weight", False),
    (r"lm_head\.weight", "out_head.weight", False),
]
_LLAMA_IGNORED = re.compile(r".*rotary_emb\.inv_freq")


def load_llama_from_hf(model: LlamaModel, state_dict: Mapping[str, Tensor] | str | Path) -> LlamaModel:
    """Fill ``model`` with a Hugging Face ``LlamaForCausalLM`` state dict (or ``.safetensors`` path).

    Hugging Face stores Q/K rows in the halves layout our :func:`apply_rope` uses, so no
    permutation is needed. A mismatching config is refused with every difference listed.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = load_state_dict_file(state_dict)
    state_dict = dict(state_dict)
    if "lm_head.weight" not in state_dict and "model.embed_tokens.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]  # a tied checkpoint
    return load_renamed(model, state_dict, _LLAMA_RENAMES, _LLAMA_IGNORED)

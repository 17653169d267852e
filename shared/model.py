"""The GPT model: configuration, LayerNorm, GELU, feed-forward, transformer block, GPTModel."""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from shared.attention import KVCache, LayerKVCache, MultiHeadAttention, attention_weights, check_context
from shared.embeddings import TokenPositionEmbedding
from shared.runtime import eval_mode

__all__ = [
    "GELU",
    "GPT2_124M",
    "GPT2_SIZES",
    "GPT_CPU",
    "FeedForward",
    "GPTConfig",
    "GPTModel",
    "LayerNorm",
    "TransformerBlock",
    "count_parameters",
    "param_groups",
]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT. ``dataclasses.replace(config, n_layers=6)`` makes a variant."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"GPTConfig: emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}); "
                f"each head gets emb_dim / n_heads dimensions"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate}")

    def to_dict(self) -> dict:
        return asdict(self)


# GPT-2 "small" in OpenAI's released shape: biases on Q/K/V, output head tied to the embedding. (The
# release uses no dropout; 0.1 is GPT-1's rate and Hugging Face's GPT2Config default, kept for training.)
GPT2_124M = GPTConfig(
    vocab_size=50_257,
    context_length=1_024,
    emb_dim=768,
    n_heads=12,
    n_layers=12,
    drop_rate=0.1,
    qkv_bias=True,
    tie_weights=True,
)

# The course's CPU setting for Tiny Shakespeare with the chapter-1 BPE (chapters 7-9, bench/):
# chosen by a sweep of sizes and schedules so that 180 s of training on a 2-core CPU beats
# nanoGPT's character-level baby GPT; small and shallow wins at that budget (README, Benchmarks).
GPT_CPU = GPTConfig(
    vocab_size=1_024,
    context_length=64,
    emb_dim=128,
    n_heads=4,
    n_layers=3,
    drop_rate=0.0,
    qkv_bias=False,
    tie_weights=False,
)

# The four released GPT-2 sizes: (emb_dim, n_layers, n_heads); everything else as GPT2_124M.
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "124M": (768, 12, 12),
    "355M": (1024, 24, 16),
    "774M": (1280, 36, 20),
    "1558M": (1600, 48, 25),
}


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift:

        (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

    with the biased variance (divide by ``emb_dim``), as in GPT-2 and ``nn.LayerNorm``; the learned
    scale and shift are called ``weight`` and ``bias`` as in ``nn.LayerNorm``.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.emb_dim, self.eps = emb_dim, eps
        self.weight = nn.Parameter(torch.ones(emb_dim))
        self.bias = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: Float[Tensor, "*batch emb_dim={self.emb_dim}"]) -> Float[Tensor, "*batch emb_dim"]:
        # Fast path: PyTorch's fused kernel computes exactly the formula above; measured 8x faster
        # (forward + backward) than writing it out. Chapter 6 derives it and checks they agree.
        return F.layer_norm(x, (self.emb_dim,), self.weight, self.bias, self.eps)


class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

    def forward(self, x: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        # Fast path: the fused kernel for exactly this formula; measured 3x faster (forward +
        # backward) than the seven element-wise operations written out. Chapter 6 checks they agree.
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP: expand to 4 × emb_dim, GELU, project back."""

    def __init__(self, emb_dim: int):
        super().__init__()
        self.emb_dim = emb_dim
        self.expand = nn.Linear(emb_dim, 4 * emb_dim)
        self.gelu = GELU()
        self.project = nn.Linear(4 * emb_dim, emb_dim)

    def forward(self, x: Float[Tensor, "batch seq emb_dim={self.emb_dim}"]) -> Float[Tensor, "batch seq emb_dim"]:
        return self.project(self.gelu(self.expand(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, config: GPTConfig, use_sdpa: bool = False):
        super().__init__()
        self.emb_dim = config.emb_dim
        self.norm1 = LayerNorm(config.emb_dim)
        self.attn = MultiHeadAttention(
            config.emb_dim,
            config.emb_dim,
            config.n_heads,
            config.context_length,
            config.drop_rate,
            config.qkv_bias,
            use_sdpa,
        )
        self.norm2 = LayerNorm(config.emb_dim)
        self.ff = FeedForward(config.emb_dim)
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(
        self, x: Float[Tensor, "batch seq emb_dim={self.emb_dim}"], cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch seq emb_dim"]:
        x = x + self.drop_shortcut(self.attn(self.norm1(x), cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """A GPT: token + position embeddings, ``n_layers`` transformer blocks, final norm, output head.

    Maps token ids (batch, seq) to next-token logits (batch, seq, vocab). ``use_sdpa=True`` runs
    attention through PyTorch's fused kernel (same outputs, faster). Pass a :class:`KVCache`
    (from :meth:`new_cache`) to process a sequence in pieces, as generation does.
    """

    def __init__(self, config: GPTConfig, use_sdpa: bool = False):
        super().__init__()
        self.config = config
        self.embed = TokenPositionEmbedding(config.vocab_size, config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(config, use_sdpa) for _ in range(config.n_layers))
        self.final_norm = LayerNorm(config.emb_dim)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # The GPT-2 paper's scaled init (section 2.3): each residual branch's last projection gets std
        # 0.02 / √(2·n_layers) (two branches per block), so the residual stream's variance does not grow with depth.
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.ff.project):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.tie_weights:  # one matrix, two uses: same storage, not a copy
            self.out_head.weight = self.embed.tok.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per block."""
        return KVCache(self.config.n_layers)

    @torch.no_grad()
    def attention_maps(self, idx: Int[Tensor, "batch seq"]) -> Float[Tensor, "layers batch heads seq seq"]:
        """The attention weights every head of every layer gives ``idx`` (in eval mode, no dropout):
        entry ``[layer, b, head, i, j]`` is how much position ``i`` attends to position ``j``.

        It runs the model block by block and recomputes each block's queries and keys from the
        block's own input, so the maps are exactly the weights the forward pass uses.
        """
        check_context(idx.shape[1], 0, self.config.context_length)
        maps = []
        with eval_mode(self):
            x = self.embed(idx)
            for block in self.blocks:
                attn = block.attn
                queries, keys, _ = rearrange(
                    attn.qkv(block.norm1(x)), "b t (three h d) -> three b h t d", three=3, h=attn.n_heads
                )
                maps.append(attention_weights(queries, keys, attn.mask[: idx.shape[1], : idx.shape[1]]))
                x = block(x)
        return torch.stack(maps)

    def hidden_states(
        self, idx: Int[Tensor, "batch seq"], cache: KVCache | None = None
    ) -> Float[Tensor, "batch seq emb_dim"]:
        """The body's output: embeddings, every block, the final norm; what ``out_head`` turns into
        logits. A classifier (``shared.classify``) puts its own head on it instead."""
        start = cache.seq_len if cache is not None else 0
        check_context(idx.shape[1], start, self.config.context_length)
        x = self.drop_emb(self.embed(idx, start))
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None)
        return self.final_norm(x)

    def forward(self, idx: Int[Tensor, "batch seq"], cache: KVCache | None = None) -> Float[Tensor, "batch seq vocab"]:
        return self.out_head(self.hidden_states(idx, cache))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters; a tied matrix counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices (weights, embeddings), none on biases and norms."""
    decay, no_decay = [], []
    for p in model.parameters():  # tied parameters appear once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

"""Embeddings: token ids to vectors, and two ways to tell the model where each token is."""

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from shared.attention import check_context

__all__ = ["TokenPositionEmbedding", "check_token_ids", "sinusoidal_positions"]


def sinusoidal_positions(n_positions: int, emb_dim: int, base: float = 10_000.0) -> Float[Tensor, "seq emb_dim"]:
    """Fixed position encodings of "Attention Is All You Need" (section 3.5).

    Dimension pair ``i`` of position ``pos`` holds sin and cos of ``pos / base^(2i / emb_dim)``:
    every pair is a rotation at its own frequency, from one turn per ~6 positions down to nearly
    one turn per ``2π·base`` positions (exactly ``2π·base^((emb_dim-2)/emb_dim)``).
    """
    if emb_dim % 2:
        raise ValueError(f"emb_dim must be even (sin/cos pairs), got {emb_dim}")
    positions = torch.arange(n_positions, dtype=torch.float32)
    frequencies = base ** (-torch.arange(0, emb_dim, 2, dtype=torch.float32) / emb_dim)
    angles = torch.outer(positions, frequencies)  # (seq, emb_dim / 2)
    return rearrange([angles.sin(), angles.cos()], "two seq half -> seq (half two)")


def check_token_ids(idx: Int[Tensor, "batch seq"], vocab_size: int) -> None:
    """Refuse ids outside ``0 .. vocab_size - 1`` with a message (not a CUDA assert later).

    Models call it once, at their entry. Reading the smallest and largest id makes a GPU wait for
    them (a device-to-host sync) and would break a ``torch.compile`` graph, so compiled code skips it.
    """
    if torch.compiler.is_compiling():
        return
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        bad = idx[(idx < 0) | (idx >= vocab_size)]
        raise ValueError(
            f"token ids must be in 0..{vocab_size - 1} (vocab_size {vocab_size}), got "
            f"{bad[:8].tolist()}{' ...' if bad.numel() > 8 else ''}. Was the text encoded with the "
            "tokenizer this model was built for?"
        )


class TokenPositionEmbedding(nn.Module):
    """Token embedding plus a learned absolute position embedding (GPT-2's input layer)."""

    def __init__(self, vocab_size: int, context_length: int, emb_dim: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, emb_dim)
        self.pos = nn.Embedding(context_length, emb_dim)

    def forward(self, idx: Int[Tensor, "batch seq"], start: int = 0) -> Float[Tensor, "batch seq emb_dim"]:
        """Embed tokens at positions ``start .. start + seq - 1`` (``start > 0`` with a KV cache)."""
        check_token_ids(idx, self.tok.num_embeddings)
        check_context(idx.shape[1], start, self.pos.num_embeddings)
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.tok(idx) + self.pos(positions)

"""Supervised fine-tuning on instructions: learn to write the response, not to repeat the prompt.

Each example is a prompt followed by its response, in one token sequence. The model still predicts
every next token, but the loss averages only over the positions whose target is a response token:
the prompt is context, not something to imitate. A boolean mask says which targets count; it is
the same as setting the other targets to PyTorch's ignore index (-100) in ``F.cross_entropy``.
"""

from collections.abc import Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["collate_instructions", "masked_next_token_loss", "next_token_pairs", "token_log_probs"]


def collate_instructions(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Bool[Tensor, "batch seq"]]:
    """Join each (prompt ids, response ids) pair, pad on the right with ``pad_id`` to the longest,
    and mark the response tokens: ``(token_ids, response_mask)``. Padding and prompt are unmarked.

    Right padding keeps every real token's position, so a causal model sees the same thing as unpadded.
    """
    if not examples:
        raise ValueError("collate_instructions: got no examples; pass at least one (prompt, response) pair")
    for i, (prompt, response) in enumerate(examples):
        if not prompt or not response:
            raise ValueError(
                f"collate_instructions: example {i} has a prompt of {len(prompt)} and a response of "
                f"{len(response)} tokens; both need at least one (the prompt predicts the first response token)"
            )
    seq = max(len(prompt) + len(response) for prompt, response in examples)
    token_ids = torch.full((len(examples), seq), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(examples), seq), dtype=torch.bool)
    for i, (prompt, response) in enumerate(examples):
        token_ids[i, : len(prompt) + len(response)] = torch.tensor([*prompt, *response])
        response_mask[i, len(prompt) : len(prompt) + len(response)] = True
    return token_ids, response_mask


def next_token_pairs(
    token_ids: Int[Tensor, "batch seq"], response_mask: Bool[Tensor, "batch seq"]
) -> tuple[Int[Tensor, "batch seq-1"], Int[Tensor, "batch seq-1"], Bool[Tensor, "batch seq-1"]]:
    """``(inputs, targets, loss_mask)``: inputs are every token but the last, targets every token but
    the first, and a target counts when it is a response token."""
    if response_mask[:, 0].any():
        raise ValueError(
            "next_token_pairs: response_mask marks a sequence's first token, which no earlier token predicts; "
            "start every sequence with at least one prompt token"
        )
    return token_ids[:, :-1], token_ids[:, 1:], response_mask[:, 1:]


def token_log_probs(
    logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"]
) -> Float[Tensor, "batch seq"]:
    """log p(target) at every position, from the logits (computed in float32)."""
    log_probs = logits.float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, rearrange(targets, "b t -> b t 1"))
    return rearrange(picked, "b t 1 -> b t")


def masked_next_token_loss(
    logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"], loss_mask: Bool[Tensor, "batch seq"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy (nats) over the positions where ``loss_mask`` is True, all sequences pooled:
    each counted token weighs the same, wherever it sits in the batch."""
    n_counted = loss_mask.sum()
    if n_counted == 0:
        raise ValueError(
            "masked_next_token_loss: loss_mask is False everywhere, so there is no token to learn from; "
            "check that the responses were not cut off (e.g. by truncating to the context length)"
        )
    nll = -token_log_probs(logits, targets)
    return torch.where(loss_mask, nll, 0.0).sum() / n_counted

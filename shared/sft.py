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
from torch import Tensor, nn

from shared.datasets import seeded_batches

__all__ = [
    "collate_instructions",
    "masked_next_token_loss",
    "next_token_pairs",
    "response_loss",
    "token_log_probs",
    "train_sft",
]


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


def _context_length(model: nn.Module) -> int:
    return model.config.context_length


def _check_fits(examples: Sequence[Sequence[Sequence[int]]], context_length: int, caller: str) -> None:
    """Raise a clear error if an example (its parts joined) is longer than ``context_length`` tokens."""
    for i, parts in enumerate(examples):
        n = sum(len(part) for part in parts)
        if n > context_length:
            raise ValueError(
                f"{caller}: example {i} is {n} tokens long, longer than the model's context of {context_length}; "
                f"encode the conversations with shared.chat.encode_chats(..., max_tokens={context_length})"
            )


def train_sft(
    model: nn.Module,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    steps: int,
    pad_id: int,
    *,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Supervised fine-tuning: train the parameters of ``model`` that require grad (AdamW) on the
    response-only loss (:func:`masked_next_token_loss`) of (prompt ids, response ids) ``examples``,
    for ``steps`` batches of ``batch_size``; returns every step's loss (nats per response token).

    Batches are drawn as :func:`shared.classify.train_classifier` draws them: a walk through the
    examples in a random order, a new one each pass, from a generator seeded with ``seed``. The
    model trains in train mode (dropout on, if it has any) and gets its mode back at the end.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_sft: no parameter of this model requires grad, so nothing would train")
    if len(examples) < 1 or steps < 1:
        raise ValueError(f"train_sft: need at least one example and one step, got {len(examples)} and {steps}")
    _check_fits(examples, _context_length(model), "train_sft")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device = params[0].device
    losses = []
    was_training = model.training
    model.train()
    try:
        for batch in seeded_batches(len(examples), batch_size, steps, seed):
            token_ids, response_mask = collate_instructions([examples[i] for i in batch], pad_id)
            inputs, targets, loss_mask = next_token_pairs(token_ids.to(device), response_mask.to(device))
            loss = masked_next_token_loss(model(inputs), targets, loss_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.train(was_training)
    return losses


@torch.no_grad()
def response_loss(
    model: nn.Module, examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, *, batch_size: int = 64
) -> float:
    """The mean loss (nats) per response token of ``examples``, every response token weighing the
    same (in eval mode, in batches): the held-out number that says how well a model writes replies."""
    if not examples:
        raise ValueError("response_loss: got no examples")
    _check_fits(examples, _context_length(model), "response_loss")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(examples), batch_size):
            token_ids, response_mask = collate_instructions(examples[first : first + batch_size], pad_id)
            inputs, targets, loss_mask = next_token_pairs(token_ids.to(device), response_mask.to(device))
            n = int(loss_mask.sum())
            total += masked_next_token_loss(model(inputs), targets, loss_mask).item() * n
            count += n
    finally:
        model.train(was_training)
    return total / count

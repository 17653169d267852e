"""Direct preference optimisation (DPO, Rafailov et al. 2023): learn from pairs of answers to one prompt.

For each prompt a person preferred one response (chosen) over another (rejected). DPO raises the
policy's log-probability of the chosen response and lowers the rejected one's, each measured
*relative to a frozen reference model* (usually the SFT model it starts from), so the policy cannot
drift far from fluent text. No reward model and no sampling: one classification-like loss per pair.
"""

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from shared.chat import chat_token_ids, encode_chats
from shared.conversations import Conversation
from shared.datasets import seeded_batches
from shared.sft import collate_instructions, next_token_pairs, token_log_probs
from shared.tokenizer import BPETokenizer

__all__ = ["dpo_loss", "log_ratios", "preference_pairs", "response_log_probs", "train_dpo"]

Pair = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (prompt ids, chosen response ids, rejected response ids)


def response_log_probs(
    model: nn.Module, input_ids: Int[Tensor, "batch seq"], response_mask: Bool[Tensor, "batch seq"]
) -> Float[Tensor, " batch"]:
    """log p(response | prompt) of each sequence: the summed log-probabilities of its response tokens.

    ``response_mask[b, t]`` is True where token ``t`` of sequence ``b`` is a response token, i.e. a
    target that counts (what :func:`shared.sft.collate_instructions` returns); prompt and padding
    are False. Call it under ``torch.no_grad()`` for the reference model.
    """
    inputs, targets, loss_mask = next_token_pairs(input_ids, response_mask)
    log_probs = token_log_probs(model(inputs), targets)
    return log_probs.where(loss_mask, 0.0).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: Float[Tensor, " batch"],
    policy_rejected_logps: Float[Tensor, " batch"],
    ref_chosen_logps: Float[Tensor, " batch"],
    ref_rejected_logps: Float[Tensor, " batch"],
    beta: float,
) -> tuple[Float[Tensor, ""], Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """``(loss, chosen_rewards, rejected_rewards)`` for a batch of preference pairs.

    The implicit reward of a response is ``beta · (log p_policy - log p_reference)``; the loss is
    ``-log sigmoid(chosen reward - rejected reward)``, averaged over the batch. It is log 2 when the
    policy equals the reference. ``beta`` (often 0.1) sets how far the policy may move from the
    reference. The rewards are returned detached, for logging (as in the paper's code).
    """
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be positive, got {beta}; 0.1 is the usual starting value")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def preference_pairs(
    conversations: Sequence[Conversation],
    tokenizer: BPETokenizer,
    max_tokens: int,
    *,
    seed: int = 0,
    trim_prompt: bool = True,
) -> list[tuple[list[int], list[int], list[int]]]:
    """DPO pairs ``(prompt ids, chosen ids, rejected ids)`` from conversations of the plays.

    The prompt asks a character to answer a speech (:func:`shared.chat.render_chat`); the chosen
    response is that character's real reply; the rejected one is the reply of *another* character
    to *another* speech, drawn with a generator seeded by ``seed``, among the replies that fit: it
    is fluent Shakespeare, but not what this character said here. Each response ends with
    ``<|endofturn|>``. Conversations whose prompt and longer response do not fit in ``max_tokens``
    (``trim_prompt`` as in :func:`shared.chat.encode_chats`) or that find no rejected reply are left out.
    """
    _, end_id = chat_token_ids(tokenizer)
    speakers = {c.reply.speaker for c in conversations}
    if len(speakers) < 2:
        raise ValueError(
            f"preference_pairs: every reply is by {sorted(speakers)}; a rejected reply must come from another "
            "character, so give conversations with at least two answering characters"
        )
    rng = random.Random(seed)
    replies = [(c.reply.speaker, [*tokenizer.encode_ordinary(c.reply.text), end_id]) for c in conversations]
    pairs = []
    for i, conversation in enumerate(conversations):
        fitted = encode_chats([conversation.turns], tokenizer, max_tokens, trim_prompt=trim_prompt)
        if not fitted:
            continue
        prompt, chosen = fitted[0]
        room = max_tokens - len(prompt)
        others = [ids for j, (speaker, ids) in enumerate(replies)
                  if j != i and speaker != conversation.reply.speaker and len(ids) <= room]
        if others:
            pairs.append((prompt, chosen, rng.choice(others)))
    return pairs


def _pair_log_probs(
    model: nn.Module, pairs: Sequence[Pair], pad_id: int, device: torch.device
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """log p(chosen | prompt) and log p(rejected | prompt) of each pair, in one forward pass of 2 x batch rows."""
    examples = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    token_ids, response_mask = collate_instructions(examples, pad_id)
    logps = response_log_probs(model, token_ids.to(device), response_mask.to(device))
    chosen, rejected = rearrange(logps, "(two batch) -> two batch", two=2)
    return chosen, rejected


def _check_pairs(pairs: Sequence[Pair], context_length: int, caller: str) -> None:
    if not pairs:
        raise ValueError(f"{caller}: got no pairs; build them with shared.dpo.preference_pairs")
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        n = len(prompt) + max(len(chosen), len(rejected))
        if not prompt or not chosen or not rejected or n > context_length:
            raise ValueError(
                f"{caller}: pair {i} has {len(prompt)} prompt, {len(chosen)} chosen and {len(rejected)} rejected "
                f"tokens; each part needs one or more, and a prompt with its longer response must fit the model's "
                f"context of {context_length} (preference_pairs(..., max_tokens={context_length}) makes such pairs)"
            )


def train_dpo(
    policy: nn.Module,
    reference: nn.Module,
    pairs: Sequence[Pair],
    steps: int,
    pad_id: int,
    *,
    beta: float = 0.1,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``policy``'s parameters that require grad (AdamW) on :func:`dpo_loss` against the frozen
    ``reference`` (usually a copy of the SFT model ``policy`` starts from), for ``steps`` batches of
    ``batch_size`` ``(prompt, chosen, rejected)`` pairs, drawn as :func:`shared.sft.train_sft` draws them.

    The reference runs in eval mode under ``torch.no_grad()`` and is never changed. The policy runs
    with dropout off too (as TRL's DPO trainer does by default): dropout would make the two models
    differ by noise, and the log-ratios are what the loss reads. Returns, for every step, the batch's
    ``loss``, mean ``chosen_reward`` and ``rejected_reward`` (beta x log-ratio), ``margin`` (their
    difference) and ``accuracy`` (share of pairs whose chosen reward beats the rejected one).
    """
    if policy is reference:
        raise ValueError("train_dpo: the policy and the reference are the same model; pass a frozen copy "
                         "(copy.deepcopy(sft_model)) as the reference")
    if beta <= 0:
        raise ValueError(f"train_dpo: beta must be positive, got {beta}; 0.1 is the usual starting value")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_dpo: no parameter of the policy requires grad, so nothing would train")
    if steps < 1:
        raise ValueError(f"train_dpo: need at least one step, got {steps}")
    _check_pairs(pairs, min(policy.config.context_length, reference.config.context_length), "train_dpo")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = params[0].device
    history = []
    modes = policy.training, reference.training
    policy.eval()
    reference.eval()
    try:
        for batch in seeded_batches(len(pairs), batch_size, steps, seed):
            chunk = [pairs[i] for i in batch]
            with torch.no_grad():
                ref_chosen, ref_rejected = _pair_log_probs(reference, chunk, pad_id, device)
            policy_chosen, policy_rejected = _pair_log_probs(policy, chunk, pad_id, device)
            loss, chosen_rewards, rejected_rewards = dpo_loss(
                policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append({
                "loss": loss.item(),
                "chosen_reward": chosen_rewards.mean().item(),
                "rejected_reward": rejected_rewards.mean().item(),
                "margin": (chosen_rewards - rejected_rewards).mean().item(),
                "accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            })
    finally:
        policy.train(modes[0])
        reference.train(modes[1])
    return history


@torch.no_grad()
def log_ratios(
    policy: nn.Module, reference: nn.Module, pairs: Sequence[Pair], pad_id: int, *, batch_size: int = 64
) -> tuple[Float[Tensor, " pairs"], Float[Tensor, " pairs"]]:
    """How far ``policy`` moved from ``reference`` on each pair: ``(chosen, rejected)`` log-ratios
    ``log p_policy(response | prompt) - log p_reference(response | prompt)`` in nats (on the CPU).
    Both are 0 before DPO; DPO pushes chosen minus rejected up. Computed in eval mode."""
    _check_pairs(pairs, min(policy.config.context_length, reference.config.context_length), "log_ratios")
    device = next(policy.parameters()).device
    chosen, rejected = [], []
    modes = policy.training, reference.training
    policy.eval()
    reference.eval()
    try:
        for first in range(0, len(pairs), batch_size):
            chunk = pairs[first : first + batch_size]
            policy_chosen, policy_rejected = _pair_log_probs(policy, chunk, pad_id, device)
            ref_chosen, ref_rejected = _pair_log_probs(reference, chunk, pad_id, device)
            chosen.append((policy_chosen - ref_chosen).cpu())
            rejected.append((policy_rejected - ref_rejected).cpu())
    finally:
        policy.train(modes[0])
        reference.train(modes[1])
    return torch.cat(chosen), torch.cat(rejected)

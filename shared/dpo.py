"""Direct preference optimisation (DPO, Rafailov et al. 2023): learn from pairs of answers to one prompt.

For each prompt a person preferred one response (chosen) over another (rejected). DPO raises the
policy's log-probability of the chosen response and lowers the rejected one's, each measured
*relative to a frozen reference model* (usually the SFT model it starts from), so the policy cannot
drift far from fluent text. No reward model and no sampling: one classification-like loss per pair.
"""

import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from shared.sft import next_token_pairs, token_log_probs

__all__ = ["dpo_loss", "response_log_probs"]


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

"""DPO: the loss against a hand computation, its fixed point and gradient, and response log-probabilities."""

import copy
import math

import pytest
import torch

from shared.dpo import dpo_loss, response_log_probs
from shared.lora import apply_lora
from shared.model import GPTConfig, GPTModel
from shared.sft import collate_instructions

CONFIG = GPTConfig(vocab_size=13, context_length=10, emb_dim=16, n_heads=2, n_layers=2)
PROMPTS = [[1, 2, 3], [4, 5]]
CHOSEN = [[6, 7], [8, 9, 10, 11]]
REJECTED = [[7, 6, 12], [11]]


def small_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(CONFIG).eval()


def test_dpo_loss_on_a_hand_computed_example():
    beta = 0.1
    policy_chosen, policy_rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-7.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-6.0, -2.0]), torch.tensor([-6.5, -4.0])
    # Pair 0: chosen gained 1.0 nat, rejected lost 0.5 -> margin 0.1 * (1.0 - (-0.5)) = 0.15.
    # Pair 1: chosen lost 1.0, rejected gained 2.0 -> margin 0.1 * (-1.0 - 2.0) = -0.3.
    # -log sigmoid(m) = log(1 + exp(-m)).
    expected = (math.log(1 + math.exp(-0.15)) + math.log(1 + math.exp(0.3))) / 2
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.1, -0.1])
    assert rejected_rewards.tolist() == pytest.approx([-0.05, 0.2])


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    logps = torch.randn(4, 5) * 10
    for beta in (0.01, 0.1, 1.0):
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[0], logps[1], logps[0], logps[1], beta)
        assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
        assert not chosen_rewards.any() and not rejected_rewards.any()


def test_gradient_pushes_chosen_up_and_rejected_down():
    policy_chosen = torch.tensor([-5.0, -3.0, -8.0], requires_grad=True)
    policy_rejected = torch.tensor([-7.0, -2.0, -4.0], requires_grad=True)
    reference = torch.tensor([-6.0, -2.0, -5.0])
    loss, chosen_rewards, _ = dpo_loss(policy_chosen, policy_rejected, reference, reference, beta=0.5)
    loss.backward()
    assert (policy_chosen.grad < 0).all()  # gradient descent raises log p(chosen)
    assert (policy_rejected.grad > 0).all()  # and lowers log p(rejected)
    assert not chosen_rewards.requires_grad  # rewards are for logging


def test_dpo_loss_refuses_a_non_positive_beta():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta must be positive, got 0"):
        dpo_loss(x, x, x, x, beta=0)


def test_response_log_probs_equals_a_loop_over_positions():
    model = small_model()
    token_ids, response_mask = collate_instructions(list(zip(PROMPTS, CHOSEN, strict=True)), pad_id=0)
    expected = []
    for prompt, response in zip(PROMPTS, CHOSEN, strict=True):
        sequence, total = prompt + response, 0.0
        for t in range(len(prompt), len(sequence)):  # each response token, predicted from everything before it
            logits = model(torch.tensor([sequence[:t]]))[0, -1]
            total += logits.log_softmax(-1)[sequence[t]].item()
        expected.append(total)
    got = response_log_probs(model, token_ids, response_mask)
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-5)


def test_dpo_steps_with_lora_prefer_the_chosen_responses():
    reference = small_model()
    policy = apply_lora(copy.deepcopy(reference), ["qkv", "out_head"], rank=2, alpha=4)
    chosen = collate_instructions(list(zip(PROMPTS, CHOSEN, strict=True)), pad_id=0)
    rejected = collate_instructions(list(zip(PROMPTS, REJECTED, strict=True)), pad_id=0)
    with torch.no_grad():
        ref_chosen, ref_rejected = response_log_probs(reference, *chosen), response_log_probs(reference, *rejected)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            response_log_probs(policy, *chosen), response_log_probs(policy, *rejected), ref_chosen, ref_rejected, 0.1
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts exactly at the reference
    assert losses[-1] < losses[0] and (chosen_rewards > rejected_rewards).all()

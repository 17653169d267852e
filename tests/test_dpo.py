"""DPO: the loss against a hand computation, its fixed point and gradient, and response log-probabilities."""

import copy
import math

import pytest
import torch

from shared.chat import chat_token_ids, encode_chats, with_chat_tokens
from shared.conversations import play_conversations
from shared.corpus import shakespeare_bpe
from shared.dpo import dpo_loss, log_ratios, preference_pairs, response_log_probs, train_dpo
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


# -- train_dpo, preference_pairs, log_ratios ---------------------------------------------------

PAIRS = [(p, c, r) for p, c, r in zip(PROMPTS, CHOSEN, REJECTED, strict=True)]


def test_train_dpo_starts_at_log_2_prefers_the_chosen_and_leaves_the_reference_alone():
    reference = small_model()
    policy = copy.deepcopy(reference)
    frozen = copy.deepcopy(reference.state_dict())
    history = train_dpo(policy, reference, PAIRS * 4, steps=15, pad_id=0, beta=0.5, batch_size=4, lr=1e-2)
    assert set(history[0]) >= {"loss", "chosen_reward", "rejected_reward", "accuracy", "margin"}
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as the reference
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] == 1.0
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.grad is not None for p in reference.parameters())
    chosen, rejected = log_ratios(policy, reference, PAIRS, pad_id=0)
    assert (chosen > rejected).all()  # the policy moved towards the chosen responses
    # The rewards it logged are beta x these log-ratios.
    same = train_dpo(copy.deepcopy(reference), reference, PAIRS, steps=1, pad_id=0, beta=0.5, batch_size=2)
    assert same[0]["chosen_reward"] == pytest.approx(0.0, abs=1e-6)


def test_log_ratios_are_the_differences_of_response_log_probs():
    reference, policy = small_model(), GPTModel(CONFIG).eval()
    chosen, rejected = log_ratios(policy, reference, PAIRS, pad_id=0)
    for i, (prompt, good, bad) in enumerate(PAIRS):
        for response, got in ((good, chosen[i]), (bad, rejected[i])):
            ids, mask = collate_instructions([(prompt, response)], pad_id=0)
            with torch.no_grad():
                expected = response_log_probs(policy, ids, mask) - response_log_probs(reference, ids, mask)
            assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_train_dpo_names_bad_input():
    model = small_model()
    with pytest.raises(ValueError, match="the same model"):
        train_dpo(model, model, PAIRS, steps=1, pad_id=0)
    with pytest.raises(ValueError, match="must fit the model's context of 10"):
        train_dpo(model, small_model(), [([1] * 8, [2, 3, 4], [5])], steps=1, pad_id=0)
    with pytest.raises(ValueError, match="got no pairs"):
        train_dpo(model, small_model(), [], steps=1, pad_id=0)
    with pytest.raises(ValueError, match="beta must be positive"):
        train_dpo(model, small_model(), PAIRS, steps=1, pad_id=0, beta=0.0)


def test_preference_pairs_choose_the_real_reply_and_reject_another_characters():
    tokenizer = with_chat_tokens(shakespeare_bpe())
    _, end_id = chat_token_ids(tokenizer)
    conversations = play_conversations().sft[:60]
    pairs = preference_pairs(conversations, tokenizer, max_tokens=64, seed=0)
    assert 0 < len(pairs) <= len(conversations)
    assert pairs == preference_pairs(conversations, tokenizer, max_tokens=64, seed=0)  # deterministic
    by_prompt = {}
    for c in conversations:
        fitted = encode_chats([c.turns], tokenizer, 64, trim_prompt=True)
        if fitted:
            by_prompt[tuple(fitted[0][0])] = c
    replies = {tuple([*tokenizer.encode_ordinary(c.reply.text), end_id]): c.reply.speaker for c in conversations}
    for prompt, chosen, rejected in pairs:
        asked = by_prompt[tuple(prompt)]
        assert tokenizer.decode(chosen[:-1]) == asked.reply.text and chosen[-1] == end_id
        assert rejected[-1] == end_id and replies[tuple(rejected)] != asked.reply.speaker
        assert len(prompt) + max(len(chosen), len(rejected)) <= 64
    with pytest.raises(ValueError, match="at least two answering characters"):
        preference_pairs([conversations[0]], tokenizer, max_tokens=64)


def test_the_gpt2_base_takes_the_chat_tokens_and_runs_an_sft_and_a_dpo_step(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.base import load_base
    from shared.chat import grow_vocabulary
    from shared.settings import pick_setting
    from shared.sft import train_sft

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(
        tmp_path, safe_serialization=True
    )
    base = load_base(pick_setting(), "gpt2", "cpu", gpt2_weights=tmp_path)
    tokenizer = with_chat_tokens(base.tokenizer)
    turn_id, end_id = chat_token_ids(tokenizer)
    assert (turn_id, end_id) == (50_257, 50_258)  # after GPT-2's last id, whatever the vocabulary
    model = grow_vocabulary(base.model, tokenizer.vocab_size)
    assert model.out_head.weight.shape[0] == tokenizer.vocab_size
    conversations = play_conversations().sft[:40]
    examples = encode_chats([c.turns for c in conversations], tokenizer, 64, trim_prompt=True)
    losses = train_sft(model, examples, steps=1, pad_id=end_id, batch_size=4)
    assert len(losses) == 1 and math.isfinite(losses[0])
    pairs = preference_pairs(conversations, tokenizer, 64)
    history = train_dpo(copy.deepcopy(model), model, pairs, steps=1, pad_id=end_id, batch_size=4)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)

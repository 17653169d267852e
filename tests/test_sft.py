"""Instruction fine-tuning: only response tokens count, each exactly once, and padding changes nothing."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from shared.model import GPTConfig, GPTModel
from shared.sft import (
    collate_instructions,
    masked_next_token_loss,
    next_token_pairs,
    response_loss,
    token_log_probs,
    train_sft,
)

EXAMPLES = [([5, 6, 7], [8, 9]), ([3], [4, 10, 11, 12, 2]), ([1, 2, 3, 4, 5], [6])]
PAD = 0


def random_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.rand(3, 7, generator=g) < 0.5
    mask[0, 0] = True  # at least one counted token
    return logits, targets, mask


def test_collate_joins_pads_on_the_right_and_marks_the_responses():
    token_ids, response_mask = collate_instructions(EXAMPLES, pad_id=PAD)
    assert token_ids.tolist() == [[5, 6, 7, 8, 9, 0], [3, 4, 10, 11, 12, 2], [1, 2, 3, 4, 5, 6]]
    assert response_mask.int().tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]
    inputs, targets, loss_mask = next_token_pairs(token_ids, response_mask)
    assert inputs.tolist()[0] == [5, 6, 7, 8, 9] and targets.tolist()[0] == [6, 7, 8, 9, 0]
    assert loss_mask.int().tolist()[0] == [0, 0, 1, 1, 0]  # 7 predicts 8, 8 predicts 9; the pad counts for nothing


def test_loss_counts_every_marked_token_exactly_once():
    logits, targets, mask = random_batch()
    terms = [
        -math.log(math.exp(logits[b, t, targets[b, t]].item()) / logits[b, t].exp().sum().item())
        for b in range(3)
        for t in range(7)
        if mask[b, t]
    ]
    loss = masked_next_token_loss(logits, targets, mask)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    # The same as PyTorch's ignore-index convention: the unmarked targets set to -100.
    reference = F.cross_entropy(logits.flatten(0, 1), targets.masked_fill(~mask, -100).flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, reference)


def test_targets_outside_the_mask_do_not_change_the_loss():
    logits, targets, mask = random_batch()
    other = torch.where(mask, targets, (targets + 1 + torch.arange(7)) % 11)  # every unmarked target changed
    assert not torch.equal(other, targets)
    assert torch.equal(masked_next_token_loss(logits, other, mask), masked_next_token_loss(logits, targets, mask))
    changed_inside = targets.clone()
    changed_inside[0, 0] = (targets[0, 0] + 1) % 11
    assert masked_next_token_loss(logits, changed_inside, mask) != masked_next_token_loss(logits, targets, mask)


def test_token_log_probs_are_log_softmax_at_the_targets():
    logits, targets, _ = random_batch(1)
    expected = torch.tensor([[logits[b, t].log_softmax(-1)[targets[b, t]].item() for t in range(7)] for b in range(3)])
    torch.testing.assert_close(token_log_probs(logits, targets), expected)


def test_padding_a_batch_changes_no_examples_loss():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=13, context_length=8, emb_dim=16, n_heads=2, n_layers=2)).eval()

    def loss_and_count(token_ids, response_mask):
        inputs, targets, loss_mask = next_token_pairs(token_ids, response_mask)
        return masked_next_token_loss(model(inputs), targets, loss_mask), loss_mask.sum().item()

    alone = [loss_and_count(*collate_instructions([example], pad_id=PAD)) for example in EXAMPLES]
    token_ids, response_mask = collate_instructions(EXAMPLES, pad_id=PAD)
    assert (token_ids == PAD).any(), "the batch should need padding"
    for i, (loss, _) in enumerate(alone):
        row = loss_and_count(token_ids[i : i + 1], response_mask[i : i + 1])[0]
        torch.testing.assert_close(row, loss, rtol=0, atol=1e-6)
    pooled = sum(loss * n for loss, n in alone) / sum(n for _, n in alone)  # each response token weighs the same
    torch.testing.assert_close(loss_and_count(token_ids, response_mask)[0], pooled, rtol=0, atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="example 1 has a prompt of 2 and a response of 0 tokens"):
        collate_instructions([([1], [2]), ([1, 2], [])], pad_id=PAD)
    with pytest.raises(ValueError, match="got no examples"):
        collate_instructions([], pad_id=PAD)
    logits, targets, mask = random_batch()
    with pytest.raises(ValueError, match="loss_mask is False everywhere"):
        masked_next_token_loss(logits, targets, torch.zeros_like(mask))
    token_ids, response_mask = collate_instructions(EXAMPLES, pad_id=PAD)
    response_mask[1, 0] = True
    with pytest.raises(ValueError, match="marks a sequence's first token"):
        next_token_pairs(token_ids, response_mask)


# -- train_sft and response_loss ---------------------------------------------------------------


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=13, context_length=8, emb_dim=16, n_heads=2, n_layers=2))


def test_train_sft_lowers_the_response_loss_reproducibly_and_restores_the_mode():
    examples = EXAMPLES * 4
    before = response_loss(tiny_model().eval(), examples, pad_id=PAD)
    model = tiny_model().eval()
    losses = train_sft(model, examples, steps=30, pad_id=PAD, batch_size=4, lr=1e-2, seed=1)
    assert len(losses) == 30 and not model.training
    assert response_loss(model, examples, pad_id=PAD) < 0.5 * before
    again = train_sft(tiny_model().eval(), examples, steps=30, pad_id=PAD, batch_size=4, lr=1e-2, seed=1)
    assert again == losses  # same seed, same model: the same run


def test_train_sft_first_loss_is_the_masked_loss_of_its_first_batch():
    model = tiny_model()
    # One step with a batch of every example: the first loss is the batch's masked loss before any update.
    expected = response_loss(copy.deepcopy(model), EXAMPLES, pad_id=PAD)
    (loss,) = train_sft(model, EXAMPLES, steps=1, pad_id=PAD, batch_size=len(EXAMPLES), lr=1e-2)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_train_sft_trains_only_what_requires_grad_and_names_bad_input():
    model = tiny_model()
    model.blocks.requires_grad_(False)
    frozen = copy.deepcopy(model.blocks.state_dict())
    train_sft(model, EXAMPLES, steps=2, pad_id=PAD, lr=1e-2)
    assert all(torch.equal(v, model.blocks.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(ValueError, match="longer than the model's context of 8"):
        train_sft(model, [([1, 2, 3, 4, 5], [6, 7, 8, 9])], steps=1, pad_id=PAD)
    with pytest.raises(ValueError, match="nothing would train"):
        train_sft(model.requires_grad_(False), EXAMPLES, steps=1, pad_id=PAD)
    with pytest.raises(ValueError, match="at least one example and one step"):
        train_sft(tiny_model(), EXAMPLES, steps=0, pad_id=PAD)

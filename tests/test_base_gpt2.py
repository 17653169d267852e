"""Chapter 11 with the GPT-2 flag: a small Hugging Face GPT-2 with random weights, saved locally, goes
through the same pipeline as chapter 7's model (GPT-2's tokenizer, real-or-shuffled texts, a
classifier step, LoRA), so nothing in it may assume chapter 7's vocabulary or ids."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared.base import load_base
from shared.classify import SequenceClassifier, accuracy, encode_texts, train_classifier
from shared.lora import LoRALinear, apply_lora, count_trainable
from shared.settings import pick_setting
from shared.tasks import real_or_shuffled_task

SMOKE = pick_setting("cpu", name="cpu", smoke=True)


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(
        folder, safe_serialization=True)
    return load_base(SMOKE, "gpt2", "cpu", gpt2_weights=folder)


@pytest.fixture(scope="module")
def examples(gpt2_base):
    task = real_or_shuffled_task(seed=0)
    texts = task.train[:8]
    context = gpt2_base.model.config.context_length
    ids = encode_texts(gpt2_base.tokenizer.encode, [e.text for e in texts], context, crop=True)
    return [(i, e.label) for i, e in zip(ids, texts, strict=True)]


def test_gpt2_tokens_reach_beyond_chapter_7s_vocabulary(gpt2_base, examples):
    assert gpt2_base.tokenizer.vocab_size == gpt2_base.model.config.vocab_size == 50_257
    assert max(max(ids) for ids, _ in examples) >= 1_024  # real GPT-2 ids, not chapter 1's 1,024-token BPE
    assert all(len(ids) <= 64 for ids, _ in examples)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_one_classifier_step_on_gpt2_runs_and_trains_what_it_should(gpt2_base, examples, lora):
    torch.manual_seed(0)
    classifier = SequenceClassifier(copy.deepcopy(gpt2_base.model), 2)
    if lora:
        apply_lora(classifier.body, ["qkv", "project"], rank=4, alpha=8)
        assert sum(isinstance(m, LoRALinear) for m in classifier.modules()) == 4
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    pad_id = gpt2_base.tokenizer.encode("\n")[0]
    losses = train_classifier(classifier, examples, steps=1, pad_id=pad_id, batch_size=8, lr=1e-3)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    changed = {name for name, p in classifier.named_parameters() if not torch.equal(p, before[name])}
    trainable, total = count_trainable(classifier)
    if lora:  # the head and every A (B gets its first update too); nothing of the pretrained body
        assert {"head.weight", "head.bias"} <= changed
        assert all("lora_" in name or name.startswith("head.") for name in changed)
        assert any(name.endswith("lora_B") for name in changed)
        assert trainable == 2 * (4 * (32 + 96) + 4 * (128 + 32)) + 2 * 32 + 2
    else:
        assert "body.embed.tok.weight" in changed and trainable == total
    assert 0.0 <= accuracy(classifier, examples, pad_id) <= 1.0

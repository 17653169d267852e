"""Classification from a causal model: the body's output, padding that changes nothing, pooling by
hand, what trains in each setting (frozen, LoRA), clear errors, and a training helper that learns."""

import copy

import pytest
import torch
from jaxtyping import TypeCheckError

from shared.classify import (
    SequenceClassifier,
    accuracy,
    collate_classification,
    encode_texts,
    pad_token_ids,
    train_classifier,
)
from shared.llama import LlamaConfig, LlamaModel
from shared.lora import LoRALinear, apply_lora, count_trainable
from shared.model import GPTConfig, GPTModel
from shared.shapes import shape_checks

GPT = GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
LLAMA = LlamaConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, hidden_dim=64, n_kv_heads=2)
MODELS = {"gpt": (GPTModel, GPT, "qkv"), "llama": (LlamaModel, LLAMA, "q_proj")}


def build(kind: str, seed: int = 0) -> GPTModel | LlamaModel:
    torch.manual_seed(seed)
    model_class, config, _ = MODELS[kind]
    return model_class(config).eval()


def random_sequences(lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("kind", MODELS)
def test_hidden_states_is_the_body_inside_forward(kind):
    model = build(kind)
    x = torch.tensor(random_sequences([10, 10]))
    hidden = model.embed(x) if kind == "gpt" else model.tok_emb(x)  # the path written out by hand
    for block in model.blocks:
        hidden = block(hidden)
    hidden = model.final_norm(hidden)
    assert torch.equal(model.hidden_states(x), hidden)
    assert torch.equal(model(x), model.out_head(hidden))


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("kind", MODELS)
def test_padding_a_batch_changes_no_example(kind, pooling):
    torch.manual_seed(0)
    classifier = SequenceClassifier(build(kind), n_classes=3, pooling=pooling).eval()
    sequences = random_sequences([3, 16, 1, 9])
    with torch.no_grad():
        alone = torch.cat([classifier(torch.tensor([ids]), torch.tensor([len(ids)])) for ids in sequences])
        batched = [classifier(*pad_token_ids(sequences, pad_id)) for pad_id in (0, 60)]
    for logits in batched:
        torch.testing.assert_close(logits, alone, atol=1e-6, rtol=1e-5)
    assert torch.equal(batched[0], batched[1])  # the pad token is never read


def test_pooling_by_hand():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    lengths = torch.tensor([2, 4])
    last = SequenceClassifier(build("gpt"), 2, "last").pool(hidden, lengths)
    mean = SequenceClassifier(build("gpt"), 2, "mean").pool(hidden, lengths)
    assert torch.equal(last, torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(mean, torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))


def test_pad_and_collate_by_hand():
    token_ids, lengths = pad_token_ids([[5, 6], [7], [1, 2, 3]], pad_id=9)
    assert token_ids.tolist() == [[5, 6, 9], [7, 9, 9], [1, 2, 3]]
    assert lengths.tolist() == [2, 1, 3]
    token_ids, lengths, labels = collate_classification([([4], 1), ([2, 3], 0)], pad_id=0)
    assert (token_ids.tolist(), lengths.tolist(), labels.tolist()) == ([[4, 0], [2, 3]], [1, 2], [1, 0])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pad_token_ids([[1], []], pad_id=0)


def test_too_long_a_text_is_a_clear_error():
    def encode(text):
        return [ord(c) for c in text]

    with pytest.raises(ValueError, match=r"text 1 is 20 tokens long, longer than the context of 16.*crop=True"):
        encode_texts(encode, ["short", "x" * 20], context_length=16)
    assert encode_texts(encode, ["abc", "x" * 20], context_length=16, crop=True) == [[97, 98, 99], [120] * 16]
    classifier = SequenceClassifier(build("gpt"), 2)
    with pytest.raises(ValueError, match=r"longest text in this batch is 17 tokens.*context of 16.*[Cc]rop"):
        classifier(*pad_token_ids([[1] * 17], pad_id=0))
    with pytest.raises(ValueError, match="lengths must be between 1 and the padded length 4"):
        classifier(torch.zeros(2, 4, dtype=torch.long), torch.tensor([4, 5]))


def test_a_crop_keeps_the_first_or_the_last_tokens():
    def encode(text):
        return [ord(c) for c in text]

    texts = ["abc", "abcdefghij"]
    first = encode_texts(encode, texts, context_length=4, crop=True, keep="first")
    last = encode_texts(encode, texts, context_length=4, crop=True, keep="last")
    assert first == [encode("abc"), encode("abcd")]  # the default keeps the start
    assert first == encode_texts(encode, texts, context_length=4, crop=True)
    assert last == [encode("abc"), encode("ghij")]  # a short text is never cut, from either end
    with pytest.raises(TypeCheckError, match="keep"):  # the annotation refuses it when checks are on,
        encode_texts(encode, texts, context_length=4, crop=True, keep="end")
    with shape_checks(False), pytest.raises(ValueError, match=r"keep must be 'first' or 'last'.*got 'end'"):
        encode_texts(encode, texts, context_length=4, crop=True, keep="end")  # and the function when off
    with pytest.raises(ValueError, match=r"keep each text's last 4 tokens"):
        encode_texts(encode, texts, context_length=4, keep="last")


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        SequenceClassifier(build("gpt"), 1)
    with pytest.raises(TypeCheckError, match="pooling"):  # the annotation refuses it when checks are on,
        SequenceClassifier(build("gpt"), 2, pooling="first")
    with shape_checks(False), pytest.raises(ValueError, match="pooling must be 'last' or 'mean'"):  # and when off
        SequenceClassifier(build("gpt"), 2, pooling="first")


@pytest.mark.parametrize("kind", MODELS)
def test_what_trains_full_frozen_and_lora(kind):
    head = GPT.emb_dim * 2 + 2
    model_size = count_trainable(build(kind))[1]
    full = SequenceClassifier(build(kind), 2)
    out_head = full.body.out_head.weight.numel()  # unused by a classifier, so frozen
    assert count_trainable(full) == (model_size - out_head + head, model_size + head)
    frozen = SequenceClassifier(build(kind), 2).freeze_body()
    assert count_trainable(frozen)[0] == head

    lora = SequenceClassifier(build(kind), 2)
    target = MODELS[kind][2]
    apply_lora(lora.body, [target], rank=2, alpha=4)
    layers = [m for m in lora.body.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 2
    adapters = sum(m.lora_A.numel() + m.lora_B.numel() for m in layers)
    assert count_trainable(lora)[0] == adapters + head
    # After a few steps only the adapters and the head have moved.
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_(std=0.1)  # B starts at zero, which would leave A without a gradient
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    train_classifier(lora, [(ids, i % 2) for i, ids in enumerate(random_sequences([5, 8, 3, 12]))], steps=2, pad_id=0)
    moved = {name for name, p in lora.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {name for name, p in lora.named_parameters() if "lora_" in name or name.startswith("head.")}
    assert len(moved) == 2 * len(layers) + 2


def test_a_tied_output_head_stays_trainable_as_the_embedding():
    torch.manual_seed(0)
    classifier = SequenceClassifier(GPTModel(GPTConfig(**{**GPT.to_dict(), "tie_weights": True})), 2)
    assert classifier.body.embed.tok.weight.requires_grad
    assert count_trainable(classifier)[0] == count_trainable(classifier)[1]


def separable_examples(n: int, seed: int) -> list[tuple[list[int], int]]:
    """Class 0 texts use tokens 1-10, class 1 texts tokens 11-20, at lengths 2 to 12."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        label, length = i % 2, int(torch.randint(2, 13, (), generator=generator))
        tokens = torch.randint(1 + 10 * label, 11 + 10 * label, (length,), generator=generator)
        examples.append((tokens.tolist(), label))
    return examples


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_train_classifier_learns_a_separable_task_deterministically(pooling):
    train, test = separable_examples(64, seed=0), separable_examples(40, seed=1)
    torch.manual_seed(0)
    classifier = SequenceClassifier(build("gpt"), 2, pooling)
    start = copy.deepcopy(classifier)
    assert accuracy(classifier, test, pad_id=0) < 0.9
    losses = train_classifier(classifier, train, steps=8, pad_id=0, batch_size=16, lr=3e-3, seed=0)
    assert losses[-1] < 0.1 < 0.5 < losses[0]
    assert accuracy(classifier, test, pad_id=0) == 1.0
    assert classifier.training  # the mode it had
    assert train_classifier(start, train, steps=8, pad_id=0, batch_size=16, lr=3e-3, seed=0) == losses


def test_accuracy_by_hand():
    classifier = SequenceClassifier(build("llama"), 3)
    with torch.no_grad():  # a head that always answers class 2
        classifier.head.weight.zero_()
        classifier.head.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    examples = [([1, 2], 2), ([3], 0), ([4, 5, 6], 2), ([7], 1), ([8, 9], 2)]
    assert accuracy(classifier, examples, pad_id=0, batch_size=2) == 3 / 5


def test_train_classifier_refuses_a_fully_frozen_model():
    classifier = SequenceClassifier(build("gpt"), 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing would train"):
        train_classifier(classifier, [([1], 0)], steps=1, pad_id=0)


def word_order_examples(n: int, seed: int, real_share: float = 0.4) -> list[tuple[list[int], int]]:
    """Sorted runs of distinct tokens (label 1) or the same tokens shuffled (label 0): only the order
    of the tokens tells the classes apart, as in chapter 11's real-or-shuffled task."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        tokens = sorted(torch.randperm(60, generator=generator)[: 6 + i % 6].add(1).tolist())
        if i < real_share * n:
            examples.append((tokens, 1))
        else:
            order = torch.randperm(len(tokens), generator=generator).tolist()
            while order == sorted(order):
                order = torch.randperm(len(tokens), generator=generator).tolist()
            examples.append(([tokens[j] for j in order], 0))
    return examples


@pytest.mark.parametrize("how", ["full", "lora"])
def test_a_fine_tuned_classifier_beats_the_majority_class_on_held_out_word_order(how):
    # The margins this test promises: held-out accuracy at least this far above always answering the majority
    # class (measured: 0.96 fully trained, 0.80 with LoRA on the random body, against 0.60).
    margin = {"full": 0.25, "lora": 0.15}[how]
    train, test = word_order_examples(240, seed=0), word_order_examples(100, seed=1)
    majority = max(sum(label for _, label in test), sum(1 - label for _, label in test)) / len(test)
    assert majority == 0.6
    torch.manual_seed(0)
    classifier = SequenceClassifier(build("gpt"), 2)
    if how == "lora":
        apply_lora(classifier.body, ["qkv", "out_proj", "expand", "project"], rank=4, alpha=8)
    with shape_checks(False):
        train_classifier(classifier, train, steps=60, pad_id=0, batch_size=32, lr=3e-3, seed=0)
        score = accuracy(classifier, test, pad_id=0)
    assert score >= majority + margin, f"{how}: {score:.3f} on held-out texts, majority class {majority:.3f}"

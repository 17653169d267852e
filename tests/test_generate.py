from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from shared.attention import KVCache
from shared.generate import (
    generate,
    generate_text,
    sample_next,
    set_decode_layout,
    top_k_filter,
    top_p_filter,
    trim_at_eos,
)
from shared.llama import LlamaConfig, LlamaModel
from shared.model import GPTConfig, GPTModel
from shared.weights import load_gpt2_from_hf

from .test_model import SMALL, hf_gpt2
from .test_train import CharTokenizer

PROMPTS = torch.randint(0, 101, (3, 5), generator=torch.Generator().manual_seed(7))


LONGER = replace(SMALL, context_length=64)  # Hugging Face's GPT-2 cannot run past its context


@pytest.fixture(scope="module")
def model_pair():
    hf = hf_gpt2(LONGER, seed=11)
    return load_gpt2_from_hf(GPTModel(LONGER), hf.state_dict()).eval(), hf


def test_greedy_continuation_equals_hugging_face_generate(model_pair):
    ours, hf = model_pair
    expected = hf.generate(
        PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=30, do_sample=False, pad_token_id=0
    )
    for use_cache in (True, False):
        assert torch.equal(generate(ours, PROMPTS, 30, use_cache=use_cache), expected)


@pytest.mark.parametrize("n_new", [1, 10, 27, 60])  # 5 + 60 runs well past the 32-token context
@pytest.mark.parametrize("use_sdpa", [False, True])
def test_cached_generation_equals_uncached_greedy_and_sampled(n_new, use_sdpa):
    torch.manual_seed(0)
    model = GPTModel(SMALL, use_sdpa=use_sdpa).double()  # float64: ties in argmax are not an issue
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # a peaky, far-from-uniform next-token distribution
    greedy = [generate(model, PROMPTS, n_new, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1]) and greedy[0].shape == (3, 5 + n_new)
    sampled = [
        generate(
            model,
            PROMPTS,
            n_new,
            temperature=0.8,
            top_k=20,
            top_p=0.9,
            use_cache=c,
            generator=torch.Generator().manual_seed(123),
        )
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])


def test_sampling_is_repeatable_with_a_seeded_generator_and_varies_without(model_pair):
    ours, _ = model_pair

    def run(seed):
        return generate(ours, PROMPTS, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


@given(seed=st.integers(0, 10_000), k=st.integers(1, 30), p=st.floats(0.01, 1.0), temperature=st.floats(0.05, 3.0))
def test_top_k_and_top_p_never_sample_outside_the_allowed_set(seed, k, p, temperature):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 30, generator=generator) * 3
    scaled = logits / temperature
    kth = torch.topk(scaled, k).values[:, -1:]
    in_top_k = scaled >= kth
    probs = torch.softmax(top_k_filter(scaled, k), dim=-1)
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    # the nucleus: tokens whose higher-ranked predecessors cover less than p
    threshold = torch.stack(
        [sorted_probs[r][(sorted_probs[r].cumsum(0) - sorted_probs[r]) < p].min() for r in range(4)]
    )
    allowed = in_top_k & (probs >= threshold[:, None])
    for _ in range(20):
        ids = sample_next(logits, temperature, top_k=k, top_p=p, generator=generator)
        assert allowed[torch.arange(4), ids].all()


def test_filters_keep_what_they_promise():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    # probabilities ~ [0.087, 0.644, 0.237, 0.032]: 0.644 alone < 0.7, so the nucleus is {1, 2}
    assert torch.isinf(top_p_filter(logits, 0.7)).tolist() == [[True, False, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.5)).tolist() == [[True, False, True, True]]
    assert not torch.isinf(top_p_filter(logits, 1.0)).any()


class CountingModel(nn.Module):
    """A stand-in language model: after token t it always predicts t + 1 (mod vocab)."""

    context_length = 64

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.vocab = vocab

    def new_cache(self) -> KVCache:
        return KVCache(1)

    def forward(self, idx, cache=None):
        if cache is not None:
            cache.layers[0].update(
                torch.zeros(idx.shape[0], 1, idx.shape[1], 1), torch.zeros(idx.shape[0], 1, idx.shape[1], 1)
            )
        return torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float() * 10


@pytest.mark.parametrize("use_cache", [True, False])
def test_rows_finish_at_their_own_end_of_text_and_stop_growing(use_cache):
    eos = 9
    prompts = torch.tensor([[7], [4], [8]])  # reach 9 after 2, 5 and 1 new tokens
    out = generate(CountingModel(), prompts, 10, eos_id=eos, use_cache=use_cache)
    assert out.tolist() == [[7, 8, 9, 9, 9, 9], [4, 5, 6, 7, 8, 9], [8, 9, 9, 9, 9, 9]]  # stopped after 5 steps
    assert trim_at_eos(out, eos, start=1) == [[7, 8, 9], [4, 5, 6, 7, 8, 9], [8, 9]]
    never = generate(CountingModel(), torch.tensor([[0]]), 5, eos_id=eos, use_cache=use_cache)
    assert never.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_invalid_arguments_are_refused_clearly(model_pair):
    ours, _ = model_pair
    cases = [
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(ours, PROMPTS, 5, **kwargs)
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(ours, torch.zeros(1, 0, dtype=torch.long), 5)


def test_generation_restores_training_mode_and_crops_long_prompts():
    model = GPTModel(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.5))
    model.train()
    out = generate(model, torch.randint(0, 50, (2, 20)), 4)  # a 20-token prompt, 8-token context
    assert out.shape == (2, 24) and model.training


def test_generate_text_round_trips_through_a_tokenizer():
    text = generate_text(CountingModel(26), CharTokenizer(), "abc", 4)
    assert text == "abcdefg"


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_decode_layout_moves_memory_only_and_generates_the_same_tokens(family):
    torch.manual_seed(3)
    if family == "gpt":
        model = GPTModel(replace(SMALL, tie_weights=True)).double().eval()
    else:
        config = LlamaConfig(
            vocab_size=101, context_length=32, emb_dim=32, n_heads=4, n_layers=2, hidden_dim=96, n_kv_heads=2
        )
        model = LlamaModel(config).double().eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) > 4
    values = {name: t.clone() for name, t in model.state_dict().items()}
    logits = model(PROMPTS)
    tokens = generate(model, PROMPTS, 20)
    sampled = generate(model, PROMPTS, 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    n_params = len(list(model.parameters()))

    assert set_decode_layout(model) is model
    for m in linears:
        assert m.weight.t().is_contiguous() and not m.weight.is_contiguous()
    if family == "gpt":  # still one tensor: the token embedding reads the head's new layout
        assert model.out_head.weight is model.embed.tok.weight
    assert len(list(model.parameters())) == n_params
    assert all(torch.equal(t, values[name]) for name, t in model.state_dict().items())
    torch.testing.assert_close(model(PROMPTS), logits, rtol=1e-12, atol=1e-12)
    assert torch.equal(generate(model, PROMPTS, 20), tokens)
    assert torch.equal(
        generate(model, PROMPTS, 20, temperature=1.0, generator=torch.Generator().manual_seed(5)), sampled
    )
    set_decode_layout(model)  # idempotent
    assert all(m.weight.t().is_contiguous() for m in linears)

    # load_state_dict copies values into the decode layout rather than replacing it
    model.load_state_dict(values)
    assert all(m.weight.t().is_contiguous() for m in linears)

    set_decode_layout(model, enabled=False)
    assert all(m.weight.is_contiguous() for m in linears)
    assert all(torch.equal(t, values[name]) for name, t in model.state_dict().items())

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from shared.attention import attend, causal_mask
from shared.datasets import create_dataloader
from shared.generate import generate
from shared.llama import (
    LlamaAttention,
    LlamaConfig,
    LlamaModel,
    RMSNorm,
    apply_rope,
    apply_rope_interleaved,
    halves_permutation,
    load_llama_from_hf,
    rope_angles,
    swiglu_hidden_dim,
)
from shared.train import TrainConfig, train

SMALL = LlamaConfig(vocab_size=103, context_length=64, emb_dim=64, n_heads=4, n_layers=2, hidden_dim=176)
GQA = replace(SMALL, n_kv_heads=2, rope_theta=500_000.0)  # a non-default theta must reach HF too
IDS = torch.randint(0, 103, (3, 40), generator=torch.Generator().manual_seed(42))


def hf_llama(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Hugging Face Llama of the given shape, built locally (no download)."""
    torch.manual_seed(seed)
    hf_config = HFLlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.emb_dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.context_length,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,  # transformers 4 and 5 both accept it
        tie_word_embeddings=config.tie_weights,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # HF initialises norms to 1; random scales make the comparison sharper
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("config", [SMALL, GQA], ids=["multi-head", "grouped-query"])
@pytest.mark.parametrize("use_sdpa", [False, True])
def test_logits_equal_hugging_face_llama(config, use_sdpa):
    hf = hf_llama(config)
    ours = load_llama_from_hf(LlamaModel(config, use_sdpa=use_sdpa), hf.state_dict()).eval()
    with torch.no_grad():
        assert (ours(IDS) - hf(IDS).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("config", [SMALL, GQA], ids=["multi-head", "grouped-query"])
def test_greedy_continuations_equal_hugging_face_generate(config):
    hf = hf_llama(config, seed=3)
    ours = load_llama_from_hf(LlamaModel(config), hf.state_dict()).eval()
    prompt = IDS[:, :5]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False)
    assert torch.equal(generate(ours, prompt, 30), expected)


def test_safetensors_round_trip_and_a_mismatching_config_is_refused(tmp_path):
    hf = hf_llama(GQA, seed=5)
    hf.save_pretrained(tmp_path)
    ours = load_llama_from_hf(LlamaModel(GQA), tmp_path / "model.safetensors").eval()
    with torch.no_grad():
        assert (ours(IDS) - hf(IDS).logits).abs().max().item() <= 1e-5
    with pytest.raises(
        ValueError, match=r"blocks\.0\.attn\.k_proj\.weight: the model has \(64, 64\), the checkpoint \(32, 64\)"
    ):
        load_llama_from_hf(LlamaModel(SMALL), hf.state_dict())  # 4 key/value heads vs the checkpoint's 2


# -- RoPE --------------------------------------------------------------------------------------


@given(m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(0, 300), seed=st.integers(0, 1000))
def test_rope_scores_depend_only_on_the_relative_position(m, n, shift, seed):
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, 16, generator=generator), torch.randn(1, 1, 1, 16, generator=generator)
    cos, sin = rope_angles(16, 600)

    def score(i, j):
        return (apply_rope(q, cos[i : i + 1], sin[i : i + 1]) * apply_rope(k, cos[j : j + 1], sin[j : j + 1])).sum()

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=2e-4, rtol=1e-4)


def test_rope_is_a_rotation_and_position_zero_is_the_identity():
    x = torch.randn(2, 3, 10, 8)
    cos, sin = rope_angles(8, 10)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])


def test_interleaved_and_halves_layouts_agree_after_permuting_features():
    x = torch.randn(2, 3, 7, 8)
    cos, sin = rope_angles(8, 7)
    perm = halves_permutation(8)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    torch.testing.assert_close(apply_rope_interleaved(x, cos, sin)[..., perm], apply_rope(x[..., perm], cos, sin))


def test_values_are_not_rotated():
    torch.manual_seed(0)
    attn = LlamaAttention(SMALL).eval()
    x = torch.randn(2, 9, 64)

    def heads(t):
        return t.reshape(2, 9, 4, 16).transpose(1, 2)  # test-side reference, written the plain way

    cos, sin = rope_angles(16, 9)
    q, k, v = (
        apply_rope(heads(attn.q_proj(x)), cos, sin),
        apply_rope(heads(attn.k_proj(x)), cos, sin),
        heads(attn.v_proj(x)),
    )
    expected = attn.o_proj(attend(q, k, v, causal_mask(9)).transpose(1, 2).reshape(2, 9, 64))
    torch.testing.assert_close(attn(x), expected)
    rotated_v = attn.o_proj(attend(q, k, apply_rope(v, cos, sin), causal_mask(9)).transpose(1, 2).reshape(2, 9, 64))
    assert not torch.allclose(attn(x), rotated_v, atol=1e-4)


# -- RMSNorm, SwiGLU ---------------------------------------------------------------------------


def test_rms_norm_equals_torch_rms_norm():
    ours, ref = RMSNorm(32, eps=1e-6), torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, 32) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x))
    x_bf16 = x.bfloat16()
    assert ours.bfloat16()(x_bf16).dtype == torch.bfloat16


def test_rms_norm_never_mixes_positions():
    norm = RMSNorm(8)
    x = torch.randn(1, 5, 8)
    changed = x.clone()
    changed[:, 3:] *= 100
    torch.testing.assert_close(norm(x)[:, :3], norm(changed)[:, :3])


def test_swiglu_hidden_size_is_two_thirds_of_four_times_rounded_up():
    assert swiglu_hidden_dim(4096, multiple_of=256) == 11008  # Llama 2 7B
    assert swiglu_hidden_dim(64) == 192 and swiglu_hidden_dim(96, multiple_of=32) == 256


# -- with generation and training --------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, replace(GQA, context_length=16)], ids=["mha", "gqa-sliding"])
def test_cached_generation_equals_uncached(config):
    torch.manual_seed(1)
    model = LlamaModel(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    prompt = IDS[:2, :6]
    for kwargs in ({}, {"temperature": 0.9, "top_k": 30}):
        runs = [
            generate(model, prompt, 25, use_cache=c, generator=torch.Generator().manual_seed(0), **kwargs)
            for c in (True, False)
        ]
        assert torch.equal(runs[0], runs[1])


def test_llama_trains_with_the_shared_loop():
    config = LlamaConfig(
        vocab_size=40, context_length=16, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, hidden_dim=64
    )
    torch.manual_seed(0)
    tokens = torch.randint(0, 40, (200,))
    loader = create_dataloader(tokens, batch_size=8, context_length=16, stride=4, seed=1)
    history = train(
        LlamaModel(config),
        loader,
        None,
        TrainConfig(max_steps=200, lr=3e-3, warmup_steps=20, weight_decay=0.0, eval_every=200, progress=False),
    )
    assert history.step_losses[-1] < 0.2


def test_config_validation():
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"):
        replace(SMALL, n_kv_heads=3)
    with pytest.raises(ValueError, match="must be even for RoPE"):
        LlamaConfig(vocab_size=10, context_length=8, emb_dim=12, n_heads=4, n_layers=1, hidden_dim=16)

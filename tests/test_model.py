import math
from dataclasses import replace

import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

import shared.model as model_module
from shared.model import GPT2_124M, GPTConfig, GPTModel, LayerNorm, count_parameters, param_groups
from shared.weights import gpt2_config, load_gpt2_from_hf

SMALL = GPTConfig(
    vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=3, drop_rate=0.0, qkv_bias=True, tie_weights=True
)


UNTIED = replace(SMALL, tie_weights=False)


def hf_gpt2(config: GPTConfig = SMALL, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised Hugging Face GPT-2 of the given shape, built locally (no download)."""
    torch.manual_seed(seed)
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context_length,
        n_embd=config.emb_dim,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=config.tie_weights,
    )
    return GPT2LMHeadModel(hf_config).eval()


def scale_up(hf: GPT2LMHeadModel, seed: int = 1) -> GPT2LMHeadModel:
    """Weights large enough that GELU's variant, LayerNorm's eps and every bias matter.

    Linear weights and biases ~ N(0, 0.25), norm scales ~ N(1, 0.25); embeddings tiny (std 0.003)
    so the first LayerNorm sees a variance comparable to its eps. Use an untied model: the output
    head keeps large weights while the input embedding is tiny.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "wte" in name or "wpe" in name:
                p.copy_(noise * 0.003)
            elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.25 * noise)
            else:
                p.copy_(0.25 * noise)
    return hf


def ours_from(hf: GPT2LMHeadModel, config: GPTConfig = SMALL, use_sdpa: bool = False) -> GPTModel:
    return load_gpt2_from_hf(GPTModel(config, use_sdpa=use_sdpa), hf.state_dict()).eval()


def max_logit_diff(ours: GPTModel, hf: GPT2LMHeadModel, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(idx) - hf(idx).logits).abs().max().item()


IDS = torch.randint(0, 101, (3, 32), generator=torch.Generator().manual_seed(42))

# -- equality with Hugging Face ----------------------------------------------------------------


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_logits_equal_hugging_face_gpt2_in_float32(use_sdpa):
    hf = hf_gpt2()
    assert max_logit_diff(ours_from(hf, use_sdpa=use_sdpa), hf, IDS) <= 1e-5


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_logits_equal_hugging_face_gpt2_with_scaled_up_weights(use_sdpa):
    hf = scale_up(hf_gpt2(UNTIED)).double()
    ours = ours_from(hf, UNTIED, use_sdpa=use_sdpa).double()
    with torch.no_grad():
        assert hf(IDS).logits.abs().max() > 3  # the weights really are large (default init: ~0.1)
    assert max_logit_diff(ours, hf, IDS) <= 1e-5


def test_the_scaled_up_comparison_catches_exact_gelu(monkeypatch):
    hf = scale_up(hf_gpt2(UNTIED)).double()
    monkeypatch.setattr(model_module.GELU, "forward", lambda self, x: torch.nn.functional.gelu(x))
    assert max_logit_diff(ours_from(hf, UNTIED).double(), hf, IDS) > 1e-4


def test_the_scaled_up_comparison_catches_a_wrong_eps(monkeypatch):
    hf = scale_up(hf_gpt2(UNTIED)).double()
    original = LayerNorm.__init__
    monkeypatch.setattr(LayerNorm, "__init__", lambda self, emb_dim, eps=1e-5: original(self, emb_dim, 1e-6))
    assert max_logit_diff(ours_from(hf, UNTIED).double(), hf, IDS) > 1e-4


def test_the_scaled_up_comparison_catches_a_missing_bias():
    hf = scale_up(hf_gpt2(UNTIED)).double()
    ours = ours_from(hf, UNTIED).double()
    with torch.no_grad():
        ours.blocks[1].ff.project.bias.zero_()
    assert max_logit_diff(ours, hf, IDS) > 1e-4


def test_safetensors_file_round_trip_loads_the_same_model(tmp_path):
    hf = hf_gpt2(seed=3)
    hf.save_pretrained(tmp_path)  # writes model.safetensors (without the tied lm_head copy)
    ours = load_gpt2_from_hf(GPTModel(SMALL), tmp_path / "model.safetensors").eval()
    assert max_logit_diff(ours, hf, IDS) <= 1e-5


def test_a_checkpoint_from_another_config_is_refused_with_every_mismatch_listed():
    hf = hf_gpt2()
    with pytest.raises(ValueError) as info:
        load_gpt2_from_hf(GPTModel(replace(SMALL, emb_dim=32)), hf.state_dict())
    message = str(info.value)
    assert (
        "shape mismatches" in message
        and "embed.tok.weight: the model has (101, 32), the checkpoint (101, 48)" in message
    )
    with pytest.raises(ValueError, match=r"not in the model: \['blocks\.0\.attn\.qkv\.bias'"):
        load_gpt2_from_hf(GPTModel(replace(SMALL, qkv_bias=False)), hf.state_dict())
    with pytest.raises(ValueError, match="missing in the checkpoint"):
        load_gpt2_from_hf(GPTModel(replace(SMALL, n_layers=4)), hf.state_dict())


# -- parameter counts (on the meta device: no memory, instant) ---------------------------------


def n_params(config: GPTConfig) -> int:
    with torch.device("meta"):
        return count_parameters(GPTModel(config))


def test_parameter_counts_of_the_124m_configuration():
    no_qkv_bias = replace(GPT2_124M, qkv_bias=False)
    assert n_params(replace(no_qkv_bias, tie_weights=False)) == 163_009_536
    assert n_params(no_qkv_bias) == 124_412_160
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config()).parameters())
    assert n_params(GPT2_124M) == hf_count == 124_439_808  # GPT-2 as released has Q/K/V biases


def test_gpt2_sizes_match_hugging_face_configs():
    for size, hf_kwargs in {"355M": {"n_embd": 1024, "n_layer": 24, "n_head": 16}}.items():
        config = gpt2_config(size)
        with torch.device("meta"):
            expected = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**hf_kwargs)).parameters())
        assert n_params(config) == expected


# -- structure ---------------------------------------------------------------------------------


def test_weight_tying_shares_storage_and_untied_does_not():
    tied = GPTModel(SMALL)
    assert tied.out_head.weight is tied.embed.tok.weight
    tied(IDS).sum().backward()
    assert tied.embed.tok.weight.grad is tied.out_head.weight.grad
    untied = GPTModel(replace(SMALL, tie_weights=False))
    assert untied.out_head.weight.data_ptr() != untied.embed.tok.weight.data_ptr()


def test_param_groups_decay_matrices_only_and_cover_every_parameter_once():
    model = GPTModel(SMALL)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_initialisation_follows_gpt2():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=1000, context_length=64, emb_dim=256, n_heads=4, n_layers=8)
    model = GPTModel(config)
    assert abs(model.blocks[0].ff.expand.weight.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].ff.project.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)
    assert abs(model.blocks[0].attn.out_proj.weight.std().item() - 0.02 / 4) < 0.0005
    assert torch.all(model.blocks[0].ff.expand.bias == 0) and torch.all(model.final_norm.weight == 1)


def test_layer_norm_equals_its_formula_and_pytorch():
    ours, ref = LayerNorm(16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 7, 16) * 3 + 1
    formula = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(ours(x), formula * ref.weight + ref.bias)
    torch.testing.assert_close(ours(x), ref(x))


def test_gelu_is_the_tanh_approximation():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(model_module.GELU()(x), formula, atol=1e-12, rtol=0)
    assert (model_module.GELU()(x) - torch.nn.functional.gelu(x)).abs().max() > 1e-4  # not the exact GELU


# -- properties of the whole model -------------------------------------------------------------


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), t=st.integers(0, 30), use_sdpa=st.booleans())
def test_model_is_causal(seed, t, use_sdpa):
    torch.manual_seed(seed)
    model = GPTModel(SMALL, use_sdpa=use_sdpa).eval()
    idx = torch.randint(0, 101, (2, 32))
    changed = idx.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 101
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, : t + 1], model(changed)[:, : t + 1], atol=1e-5, rtol=0)


def test_model_batch_equals_rows_one_by_one_and_cache_equals_full():
    model = GPTModel(SMALL).eval()
    with torch.no_grad():
        full = model(IDS)
        torch.testing.assert_close(full, torch.cat([model(IDS[i : i + 1]) for i in range(3)]), atol=1e-5, rtol=0)
        cache = model.new_cache()
        pieces = [model(IDS[:, :20], cache)] + [model(IDS[:, i : i + 1], cache) for i in range(20, 32)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


# -- errors ------------------------------------------------------------------------------------


def test_config_validation_explains_the_problem():
    with pytest.raises(ValueError, match=r"emb_dim \(50\) must be divisible by n_heads \(4\)"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=50, n_heads=4, n_layers=1)
    with pytest.raises(ValueError, match="drop_rate must be in"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=1.5)
    with pytest.raises(ValueError, match="n_layers must be at least 1"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=8, n_heads=2, n_layers=0)


def test_too_long_input_and_unknown_ids_are_refused():
    model = GPTModel(SMALL)
    with pytest.raises(ValueError, match="33 tokens exceed the context length of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in 0\.\.100 .* got \[101\]"):
        model(torch.tensor([[5, 101]]))


def test_attention_maps_are_the_weights_the_forward_pass_uses():
    torch.manual_seed(0)
    model = GPTModel(replace(SMALL, drop_rate=0.1)).train()
    idx = torch.randint(0, SMALL.vocab_size, (2, 10))
    maps = model.attention_maps(idx)
    assert maps.shape == (SMALL.n_layers, 2, SMALL.n_heads, 10, 10) and model.training  # the mode is restored
    torch.testing.assert_close(maps.sum(-1), torch.ones(SMALL.n_layers, 2, SMALL.n_heads, 10))
    assert (maps.triu(diagonal=1) == 0).all()  # causal: no weight on later positions
    model.eval()
    x = model.embed(idx)
    for layer, block in enumerate(model.blocks):  # weights x values, merged and projected = the attention output
        _, _, values = rearrange(block.attn.qkv(block.norm1(x)), "b t (three h d) -> three b h t d", three=3,
                                 h=SMALL.n_heads)
        merged = rearrange(maps[layer] @ values, "b h t d -> b t (h d)")
        torch.testing.assert_close(block.attn.out_proj(merged), block.attn(block.norm1(x)), atol=1e-5, rtol=1e-5)
        x = block(x)

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import TypeCheckError

from shared.attention import (
    CausalAttention,
    LayerKVCache,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention,
    attend,
    attention_weights,
    causal_mask,
)

ATOL = 1e-6


def make_mha(d_in=12, d_out=12, n_heads=3, context=16, dropout=0.0, qkv_bias=True, use_sdpa=False, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_in, d_out, n_heads, context, dropout, qkv_bias, use_sdpa)


def sdpa_twin(module: MultiHeadAttention) -> MultiHeadAttention:
    twin = MultiHeadAttention(
        module.d_in,
        module.out_proj.out_features,
        module.n_heads,
        module.context_length,
        module.dropout.p,
        module.qkv.bias is not None,
        use_sdpa=True,
    )
    twin.load_state_dict(module.state_dict())
    return twin


# -- the functions -----------------------------------------------------------------------------


def test_causal_mask_hides_exactly_the_future():
    assert causal_mask(3).tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    # two new queries after three cached keys: positions 3 and 4 of 5
    assert causal_mask(2, 5).tolist() == [[False] * 4 + [True], [False] * 5]


def test_attention_weights_are_a_softmax_of_scaled_dot_products():
    q, k = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    expected = torch.softmax(torch.einsum("bqd,bkd->bqk", q, k) / 2.0, dim=-1)
    torch.testing.assert_close(attention_weights(q, k), expected)
    masked = attention_weights(q, k, causal_mask(5))
    assert torch.all(masked.triu(1) == 0)
    torch.testing.assert_close(masked.sum(-1), torch.ones(2, 5))


def test_attend_equals_pytorch_sdpa():
    q, k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    torch.testing.assert_close(attend(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)
    torch.testing.assert_close(
        attend(q, k, v, causal_mask(7)), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=0
    )


def test_self_attention_module_equals_its_formula():
    torch.manual_seed(0)
    module = SelfAttention(5, 3)
    x = torch.randn(6, 5)  # one unbatched sequence works too: "*batch"
    q, k, v = x @ module.W_query.weight.T, x @ module.W_key.weight.T, x @ module.W_value.weight.T
    expected = torch.softmax(q @ k.T / math.sqrt(3), dim=-1) @ v
    torch.testing.assert_close(module(x), expected)


# -- MultiHeadAttention against references -----------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_explicit_path_equals_sdpa_path(train):
    explicit = make_mha(dropout=0.0)
    fast = sdpa_twin(explicit)
    explicit.train(train)
    fast.train(train)
    x = torch.randn(3, 11, 12)
    torch.testing.assert_close(explicit(x), fast(x), atol=ATOL, rtol=0)


def test_equals_torch_nn_multihead_attention_with_copied_weights():
    ours = make_mha(d_in=16, d_out=16, n_heads=4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)  # rows: queries, keys, values (ours too)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 9, 16)
    expected, _ = ref(x, x, x, attn_mask=causal_mask(9), need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)


def test_wrapper_of_single_heads_equals_the_fused_module():
    torch.manual_seed(1)
    wrapper = MultiHeadAttentionWrapper(12, 12, 3, 16, qkv_bias=True).eval()
    fused = make_mha().eval()
    with torch.no_grad():
        for part, name in enumerate(["W_query", "W_key", "W_value"]):
            fused.qkv.weight[part * 12 : (part + 1) * 12] = torch.cat([getattr(h, name).weight for h in wrapper.heads])
            fused.qkv.bias[part * 12 : (part + 1) * 12] = torch.cat([getattr(h, name).bias for h in wrapper.heads])
        fused.out_proj.load_state_dict(wrapper.out_proj.state_dict())
    x = torch.randn(2, 10, 12)
    torch.testing.assert_close(wrapper(x), fused(x), atol=ATOL, rtol=0)


# -- properties --------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 3),
    seq=st.integers(2, 12),
    heads=st.sampled_from([1, 2, 4]),
    t=st.integers(0, 10),
    use_sdpa=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_future_positions_never_change_past_outputs(batch, seq, heads, t, use_sdpa, seed):
    t = min(t, seq - 2)
    module = make_mha(d_in=8, d_out=8, n_heads=heads, use_sdpa=use_sdpa, seed=seed).eval()
    x = torch.randn(batch, seq, 8)
    changed = x.clone()
    changed[:, t + 1 :] = torch.randn(batch, seq - t - 1, 8) * 10
    torch.testing.assert_close(module(x)[:, : t + 1], module(changed)[:, : t + 1], atol=ATOL, rtol=0)
    assert not torch.allclose(module(x)[:, t + 1 :], module(changed)[:, t + 1 :])


@given(seed=st.integers(0, 1000), use_sdpa=st.booleans())
def test_causal_single_head_and_wrapper_are_causal(seed, use_sdpa):
    torch.manual_seed(seed)
    for module in [CausalAttention(6, 4, 10), MultiHeadAttentionWrapper(6, 4, 2, 10)]:
        x = torch.randn(2, 8, 6)
        changed = x.clone()
        changed[:, 5:] += 1.0
        torch.testing.assert_close(module(x)[:, :5], module(changed)[:, :5], atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_a_batch_gives_the_same_outputs_as_its_rows_one_by_one(use_sdpa):
    module = make_mha(use_sdpa=use_sdpa).eval()
    x = torch.randn(5, 9, 12)
    one_by_one = torch.cat([module(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(module(x), one_by_one, atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("chunks", [[9], [1] * 9, [4, 1, 1, 3], [2, 7]])
def test_cached_incremental_attention_equals_full_attention(use_sdpa, chunks):
    module = make_mha(use_sdpa=use_sdpa).eval()
    x = torch.randn(2, 9, 12)
    cache, outputs, start = LayerKVCache(), [], 0
    for size in chunks:
        outputs.append(module(x[:, start : start + size], cache))
        start += size
    assert cache.seq_len == 9
    torch.testing.assert_close(torch.cat(outputs, dim=1), module(x), atol=ATOL, rtol=0)


def test_kv_cache_grows_its_buffer_and_keeps_every_position():
    module = make_mha(context=80).eval()
    x = torch.randn(2, 70, 12)
    cache, outputs = LayerKVCache(), []
    capacities = set()
    for start in range(0, 70, 7):  # 10 appends of 7 positions: the buffer must grow twice or more
        outputs.append(module(x[:, start : start + 7], cache))
        capacities.add(cache._keys.shape[-2])
        assert cache.keys.shape == (2, 3, start + 7, 4) and cache.values.shape == (2, 3, start + 7, 4)
    assert len(capacities) >= 3 and cache.seq_len == 70
    torch.testing.assert_close(torch.cat(outputs, dim=1), module(x), atol=ATOL, rtol=0)
    full = LayerKVCache()
    module(x, full)
    torch.testing.assert_close(cache.keys, full.keys, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.values, full.values, atol=ATOL, rtol=0)


def test_dropout_changes_training_outputs_but_not_evaluation_outputs():
    with_dropout = make_mha(dropout=0.5)
    without = make_mha(dropout=0.0)  # same seed, same weights
    x = torch.randn(2, 8, 12)
    torch.manual_seed(0)
    a = with_dropout(x)
    torch.manual_seed(1)
    b = with_dropout(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, without(x))
    with_dropout.eval()
    torch.testing.assert_close(with_dropout(x), without.eval()(x))
    sdpa = sdpa_twin(with_dropout).train()
    assert not torch.allclose(sdpa(x), without(x))


# -- the mask buffer ---------------------------------------------------------------------------


def test_mask_buffer_follows_the_module_and_is_not_saved():
    module = make_mha()
    assert "mask" not in module.state_dict() and "mask" in dict(module.named_buffers())
    on_meta = module.to("meta")
    assert on_meta.mask.device.type == "meta" and on_meta.qkv.weight.device.type == "meta"
    double = make_mha().double()
    assert double.mask.dtype == torch.bool  # a boolean mask keeps its dtype ...
    out = double(torch.randn(1, 4, 12, dtype=torch.float64))  # ... and works with float64 inputs
    assert out.dtype == torch.float64


# -- errors ------------------------------------------------------------------------------------


def test_heads_must_divide_the_output_dimension():
    with pytest.raises(ValueError, match=r"d_out \(10\) must be divisible by n_heads \(4\)"):
        MultiHeadAttention(8, 10, 4, 16)


def test_too_long_a_sequence_is_refused():
    with pytest.raises(ValueError, match="exceed the context length of 16"):
        make_mha()(torch.randn(1, 17, 12))
    cache = LayerKVCache()
    module = make_mha()
    module(torch.randn(1, 15, 12), cache)
    with pytest.raises(ValueError, match="after 15 cached positions"):
        module(torch.randn(1, 2, 12), cache)


def test_wrong_input_width_names_the_dimension():
    with pytest.raises(TypeCheckError, match="d_in"):
        make_mha()(torch.randn(2, 5, 11))
    with pytest.raises(TypeCheckError, match="d_in"):
        CausalAttention(6, 4, 10)(torch.randn(2, 5, 7))


def test_missing_batch_dimension_is_a_shape_error():
    with pytest.raises(TypeCheckError, match="batch seq"):
        make_mha()(torch.randn(5, 12))

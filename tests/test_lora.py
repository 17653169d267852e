"""LoRA: exact start, only the adapters train, exact merge, the parameter count, and agreement with peft."""

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.llama import LlamaConfig, LlamaModel
from shared.lora import LoRALinear, apply_lora, count_trainable, merge_and_unwrap, merge_lora, unmerge_lora
from shared.model import GPTConfig, GPTModel
from shared.train.loop import cross_entropy

ROOT = Path(__file__).resolve().parent.parent
GPT = GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
LLAMA = LlamaConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, hidden_dim=64, n_kv_heads=2)
# (model class, config, targets): a last name component and a dotted name in each list.
MODELS = {
    "gpt": (GPTModel, GPT, ["qkv", "ff.project", "out_head"]),
    "llama": (LlamaModel, LLAMA, ["q_proj", "v_proj", "ff.down"]),
}


def build(kind: str) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    model_class, config, targets = MODELS[kind]
    return model_class(config).eval(), targets


def tokens(batch: int = 3, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, 61, (batch, seq), generator=torch.Generator().manual_seed(1))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def randomize_b(model: nn.Module) -> None:
    """A trained-looking update: B starts at zero, which would make every comparison trivial.

    At std 0.1 the update moves the GPT's logits by up to 1.0 (about 2.5 times their own size) and the Llama's by up
    to 0.27, far above the tolerances below; merged and unmerged outputs differ by a few 1e-7. At std 0.5 (10 times
    the logits' size, no longer trained-looking) the merged weights' fp32 rounding reached 1.6e-5 under PyTorch's
    portable kernels with MKL's compatible path (ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE, on an AMD Zen 4).
    """
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)


@pytest.mark.parametrize("kind", MODELS)
def test_wrapped_model_starts_exactly_equal_to_the_base(kind):
    base, targets = build(kind)
    wrapped = apply_lora(copy.deepcopy(base), targets, rank=4, alpha=8)
    assert lora_layers(wrapped), "nothing was wrapped"
    x = tokens()
    assert torch.equal(wrapped(x), base(x))


@pytest.mark.parametrize("kind", MODELS)
def test_training_changes_only_the_lora_matrices(kind):
    model, targets = build(kind)
    apply_lora(model, targets, rank=4, alpha=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # decay would move frozen ones
    x = tokens()
    for _ in range(3):  # step 1 moves B only (A's gradient is zero while B is); step 2 moves A too
        loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    expected = {f"{name}.lora_{m}" for name in lora_layers(model) for m in "AB"}
    assert changed == expected


@pytest.mark.parametrize("kind", MODELS)
def test_merge_matches_unmerged_and_unmerge_restores_the_weights(kind):
    model, targets = build(kind)
    apply_lora(model, targets, rank=4, alpha=8)
    randomize_b(model)
    originals = {name: layer.base.weight.clone() for name, layer in lora_layers(model).items()}
    x = tokens()
    unmerged = model(x)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
    assert not torch.equal(model(x), build(kind)[0](x)), "the merged update should change the output"
    unmerge_lora(model)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, originals[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)


def test_merging_twice_or_unmerging_an_unmerged_layer_is_refused():
    layer = LoRALinear(nn.Linear(8, 5), rank=2, alpha=4)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    model, targets = build("gpt")
    apply_lora(model, targets, rank=2, alpha=4)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(model)
    next(iter(lora_layers(model).values())).merge()
    with pytest.raises(RuntimeError, match="already merged"):  # refused before any other layer merges
        merge_lora(model)
    assert sum(layer.merged for layer in lora_layers(model).values()) == 1


@pytest.mark.parametrize("kind", MODELS)
def test_trainable_count_is_rank_times_in_plus_out_per_wrapped_layer(kind):
    model, targets = build(kind)
    _, total_before = count_trainable(model)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    rank = 3
    apply_lora(model, targets, rank=rank, alpha=6)
    by_hand = sum(rank * (linears[name].in_features + linears[name].out_features) for name in lora_layers(model))
    assert count_trainable(model) == (by_hand, total_before + by_hand)


def test_scaling_is_alpha_over_rank_and_dropout_only_touches_the_lora_branch():
    base = nn.Linear(8, 5)
    layer = LoRALinear(base, rank=4, alpha=2, dropout=0.5)
    assert layer.scaling == 0.5 and layer.base is base and not base.weight.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    layer.eval()
    expected = base(x) + 0.5 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    layer.train()
    torch.manual_seed(0)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    torch.manual_seed(0)
    torch.testing.assert_close(layer(x), base(x) + 0.5 * dropped @ layer.lora_A.T @ layer.lora_B.T)


def test_rank_below_one_is_refused():
    model, targets = build("gpt")
    with pytest.raises(ValueError, match="rank must be at least 1, got 0"):
        apply_lora(model, targets, rank=0, alpha=8)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_a_target_that_matches_nothing_lists_the_linear_layers():
    model, _ = build("gpt")
    with pytest.raises(ValueError, match=r"'q_proj' matches no module.*blocks\.0\.attn\.qkv.*out_head"):
        apply_lora(model, ["qkv", "q_proj"], rank=4, alpha=8)
    assert not lora_layers(model)


def test_a_target_that_is_not_a_linear_layer_is_refused():
    model, _ = build("llama")
    with pytest.raises(TypeError, match=r"'blocks\.0\.attn' matches the targets but is a LlamaAttention"):
        apply_lora(model, ["attn"], rank=4, alpha=8)
    apply_lora(model, ["q_proj"], rank=4, alpha=8)
    with pytest.raises(TypeError, match="is a LoRALinear"):  # wrapping twice
        apply_lora(model, ["q_proj"], rank=4, alpha=8)


def test_a_tied_output_head_is_refused():
    model = GPTModel(GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=1, tie_weights=True))
    with pytest.raises(ValueError, match=r"out_head\.weight is the same tensor as embed\.tok\.weight"):
        apply_lora(model, ["out_head"], rank=4, alpha=8)


@pytest.mark.parametrize("kind", MODELS)
def test_agrees_with_peft(kind):
    peft = pytest.importorskip("peft")
    base, targets = build(kind)
    ours = apply_lora(copy.deepcopy(base), targets, rank=4, alpha=12)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=12, target_modules=targets, lora_dropout=0.0)
    )
    assert set(theirs.targeted_module_names) == set(lora_layers(ours))
    assert count_trainable(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    randomize_b(ours)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            assert peft_layer.scaling["default"] == layer.scaling
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    x = tokens()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
    merge_lora(ours)
    plain = theirs.merge_and_unload()
    for name, layer in lora_layers(ours).items():
        torch.testing.assert_close(layer.base.weight, plain.get_submodule(name).weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("merged_first", [False, True])
def test_merge_and_unwrap_gives_back_the_architecture_with_peft_s_merged_weights(kind, merged_first):
    base, targets = build(kind)
    wrapped = apply_lora(copy.deepcopy(base), targets, rank=4, alpha=12)
    randomize_b(wrapped)
    adapters = {name: (layer.lora_A.clone(), layer.lora_B.clone()) for name, layer in lora_layers(wrapped).items()}
    x = tokens()
    with torch.no_grad():
        expected = wrapped(x)
    if merged_first:  # a model already merged with merge_lora unwraps the same
        merge_lora(wrapped)
    plain = merge_and_unwrap(wrapped)
    assert plain is wrapped and not lora_layers(plain)
    assert all(type(plain.get_submodule(name)) is nn.Linear for name in adapters)
    fresh = type(base)(base.config).eval()
    fresh.load_state_dict(plain.state_dict())  # strict: the original architecture's names, nothing more
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-5)
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=12, target_modules=targets, lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, (lora_a, lora_b) in adapters.items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(lora_a)
            peft_layer.lora_B["default"].weight.copy_(lora_b)
    unloaded = theirs.merge_and_unload().state_dict()
    assert set(unloaded) == set(plain.state_dict())
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(value, unloaded[name], rtol=0, atol=1e-6)


def test_merge_and_unwrap_leaves_a_model_without_lora_as_it_is():
    base, _ = build("gpt")
    before = {name: value.clone() for name, value in base.state_dict().items()}
    assert merge_and_unwrap(base) is base
    assert all(torch.equal(value, before[name]) for name, value in base.state_dict().items())


def test_shared_never_imports_peft_or_transformers():
    pattern = re.compile(r"^\s*(import|from)\s+(peft|transformers)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "shared").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, f"shared/ must not depend on test-time references: {offenders}"

"""Chapter 6's exercises: each checker accepts a right answer, and rejects common mistakes with a hint that names them.

``WRONG_ANSWERS`` is read by tests/test_exercises.py, which checks that each gets "not yet".
"""

import math

import pytest
import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from shared.attention import MultiHeadAttention
from shared.exercises import check
from shared.exercises.ch06 import BLOCK_CONFIG, CONVERT_CONFIG, COUNT_CONFIG, hf_layout
from shared.model import FeedForward, GPTConfig, GPTModel, LayerNorm, TransformerBlock
from shared.weights import load_gpt2_from_hf

# -- 6.1 LayerNorm by hand -----------------------------------------------------------------------------


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_unbiased(x, weight, bias, eps=1e-5):
    return (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps) * weight + bias


def layer_norm_eps_outside(x, weight, bias, eps=1e-5):
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True, unbiased=False) + eps) * weight + bias


def layer_norm_no_affine(x, weight, bias, eps=1e-5):
    return (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + eps)


def layer_norm_over_all_features_and_tokens(x, weight, bias, eps=1e-5):
    mean, var = x.mean(dim=(-2, -1), keepdim=True), x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_in_place(x, weight, bias, eps=1e-5):
    x -= x.mean(dim=-1, keepdim=True)
    return x / torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + eps) * weight + bias


def layer_norm_by_pytorch(x, weight, bias, eps=1e-5):  # right numbers, but not the learner's own work
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def layer_norm_by_the_course(x, weight, bias, eps=1e-5):
    norm = LayerNorm(x.shape[-1], eps)
    norm.load_state_dict({"weight": weight, "bias": bias})
    return norm(x)


# -- 6.2 GPT-2's initialisation -------------------------------------------------------------------------


def init_gpt2_(model: GPTModel) -> None:
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = residual_std if name.endswith(("attn.out_proj", "ff.project")) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def init_by_the_course(model):  # GPTModel's own per-module rule, without the residual scaling
    model.apply(GPTModel._init_weights)


def init_without_residual_scaling(model):
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def init_with_a_fresh_model(model):  # copies the weights of a new GPTModel: the course's initialisation
    model.load_state_dict(GPTModel(model.config).state_dict())


def init_scaled_by_n_layers(model):  # 0.02 / (2 * n_layers): no square root
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scaled = name.endswith(("attn.out_proj", "ff.project"))
            nn.init.normal_(module.weight, std=0.02 / (2 * model.config.n_layers) if scaled else 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def init_scaled_by_sqrt_n_layers(model):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scaled = name.endswith(("attn.out_proj", "ff.project"))
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(model.config.n_layers) if scaled else 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def init_linear_only(model):  # forgets the embeddings (PyTorch's default: std 1)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            scaled = name.endswith(("attn.out_proj", "ff.project"))
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * model.config.n_layers) if scaled else 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def init_keeping_biases(model):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scaled = name.endswith(("attn.out_proj", "ff.project"))
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * model.config.n_layers) if scaled else 0.02)


def init_scaling_every_linear(model):
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * model.config.n_layers))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


# -- 6.3 the parameter count -----------------------------------------------------------------------------


def count_by_formula(config: GPTConfig) -> int:
    d = config.emb_dim
    block = (3 * d * d + 3 * d * config.qkv_bias) + (d * d + d) + 4 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    head = 0 if config.tie_weights else d * config.vocab_size
    return (config.vocab_size + config.context_length) * d + config.n_layers * block + 2 * d + head


RIGHT_COUNT = count_by_formula(COUNT_CONFIG)
D, V = COUNT_CONFIG.emb_dim, COUNT_CONFIG.vocab_size

# -- 6.4 the block with a bug ------------------------------------------------------------------------------


class BuggyBlock(nn.Module):  # as in the notebook: norm2 normalises the residual stream itself
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = LayerNorm(config.emb_dim)
        self.attn = MultiHeadAttention(
            config.emb_dim, config.emb_dim, config.n_heads, config.context_length, config.drop_rate, config.qkv_bias
        )
        self.norm2 = LayerNorm(config.emb_dim)
        self.ff = FeedForward(config.emb_dim)
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(self, x):
        x = x + self.drop_shortcut(self.attn(self.norm1(x)))
        x = self.norm2(x)
        x = x + self.drop_shortcut(self.ff(x))
        return x


class FixedBlock(BuggyBlock):
    def forward(self, x):
        x = x + self.drop_shortcut(self.attn(self.norm1(x)))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class PostNormBlock(BuggyBlock):  # the original Transformer's order
    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff(x))


class BlockWithoutShortcut(BuggyBlock):
    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class BlockWithNormsSwapped(BuggyBlock):
    def forward(self, x):
        x = x + self.attn(self.norm2(x))
        return x + self.ff(self.norm1(x))


class BlockFromTheCourse(TransformerBlock):  # right outputs, but the course's own block
    pass


class BlockCallingTheCourse(BuggyBlock):
    def forward(self, x):
        return TransformerBlock.forward(self, x)


class BlockWithRenamedParts(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.emb_dim)

    def forward(self, x):
        return x


# -- 6.5 the converter with a bug ---------------------------------------------------------------------------

HF_NAMES = [
    ("wte", "embed.tok"),
    ("wpe", "embed.pos"),
    ("ln_f", "final_norm"),
    ("ln_1", "norm1"),
    ("ln_2", "norm2"),
    ("attn.c_attn", "attn.qkv"),
    ("attn.c_proj", "attn.out_proj"),
    ("mlp.c_fc", "ff.expand"),
    ("mlp.c_proj", "ff.project"),
    ("lm_head", "out_head"),
]


def rename(hf_key: str) -> str:
    key = hf_key.removeprefix("transformer.")
    if key.startswith("h."):
        key = "blocks." + key.removeprefix("h.")
    for hf_name, our_name in HF_NAMES:
        key = key.replace(hf_name, our_name)
    return key


def convert_buggy(hf_state: dict[str, Tensor], model: GPTModel) -> dict[str, Tensor]:  # as in the notebook
    ours = model.state_dict()
    converted = {}
    for hf_key, tensor in hf_state.items():
        key = rename(hf_key)
        if tensor.shape != ours[key].shape:
            tensor = tensor.T
        converted[key] = tensor
    return converted


def convert_gpt2_state(hf_state: dict[str, Tensor], model: GPTModel) -> dict[str, Tensor]:
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return {rename(key): tensor.T if key.endswith(conv1d) else tensor for key, tensor in hf_state.items()}


def convert_without_transposing(hf_state, model):
    return {rename(key): tensor for key, tensor in hf_state.items()}


def convert_transposing_every_matrix(hf_state, model):
    return {rename(key): tensor.T if tensor.ndim == 2 else tensor for key, tensor in hf_state.items()}


def convert_forgetting_the_head(hf_state, model):
    return {key: t for key, t in convert_gpt2_state(hf_state, model).items() if key != "out_head.weight"}


def convert_with_the_course(hf_state, model):  # right, but the course's own loader does the work
    return load_gpt2_from_hf(model, hf_state).state_dict()


WRONG_ANSWERS: dict[str, list] = {
    "6.1": [
        layer_norm_unbiased,
        layer_norm_eps_outside,
        layer_norm_no_affine,
        layer_norm_over_all_features_and_tokens,
        layer_norm_in_place,
        layer_norm_by_pytorch,
        layer_norm_by_the_course,
    ],
    "6.2": [
        init_by_the_course,
        init_with_a_fresh_model,
        init_scaled_by_n_layers,
        init_without_residual_scaling,
        init_scaled_by_sqrt_n_layers,
        init_linear_only,
        init_keeping_biases,
        init_scaling_every_linear,
    ],
    "6.3": [
        RIGHT_COUNT + D * V,  # counted the tied head
        RIGHT_COUNT - COUNT_CONFIG.n_layers * 3 * D,  # forgot the Q/K/V biases
        RIGHT_COUNT + D * V - COUNT_CONFIG.n_layers * 3 * D,  # both
        RIGHT_COUNT + 1,
        float(RIGHT_COUNT) + 0.5,
        (RIGHT_COUNT,),
    ],
    "6.4": [
        BuggyBlock,
        PostNormBlock,
        BlockWithoutShortcut,
        BlockWithNormsSwapped,
        BlockWithRenamedParts,
        BlockFromTheCourse,
        BlockCallingTheCourse,
        FixedBlock(BLOCK_CONFIG),
    ],
    "6.5": [convert_buggy, convert_without_transposing, convert_transposing_every_matrix, convert_forgetting_the_head,
            convert_with_the_course],
}


# -- the right answers pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer"),
    [
        ("6.1", layer_norm),
        ("6.2", init_gpt2_),
        ("6.3", RIGHT_COUNT),
        ("6.4", FixedBlock),
        ("6.5", convert_gpt2_state),
    ],
)
def test_the_right_answer_passes(number, answer):
    result = check(number, answer, quiet=True)
    assert result.passed, result


def test_the_parameter_formula_agrees_with_count_parameters():
    from shared.model import count_parameters

    with torch.device("meta"):
        assert count_by_formula(COUNT_CONFIG) == count_parameters(GPTModel(COUNT_CONFIG)) == RIGHT_COUNT
    assert "568,128" in check("6.3", 568_128, quiet=True).message  # the number the solutions notebook derives


# -- the hints name the mistake ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "answer", "hint"),
    [
        ("6.1", layer_norm_unbiased, "unbiased variance"),
        ("6.1", layer_norm_eps_outside, "outside the square root"),
        ("6.1", layer_norm_no_affine, "scale and shift are missing"),
        ("6.1", layer_norm_in_place, "in place"),
        ("6.1", layer_norm_by_pytorch, "PyTorch's fused layer_norm"),
        ("6.1", layer_norm_by_the_course, "course's own LayerNorm"),
        ("6.2", init_by_the_course, "course's own _init_weights"),
        ("6.2", init_with_a_fresh_model, "course's own GPTModel"),
        ("6.2", init_without_residual_scaling, "scaled down by 1/sqrt(N)"),
        ("6.2", init_scaled_by_sqrt_n_layers, "not blocks"),
        ("6.2", init_scaled_by_n_layers, "too small"),
        ("6.2", init_linear_only, "embed.tok.weight has std 1.0"),
        ("6.2", init_keeping_biases, "is not zero"),
        ("6.2", init_scaling_every_linear, "only the last projection of each branch"),
        ("6.3", RIGHT_COUNT + D * V, "tied"),
        ("6.3", RIGHT_COUNT + D * V, "too high"),
        ("6.3", 0, "too low"),
        ("6.3", RIGHT_COUNT + D * V - COUNT_CONFIG.n_layers * 3 * D, "Q/K/V biases"),
        ("6.3", 1, "Count part by part"),
        ("6.4", BuggyBlock, "normalises the residual stream itself"),
        ("6.4", PostNormBlock, "normalises the residual stream itself"),
        ("6.4", BlockWithoutShortcut, "a shortcut (x + ...) is missing"),
        ("6.4", BlockWithNormsSwapped, "norm1 feeds the attention"),
        ("6.4", BlockWithRenamedParts, "attribute names"),
        ("6.4", BlockFromTheCourse, "course's own TransformerBlock"),
        ("6.4", BlockCallingTheCourse, "course's own TransformerBlock"),
        ("6.5", convert_with_the_course, "course's own load_gpt2_from_hf"),
        ("6.5", convert_buggy, "blocks.0.attn.out_proj.weight, blocks.1.attn.out_proj.weight"),
        ("6.5", convert_forgetting_the_head, "does not load"),
    ],
)
def test_the_hint_names_the_mistake(number, answer, hint):
    result = check(number, answer, quiet=True)
    assert result.status == "not yet" and hint in result.message, result


@pytest.mark.parametrize("number", ["6.1", "6.2", "6.3", "6.4", "6.5"])
def test_badge(number):
    from shared.exercises import badge

    assert badge(number).startswith("*★")


def test_a_wrong_count_never_gives_the_answer_away():
    """The hint says too high or too low, and may name a slip, but prints neither the count nor the gap."""
    import re

    for guess in [0, 1, 100_000, RIGHT_COUNT - 1, RIGHT_COUNT + 1, RIGHT_COUNT + D * V, 10**9]:
        message = check("6.3", guess, quiet=True).message
        numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", message)}
        assert not numbers & {RIGHT_COUNT, abs(guess - RIGHT_COUNT)}, message


def test_checkers_leave_the_learners_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in [("6.2", init_gpt2_), ("6.4", FixedBlock), ("6.5", convert_gpt2_state)]:
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)


# -- the checker's stand-in for a Hugging Face checkpoint is the real layout --------------------------------


def test_hf_layout_has_the_names_and_shapes_of_a_real_gpt2_state_dict():
    c = CONVERT_CONFIG
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.context_length,
            n_embd=c.emb_dim,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    source = GPTModel(c).eval()
    ours = hf_layout(source)
    real = {key: tuple(t.shape) for key, t in hf.state_dict().items()}
    assert {key: tuple(t.shape) for key, t in ours.items()} == real
    # and it holds the model's own weights: the canonical loader recovers the model exactly
    ids = torch.randint(0, c.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(load_gpt2_from_hf(GPTModel(c), ours).eval()(ids), source(ids))
        # the fixed converter gives Hugging Face's logits for a real Hugging Face model
        model = GPTModel(c).eval()
        model.load_state_dict(convert_gpt2_state(hf.state_dict(), model))
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-5

"""Chapter 6's exercises: LayerNorm by hand, GPT-2's initialisation, a parameter count, two bug hunts.

Every checker makes its own seeded inputs (in a forked random state, so the learner's random
stream is left as it was) and compares the answer with ``shared.model`` or with a property only
the right answer has. Where a wrong answer matches a common mistake, the hint names the mistake.
"""

import copy
import itertools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.exercises import NotYet, _code_names, close, exercise, expect, own_work, seeded
from shared.model import GPTConfig, GPTModel, LayerNorm, TransformerBlock, count_parameters
from shared.weights import load_gpt2_from_hf, load_renamed

__all__ = ["BLOCK_CONFIG", "CONVERT_CONFIG", "COUNT_CONFIG", "INIT_CONFIG", "hf_layout"]

# Exercise 6.3 asks for this model's parameter count. The head count is a distractor (heads
# reshape the projections, they add no weights); the tied head and the Q/K/V biases are not.
COUNT_CONFIG = GPTConfig(
    vocab_size=1_000, context_length=256, emb_dim=96, n_heads=6, n_layers=4, qkv_bias=True, tie_weights=True
)
# Deep enough that the residual scaling (1/√16) is far from the mistakes 1 and 1/√8; every
# matrix has at least 4,096 entries, so a measured std is within about 2% of the true one.
INIT_CONFIG = GPTConfig(vocab_size=512, context_length=64, emb_dim=64, n_heads=4, n_layers=8, qkv_bias=True)
BLOCK_CONFIG = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
# GPT-2's own layout: Q/K/V biases and a tied head, as in the released checkpoints.
CONVERT_CONFIG = GPTConfig(
    vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True, tie_weights=True
)


def _fill_randomly(module: nn.Module, seed: int) -> None:
    """Give every bias and norm parameter a random value too, so that none of them can be forgotten."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=generator))


# -- 6.1 ---------------------------------------------------------------------------------------------


def _layer_norm_inputs() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(61)
    x = 2.0 + 5.0 * torch.randn(2, 4, 32, generator=generator)
    # One token whose features barely differ (variance ~1e-6, below eps = 1e-5): only there does
    # it matter whether eps sits under the square root.
    x[1, 2] = 0.7 + 1e-3 * torch.randn(32, generator=generator)
    weight = 1.0 + 0.5 * torch.randn(32, generator=generator)
    bias = 0.5 * torch.randn(32, generator=generator)
    return x, weight, bias


@exercise("6.1", "LayerNorm by hand", level=1, minutes=10)
def check_layer_norm(layer_norm) -> str:
    own_work(layer_norm, LayerNorm)
    expect(
        "layer_norm" not in _code_names(layer_norm),
        "Your function calls PyTorch's fused layer_norm, the kernel shared.model.LayerNorm uses: write the "
        "formula yourself (mean, biased variance, eps, scale and shift), so that you see every step.",
    )
    x, weight, bias = _layer_norm_inputs()
    eps = 1e-5
    x_given = x.clone()
    with torch.no_grad():
        out = layer_norm(x_given, weight, bias, eps)
    expect(isinstance(out, Tensor), f"Your layer_norm should return a tensor; it returned {type(out).__name__}.")
    expect(
        tuple(out.shape) == tuple(x.shape),
        f"The output should have the input's shape {tuple(x.shape)} (batch, seq, emb_dim), got {tuple(out.shape)}. "
        "Take the mean and variance over the last axis with keepdim=True, so they broadcast back.",
    )
    expect(torch.equal(x_given, x), "Your function changed its input x in place; compute a new tensor instead.")
    out = out.to(x.dtype)  # a float64 answer is compared like any other
    expected = F.layer_norm(x, (32,), weight, bias, eps)  # = shared.model.LayerNorm's forward
    if close(out, expected, atol=1e-4, rtol=1e-4):
        return "Matches shared.model.LayerNorm on 8 tokens of 32 features, one of them nearly constant (eps matters)."

    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    mistakes = [
        (
            (x - mean) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps) * weight + bias,
            "You used the unbiased variance (torch.var's default divides by emb_dim - 1). LayerNorm divides by "
            "emb_dim: pass unbiased=False (or correction=0).",
        ),
        (
            (x - mean) / (torch.sqrt(var) + eps) * weight + bias,
            "You added eps outside the square root. It belongs inside, sqrt(var + eps): the two differ only for "
            "tokens whose variance is near eps, like the nearly constant token at [1, 2] of the checker's input.",
        ),
        (
            (x - mean) / torch.sqrt(var + eps),
            "The learned scale and shift are missing: multiply by weight and add bias at the end.",
        ),
        (
            (x - mean) / (var + eps) * weight + bias,
            "You divided by the variance; divide by its square root, the standard deviation (sqrt(var + eps)).",
        ),
    ]
    for candidate, hint in mistakes:
        if close(out, candidate, atol=1e-4, rtol=1e-4):
            raise NotYet(hint)
    wrong = (out - expected).abs().amax(dim=-1) > 1e-4  # (batch, seq): which tokens are off
    if wrong.sum() == 1 and wrong[1, 2]:
        raise NotYet(
            "Every token is right except the nearly constant one at [1, 2] (its variance is below eps): "
            "check where eps goes, sqrt(var + eps)."
        )
    raise NotYet(
        f"The largest difference from shared.model.LayerNorm is {(out - expected).abs().max().item():.3g}. Per "
        "token: subtract the mean over the last axis, divide by sqrt(biased variance + eps), then * weight + bias "
        "(section 6.2)."
    )


# -- 6.2 ---------------------------------------------------------------------------------------------


def _is_residual_projection(name: str) -> bool:
    return name.endswith(("attn.out_proj.weight", "ff.project.weight"))


@exercise("6.2", "GPT-2's initialisation", level=2, minutes=15)
def check_init(init_gpt2_) -> str:
    own_work(init_gpt2_, GPTModel._init_weights, GPTModel)
    config = INIT_CONFIG
    with seeded(62):
        model = GPTModel(config)
        for module in model.modules():  # back to PyTorch's defaults, which the answer must replace
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.reset_parameters()
        with torch.no_grad():
            returned = init_gpt2_(model)
    expect(
        returned is None or returned is model,
        "Your init_gpt2_ should change the model it is given in place (and return nothing, or that same model).",
    )
    n_residual = 2 * config.n_layers
    residual_std = 0.02 / math.sqrt(n_residual)
    for name, p in model.named_parameters():
        if "norm" in name:
            target = 1.0 if name.endswith("weight") else 0.0
            expect(
                bool((p == target).all()),
                f"{name} changed; GPT-2 leaves LayerNorms at weight 1 and bias 0 (nn.Linear and nn.Embedding "
                "are the only modules to re-initialise).",
            )
        elif p.ndim == 1:
            expect(
                bool((p == 0).all()), f"{name} is not zero (std {p.std().item():.3f}): GPT-2 starts every bias at 0."
            )
    stds = {name: p.std().item() for name, p in model.named_parameters() if p.ndim == 2}
    for name, std in stds.items():
        if not _is_residual_projection(name):
            if abs(std - 0.02) > 0.1 * 0.02:
                if abs(std - residual_std) < 0.1 * residual_std:
                    raise NotYet(
                        f"{name} has std {std:.4f}, the residual scale: only the last projection of each branch "
                        "(attn.out_proj and ff.project) is scaled down; every other matrix gets 0.02."
                    )
                default = " (PyTorch's default for nn.Embedding is std 1)" if std > 0.5 else ""
                raise NotYet(f"{name} has std {std:.4f}{default}; expected 0.02: nn.init.normal_(weight, std=0.02).")
    for name, std in stds.items():
        if _is_residual_projection(name) and abs(std - residual_std) > 0.1 * residual_std:
            if abs(std - 0.02) < 0.002:
                raise NotYet(
                    f"{name} has std {std:.4f}, like every other matrix. The last projection of each residual "
                    "branch (attn.out_proj and ff.project) is scaled down by 1/sqrt(N), where N is the number of "
                    "residual layers (section 6.7)."
                )
            if abs(std - 0.02 / math.sqrt(config.n_layers)) < 0.1 * 0.02 / math.sqrt(config.n_layers):
                raise NotYet(
                    f"{name} has std {std:.4f} = 0.02 / sqrt(n_layers): N counts residual layers, not blocks. How "
                    "many branches add their output to the residual stream in each block?"
                )
            too = "small" if std < residual_std else "large"
            raise NotYet(f"{name} has a std of {std:.4f}, too {too} for 0.02 / sqrt(N) with N the number of "
                         "residual layers: check how you compute N and where you take the square root.")
    for name, p in model.named_parameters():
        if p.ndim == 2:
            expect(
                p.mean().abs().item() < 0.1 * p.std().item() + 1e-12,
                f"{name} has mean {p.mean().item():.4f}; draw it from a normal distribution with mean 0.",
            )
    return (
        f"Every matrix has std 0.02, except the {n_residual} residual projections ({residual_std:.4f} = "
        f"0.02/√{n_residual}); biases 0, LayerNorms untouched."
    )


# -- 6.3 ---------------------------------------------------------------------------------------------


def _count_mistakes(config: GPTConfig) -> dict[str, int]:
    """What each common slip adds to the true count (negative: what it leaves out)."""
    d, v, n, h = config.emb_dim, config.vocab_size, config.n_layers, config.n_heads
    block = (3 * d * d + 3 * d) + (d * d + d) + 2 * (2 * d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    slips = [
        ("counted the output head, which is tied to the token embedding (one matrix, counted once)", d * v),
        ("left out the Q/K/V biases (qkv_bias=True: 3 * emb_dim per block)", -n * 3 * d),
        ("left out the position embedding (context_length * emb_dim)", -config.context_length * d),
        ("left out the two LayerNorms of each block (2 * emb_dim each)", -n * 4 * d),
        ("left out the final LayerNorm (2 * emb_dim)", -2 * d),
        ("left out the biases of attn.out_proj, ff.expand and ff.project", -n * (d + 4 * d + d)),
        ("counted one block too many", block),
        ("counted one block too few", -block),
        ("multiplied the attention's matrices by the number of heads (heads add no weights)", n * (h - 1) * 4 * d * d),
    ]
    return dict(slips)


@exercise("6.3", "Predict the parameter count", level=2, minutes=15)
def check_parameter_count(prediction) -> str:
    expect(
        isinstance(prediction, numbers.Real) and not isinstance(prediction, bool) and float(prediction).is_integer(),
        f"Your prediction should be one whole number (the parameter count), got {prediction!r}.",
    )
    with torch.device("meta"):  # shapes only: no memory, no random numbers
        true = count_parameters(GPTModel(COUNT_CONFIG))
    off = int(prediction) - true
    if off == 0:
        return f"GPTModel(COUNT_CONFIG) has {true:,} parameters."
    # The hint says which way the count is off and, for a common slip, which part; never by how much
    # (from the difference the answer would follow in one step).
    direction = "too high" if off > 0 else "too low"
    mistakes = _count_mistakes(COUNT_CONFIG)
    for k in (1, 2):
        for combo in itertools.combinations(mistakes, k):
            if sum(mistakes[m] for m in combo) == off:
                raise NotYet(f"Your count is {direction}: it looks as if you " + " and ".join(combo) + ".")
    raise NotYet(
        f"Your count is {direction}. Count part by part as in section 6.8: the two embeddings, each block "
        "(Q/K/V with biases, out_proj, two LayerNorms, ff.expand, ff.project), the final LayerNorm, and the head "
        "(tied here: counted once)."
    )


# -- 6.4 ---------------------------------------------------------------------------------------------


def _load_into(block_class: type, state: dict[str, Tensor]) -> nn.Module:
    block = block_class(BLOCK_CONFIG)
    try:
        block.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1].strip()
        raise NotYet(
            "TransformerBlock's weights do not load into your block: keep BuggyBlock's attribute names "
            f"(norm1, attn, norm2, ff, drop_shortcut) and layer sizes. PyTorch says: {detail}"
        ) from None
    return block.eval()


@exercise("6.4", "Find the bug: a transformer block", level=2, minutes=15)
def check_block(block_class) -> str:
    expect(
        isinstance(block_class, type) and issubclass(block_class, nn.Module),
        f'Pass the class itself (check("6.4", FixedBlock)), not {type(block_class).__name__}.',
    )
    own_work(block_class, TransformerBlock)
    with seeded(64), torch.no_grad():  # the learner's block is built in here too: it draws random numbers
        reference = TransformerBlock(BLOCK_CONFIG).eval()
        x = 3.0 * torch.randn(2, 10, BLOCK_CONFIG.emb_dim)
        _fill_randomly(reference, seed=64)
        block = _load_into(block_class, reference.state_dict())
        out = block(x)
        expect(
            isinstance(out, Tensor) and tuple(out.shape) == tuple(x.shape),
            f"Your block should return a tensor of the input's shape {tuple(x.shape)}, got "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}.",
        )
        # With both branches silenced (their last projections zero), a pre-LayerNorm block must be
        # the identity: the shortcuts carry x through untouched.
        silent = copy.deepcopy(reference)
        for layer in (silent.attn.out_proj, silent.ff.project):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        passed_through = _load_into(block_class, silent.state_dict())(x)
        if not torch.allclose(passed_through, x, atol=1e-5):
            if passed_through.abs().max() < 1e-6:
                raise NotYet(
                    "With both branches' outputs set to zero your block returns zeros: a shortcut (x + ...) is missing."
                )
            spread_in, spread_out = x.std(dim=-1).mean().item(), passed_through.std(dim=-1).mean().item()
            raise NotYet(
                "With both branches' outputs set to zero, a GPT-2 block returns its input unchanged (the "
                f"shortcuts carry it), but yours changes it: the per-token spread goes from {spread_in:.2f} to "
                f"{spread_out:.2f}. Something normalises the residual stream itself; in a pre-LayerNorm block the "
                "norms sit only at the start of each branch."
            )
        expected = reference(x)
        gap = (out - expected).abs().max().item()
    if gap > 1e-5:
        raise NotYet(
            f"The shortcuts are right now, but the output differs from TransformerBlock's by up to {gap:.3g}. "
            "Check what each branch sees: norm1 feeds the attention, norm2 the feed-forward network, and each "
            "norm's input is the residual stream at that point."
        )
    return (
        "Same output as shared.model.TransformerBlock with the same weights, and the identity when both branches "
        "are silent."
    )


# -- 6.5 ---------------------------------------------------------------------------------------------

# Our name -> Hugging Face's (after "transformer."); the four Conv1D weights are stored (in, out).
_TO_HF = [
    ("embed.tok", "wte"),
    ("embed.pos", "wpe"),
    ("final_norm", "ln_f"),
    ("norm1", "ln_1"),
    ("norm2", "ln_2"),
    ("attn.qkv", "attn.c_attn"),
    ("attn.out_proj", "attn.c_proj"),
    ("ff.expand", "mlp.c_fc"),
    ("ff.project", "mlp.c_proj"),
]


def hf_layout(model: GPTModel) -> dict[str, Tensor]:
    """``model``'s weights named and laid out as in a Hugging Face ``GPT2LMHeadModel``'s state dict.

    The checker's stand-in for a Hugging Face checkpoint (``shared`` never imports transformers);
    the tests check it against a real ``GPT2LMHeadModel``, key by key and shape by shape.
    """
    hf = {}
    for key, tensor in model.state_dict().items():
        if key == "out_head.weight":
            hf["lm_head.weight"] = tensor
            continue
        conv1d = key.endswith(".weight") and any(
            f".{name}." in key for name in ("qkv", "out_proj", "expand", "project")
        )
        for ours, theirs in _TO_HF:
            key = key.replace(ours, theirs)
        hf["transformer." + key.replace("blocks.", "h.")] = tensor.T.contiguous() if conv1d else tensor.clone()
    return hf


@exercise("6.5", "Find the bug: a weight converter", level=3, minutes=20)
def check_converter(convert_gpt2_state) -> str:
    own_work(convert_gpt2_state, load_gpt2_from_hf, load_renamed)
    with seeded(65):
        source = GPTModel(CONVERT_CONFIG).eval()
        target = GPTModel(CONVERT_CONFIG).eval()
        ids = torch.randint(0, CONVERT_CONFIG.vocab_size, (2, 12))
        _fill_randomly(source, seed=65)
        converted = convert_gpt2_state(hf_layout(source), target)
    expect(
        isinstance(converted, dict),
        f"Your function should return a dict (a state dict), got {type(converted).__name__}.",
    )
    try:
        target.load_state_dict(converted)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[1:3])
        detail = detail if len(detail) < 400 else detail[:400] + " ..."
        raise NotYet(f"The converted state dict does not load into GPTModel: {detail}") from None
    with torch.no_grad():
        gap = (target(ids) - source(ids)).abs().max().item()
    if gap > 1e-6:
        right = source.state_dict()
        transposed = [
            key
            for key, tensor in right.items()
            if not torch.equal(converted[key], tensor) and tensor.ndim == 2 and torch.equal(converted[key], tensor.T)
        ]
        other = [
            key for key, tensor in right.items() if not torch.equal(converted[key], tensor) and key not in transposed
        ]
        if transposed and not other:
            raise NotYet(
                f"The state dict loads without an error, but the logits differ from the original model's by up to "
                f"{gap:.3g}. These tensors hold the transpose of the right matrix: {', '.join(transposed)}. What do "
                "they have in common, and why did the shape test let them through?"
            )
        raise NotYet(
            f"The logits differ from the original model's by up to {gap:.3g}; these tensors are wrong: "
            f"{', '.join(transposed + other)}."
        )
    return "The converted weights load into GPTModel and give the original model's logits exactly."

"""Pretrained weights: load a Hugging Face GPT-2 checkpoint into :class:`shared.model.GPTModel`.

Hugging Face's GPT-2 keeps OpenAI's layout: its linear layers are ``Conv1D`` modules whose weight
is stored as (in_features, out_features), the transpose of ``nn.Linear``'s; Q, K and V are one
fused ``c_attn`` layer, like our ``attn.qkv``. Downloading a checkpoint is opt-in
(:func:`download_gpt2`); the loading code is tested on small models built locally.
"""

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from torch import Tensor, nn

from shared.model import GPT2_124M, GPT2_SIZES, GPTConfig, GPTModel

__all__ = [
    "download_gpt2",
    "gpt2_config",
    "load_gpt2_from_hf",
    "load_renamed",
    "load_state_dict_file",
    "pretrained_gpt2",
]

# Hugging Face name (after the "transformer." prefix) -> (our name, transpose?)
_GPT2_RENAMES = [
    (r"wte\.weight", "embed.tok.weight", False),
    (r"wpe\.weight", "embed.pos.weight", False),
    (r"h\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.norm1.\2", False),
    (r"h\.(\d+)\.attn\.c_attn\.weight", r"blocks.\1.attn.qkv.weight", True),
    (r"h\.(\d+)\.attn\.c_attn\.bias", r"blocks.\1.attn.qkv.bias", False),
    (r"h\.(\d+)\.attn\.c_proj\.weight", r"blocks.\1.attn.out_proj.weight", True),
    (r"h\.(\d+)\.attn\.c_proj\.bias", r"blocks.\1.attn.out_proj.bias", False),
    (r"h\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.norm2.\2", False),
    (r"h\.(\d+)\.mlp\.c_fc\.weight", r"blocks.\1.ff.expand.weight", True),
    (r"h\.(\d+)\.mlp\.c_fc\.bias", r"blocks.\1.ff.expand.bias", False),
    (r"h\.(\d+)\.mlp\.c_proj\.weight", r"blocks.\1.ff.project.weight", True),
    (r"h\.(\d+)\.mlp\.c_proj\.bias", r"blocks.\1.ff.project.bias", False),
    (r"ln_f\.(weight|bias)", r"final_norm.\1", False),
    (r"lm_head\.weight", "out_head.weight", False),
]
# Buffers some checkpoints carry (the causal mask); we build our own.
_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` (or a ``torch.save``d ``.bin``/``.pt``) state dict from disk."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_renamed(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    renames: list[tuple[str, str, bool]],
    ignore: re.Pattern | None = None,
    hint: str = "",
) -> nn.Module:
    """Rename (and transpose where marked) a foreign state dict's tensors, check them, load them.

    ``renames`` holds (regex of the foreign name, our name with backreferences, transpose?).
    Every shape mismatch, missing tensor and unexpected tensor is listed in one error.
    """
    converted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for foreign_key, tensor in state_dict.items():
        if ignore is not None and ignore.fullmatch(foreign_key):
            continue
        for pattern, target, transpose in renames:
            if re.fullmatch(pattern, foreign_key):
                converted[re.sub(pattern, target, foreign_key)] = tensor.T if transpose else tensor
                break
        else:
            unexpected.append(foreign_key)
    expected = model.state_dict()
    problems = [
        f"  {key}: the model has {tuple(expected[key].shape)}, the checkpoint {tuple(tensor.shape)}"
        for key, tensor in converted.items()
        if key in expected and expected[key].shape != tensor.shape
    ]
    missing = sorted(set(expected) - set(converted))
    unexpected += sorted(set(converted) - set(expected))
    if problems or missing or unexpected:
        lines = ["the checkpoint does not fit this model's config:"]
        if problems:
            lines += ["shape mismatches:", *problems]
        if missing:
            lines.append(f"missing in the checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            lines.append(f"not in the model: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        lines.append(
            f"model config: {getattr(model, 'config', '?')}. Build the model with the checkpoint's sizes{hint}."
        )
        raise ValueError("\n".join(lines))
    model.load_state_dict(converted, strict=True)
    return model


def load_gpt2_from_hf(model: GPTModel, state_dict: Mapping[str, Tensor] | str | Path) -> GPTModel:
    """Fill ``model`` with the weights of a Hugging Face ``GPT2LMHeadModel`` (or ``GPT2Model``).

    ``state_dict`` is the model's ``state_dict()`` or a path to a ``.safetensors`` file. The model
    must be built with the matching config (GPT-2 uses ``qkv_bias=True``); if it is not, the error
    lists every mismatching, missing and unexpected tensor. Returns the model.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = load_state_dict_file(state_dict)
    state_dict = {key.removeprefix("transformer."): tensor for key, tensor in state_dict.items()}
    if "lm_head.weight" not in state_dict and "wte.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["wte.weight"]  # GPT-2's head is its embedding, stored once
    hint = " (gpt2_config(...) for the released GPT-2 sizes; GPT-2 has qkv_bias=True)"
    return load_renamed(model, state_dict, _GPT2_RENAMES, _IGNORED, hint)


def gpt2_config(size: str = "124M", **overrides) -> GPTConfig:
    """The config of a released GPT-2 size ("124M", "355M", "774M", "1558M"), with overrides."""
    if size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(GPT2_SIZES)}")
    emb_dim, n_layers, n_heads = GPT2_SIZES[size]
    return replace(GPT2_124M, emb_dim=emb_dim, n_layers=n_layers, n_heads=n_heads, **overrides)


_HUB_NAMES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


def download_gpt2(size: str = "124M") -> Path:
    """Download (opt-in, needs internet) a GPT-2 checkpoint from the Hugging Face hub; returns its path.

    Needs the ``huggingface_hub`` package (preinstalled on Colab; comes with ``transformers``).
    """
    if size not in _HUB_NAMES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(_HUB_NAMES)}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError("downloading GPT-2 needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return Path(hf_hub_download(f"openai-community/{_HUB_NAMES[size]}", "model.safetensors"))
    except Exception as e:
        raise RuntimeError(
            f"could not download GPT-2 {size} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "This needs internet access (it is opt-in and off in CI); on an offline machine, copy "
            "model.safetensors from a connected one and pass its path to load_gpt2_from_hf."
        ) from e


def pretrained_gpt2(size: str = "124M", use_sdpa: bool = True) -> GPTModel:
    """A :class:`GPTModel` with OpenAI's GPT-2 weights (downloads on first use; opt-in)."""
    model = GPTModel(gpt2_config(size, drop_rate=0.0), use_sdpa=use_sdpa)
    return load_gpt2_from_hf(model, download_gpt2(size)).eval()

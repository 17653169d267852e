"""LoRA (low-rank adaptation, Hu et al. 2021): fine-tune a big frozen layer through a small update.

A frozen ``nn.Linear`` with weight W (out × in) gets two small trainable matrices, A (rank × in) and
B (out × rank), and computes ``W x + (alpha / rank) · B A x``. Only A and B train: rank · (in + out)
numbers instead of in · out. B starts at zero, so the wrapped model starts exactly equal to the
original; after training, ``merge`` folds the update into W and inference costs nothing extra.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from shared.shapes import strict_matmul

__all__ = ["LoRALinear", "apply_lora", "count_trainable", "merge_and_unwrap", "merge_lora", "unmerge_lora"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (kept as ``base``) plus the low-rank update ``scaling · B A``.

    ``lora_A`` starts like a fresh ``nn.Linear`` weight (Kaiming-uniform, as in peft) and ``lora_B``
    at zero. ``dropout`` applies to the input of the LoRA branch only.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        _check_settings(rank, dropout)
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scaling = rank, alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: Float[Tensor, "*batch d_in={self.in_features}"]) -> Float[Tensor, "*batch d_out"]:
        if self.merged:  # the update already sits inside base.weight
            return self.base(x)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def delta_weight(self) -> Float[Tensor, "d_out d_in"]:
        """The update this layer adds to ``base.weight``: scaling · B A."""
        return self.scaling * strict_matmul(self.lora_B, self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to ``base.weight``; from now on forward runs the base layer alone."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge: this layer is already merged; call unmerge() before merging again")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``base.weight`` again (to keep training A and B)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge: this layer is not merged; there is nothing to take out")
        self.base.weight -= self.delta_weight()
        self.merged = False


def _check_settings(rank: int, dropout: float) -> None:
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}; typical values are 4 to 64")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of targets: the full dotted name, or a dotted suffix of it ("qkv", "attn.qkv")."""
    return any(name == target or name.endswith(f".{target}") for target in targets)


def _tied_elsewhere(model: nn.Module, name: str) -> str | None:
    """The other name of ``name``'s weight, if the model shares it (``tie_weights=True``)."""
    weight = model.get_submodule(name).weight
    for other, param in model.named_parameters(remove_duplicate=False):
        if param is weight and other != f"{name}.weight":
            return other
    return None


def apply_lora(model: nn.Module, target_modules: list[str], rank: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """Freeze ``model`` and wrap each ``nn.Linear`` named in ``target_modules`` in a :class:`LoRALinear`.

    A target matches a module's full dotted name or its ending: ``"qkv"`` matches every
    ``blocks.<i>.attn.qkv``, ``"ff.project"`` every ``blocks.<i>.ff.project`` (peft's rule). Works in
    place and returns ``model``; afterwards only the LoRA matrices have ``requires_grad``.
    """
    _check_settings(rank, dropout)
    names = [name for name, _ in model.named_modules() if name and _matches(name, target_modules)]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for target in target_modules:
        if not any(_matches(name, [target]) for name in names):
            raise ValueError(
                f"apply_lora: target {target!r} matches no module of this {type(model).__name__}. "
                f"Its nn.Linear modules are: {', '.join(linears)}. Use a last name component or a dotted name."
            )
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"apply_lora: {name!r} matches the targets but is a {type(module).__name__}, not an nn.Linear "
                f"(LoRA here wraps linear layers only; a LoRALinear is already wrapped). "
                f"Name linear layers, e.g. one of: {', '.join(linears)}."
            )
        if tied := _tied_elsewhere(model, name):
            raise ValueError(
                f"apply_lora: {name}.weight is the same tensor as {tied} (tied weights); merging the update would "
                f"change both. Leave {name!r} out of target_modules, or build the model without tied weights."
            )
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _lora_layers(model: nn.Module) -> list[LoRALinear]:
    layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
    if not layers:
        raise ValueError(f"this {type(model).__name__} has no LoRA layers; wrap some with apply_lora first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every :class:`LoRALinear` of ``model`` (see :meth:`LoRALinear.merge`); returns ``model``."""
    layers = _lora_layers(model)
    if any(layer.merged for layer in layers):  # check all first: never leave the model half merged
        raise RuntimeError("merge_lora: some LoRA layers are already merged; call unmerge_lora(model) first")
    for layer in layers:
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every :class:`LoRALinear` of ``model`` (see :meth:`LoRALinear.unmerge`); returns ``model``."""
    layers = _lora_layers(model)
    if not all(layer.merged for layer in layers):
        raise RuntimeError("unmerge_lora: some LoRA layers are not merged; call merge_lora(model) first")
    for layer in layers:
        layer.unmerge()
    return model


def merge_and_unwrap(model: nn.Module) -> nn.Module:
    """``model`` with every LoRA update folded into its weight and every :class:`LoRALinear` replaced by
    its plain ``nn.Linear`` (peft calls this ``merge_and_unload``): the original architecture again, whose
    ``state_dict`` a fresh model of its class loads. In place; returns ``model``, unchanged if it has no
    LoRA layers. The adapters are gone afterwards, so there is no unmerging: keep a copy to go back."""
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in names:
        layer = model.get_submodule(name)
        if not layer.merged:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base)
    return model

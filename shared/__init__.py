"""The course's canonical code: one module per concept, every tensor's shape annotated and checked.

Importing ``shared`` installs jaxtyping's import hook for the package, so every function and
``forward`` in its submodules is shape-checked at call time (see ``shared.shapes`` for the off
switch). The submodules are imported on first use.
"""

from beartype import BeartypeConf, beartype
from jaxtyping import install_import_hook

# The checker the hook applies. The numeric tower lets an int stand where a float is expected
# (drop_rate=0, lr=1), as Python's own typing rules intend.
typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))

__all__ = [
    "attention",
    "base",
    "chat",
    "classify",
    "conversations",
    "corpus",
    "datasets",
    "diagrams",
    "display",
    "dpo",
    "embeddings",
    "exercises",
    "files",
    "generate",
    "judge",
    "llama",
    "lora",
    "model",
    "plotting",
    "runtime",
    "settings",
    "sft",
    "shapes",
    "tasks",
    "tokenizer",
    "train",
    "weights",
]

# The hook stays installed (no ``with`` block), so that each submodule is shape-checked whenever it is first
# imported: a notebook or a process pays only for the concepts it uses (``import shared.runtime`` takes about
# 0.8 s less than importing every submodule up front). ``shared.cli``, the command-line program, is not instrumented.
install_import_hook([f"shared.{name}" for name in __all__], "shared.typechecker")


def __getattr__(name: str):
    """``shared.model`` and the like: each submodule is imported the first time it is used."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"shared.{name}")
    raise AttributeError(f"module 'shared' has no attribute {name!r}")

"""The course's canonical code: one module per concept, every tensor's shape annotated and checked.

Importing ``shared`` installs jaxtyping's import hook for the package, so every function and
``forward`` below is shape-checked at call time (see ``shared.shapes`` for the off switch).
"""

from jaxtyping import install_import_hook

with install_import_hook("shared", "beartype.beartype"):
    from shared import attention, data, embeddings, runtime, shapes, tokenizer

__all__ = ["attention", "data", "embeddings", "runtime", "shapes", "tokenizer"]

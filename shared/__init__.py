"""The course's canonical code: one module per concept, every tensor's shape annotated and checked.

Importing ``shared`` installs jaxtyping's import hook for the package, so every function and
``forward`` below is shape-checked at call time (see ``shared.shapes`` for the off switch).
"""

from beartype import BeartypeConf, beartype
from jaxtyping import install_import_hook

# The checker the hook applies. The numeric tower lets an int stand where a float is expected
# (drop_rate=0, lr=1), as Python's own typing rules intend.
typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))

with install_import_hook("shared", "shared.typechecker"):
    from shared import (
        attention,
        base,
        chat,
        classify,
        conversations,
        corpus,
        datasets,
        diagrams,
        display,
        dpo,
        embeddings,
        exercises,
        files,
        generate,
        judge,
        llama,
        lora,
        model,
        plotting,
        runtime,
        settings,
        sft,
        shapes,
        tasks,
        tokenizer,
        train,
        weights,
    )

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

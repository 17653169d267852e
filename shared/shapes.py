"""Shape tools: a matmul that never broadcasts, and the switch for runtime shape checks.

Every function and ``forward`` in ``shared`` is checked at call time by jaxtyping + beartype
(``shared/__init__.py`` installs the import hook). A wrong shape raises
``jaxtyping.TypeCheckError`` naming the function, the argument and the dimension sizes bound so far.

Checks are on by default. Switch them off for speed either before starting Python with the
environment variable ``JAXTYPING_DISABLE=1``, or at run time with :func:`set_shape_checks`.
"""

import re
import typing
from collections.abc import Iterator
from contextlib import contextmanager

import jaxtyping
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "ShapeError",
    "compile_model",
    "describe_type_check_error",
    "set_shape_checks",
    "shape_checks",
    "shape_checks_enabled",
    "strict_matmul",
]


class ShapeError(ValueError):
    """Raised by :func:`strict_matmul` when two operands do not line up."""


@typing.no_type_check  # checks its own operands, with a message that shows both shapes
def strict_matmul(a: Float[Tensor, "*batch m k"], b: Float[Tensor, "*batch k n"]) -> Float[Tensor, "*batch m n"]:
    """``a @ b`` for tensors with the *same* leading (batch) dimensions, and nothing else.

    ``torch.matmul`` silently broadcasts: a ``(2, 4, 5)`` times a ``(1, 5, 3)`` is not an error,
    it is a ``(2, 4, 3)`` result that reuses one matrix for every batch, which is rarely what code
    that meant to pair batch ``i`` with batch ``i`` wanted. This function refuses any broadcast and
    says which shapes it got. The check runs even when the jaxtyping checks are switched off.
    """
    if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"strict_matmul: cannot multiply a{tuple(a.shape)} by b{tuple(b.shape)}. "
            "Both need the same leading (batch) dimensions and a's last dimension must equal "
            "b's second-to-last; broadcasting is refused on purpose. "
            "Transpose or rearrange one operand so the dimensions line up."
        )
    return torch.matmul(a, b)


def describe_type_check_error(error: jaxtyping.TypeCheckError) -> str:
    """jaxtyping's message in one line: which function, which argument (or the return value), the shape
    it got, the annotation, and the sizes the other arguments had already bound.

    ``parameter 'keys' of attention_scores is f32[1,7,4], annotated Float[Tensor, 'batch seq d_out']
    (batch=2, seq=7, d_out=4)``
    """
    text = str(error)
    first = text.splitlines()[0] if text else ""
    function = re.search(r"of (\S+?)\.?$", first)
    name = function.group(1).removeprefix("__main__.") if function else "a function"
    if "return value" in first:
        where = f"the return value of {name}"
    elif found := re.search(r"parameter '(\w+)'", text):
        where = f"parameter {found.group(1)!r} of {name}"
    else:
        where = f"an argument of {name}"
    actual = re.search(r"Actual value: (\S+)", text)
    expected = re.search(r"Expected type: (?:<class ')?(.*?)(?:'>)?\.?$", text, re.M)
    said = where
    if actual and expected:
        said += f" is {actual.group(1).removesuffix('(torch)')}, annotated {expected.group(1)}"
    bound = text.split("are as follows.")[-1].split() if "are as follows." in text else []
    if bound:
        said += f" ({', '.join(bound)})"
    return said


def shape_checks_enabled() -> bool:
    """Whether jaxtyping/beartype check shapes on each call right now."""
    return not jaxtyping.config.jaxtyping_disable


def set_shape_checks(enabled: bool) -> None:
    """Switch runtime shape checks on or off for the whole process (takes effect at once)."""
    jaxtyping.config.update("jaxtyping_disable", not enabled)


@contextmanager
def shape_checks(enabled: bool) -> Iterator[None]:
    """Context manager: run a block with shape checks on or off, then restore the old setting."""
    before = shape_checks_enabled()
    set_shape_checks(enabled)
    try:
        yield
    finally:
        set_shape_checks(before)


def compile_model(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """``torch.compile`` the model after switching shape checks off.

    The checking wrappers cannot be traced by the compiler (it fails or breaks the graph), so
    compiling means giving them up for the rest of the process.
    """
    set_shape_checks(False)
    return torch.compile(model, **compile_kwargs)

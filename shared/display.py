"""Printing what a notebook shows: numbers that read the same on every learner's CPU, and errors
that read like the clear messages they are.

PyTorch prints a float tensor whose elements are all whole numbers in integer style
(``tensor([1., 1.])``); one element a last bit away from a whole number switches the whole tensor
to decimals (``tensor([1.0000, 1.0000])``). Which of the two you see depends on the CPU's vector
kernels (AVX-512, AVX2, NEON), the BLAS library and the thread count. Likewise a value that is zero
up to rounding prints as ``0.0000`` on one machine and ``-0.0000`` on another.

:func:`fixed` always prints a fixed number of decimals and never a negative zero, so a stored
notebook output holds wherever it is re-run.

:func:`show_error` runs code that must fail and prints the error as ``TypeName: message`` in a few
lines, without the traceback (a shape-check error in one line, see
:func:`shared.shapes.describe_type_check_error`). Code that does not fail is an error itself.
"""

import math
import textwrap
from collections.abc import Callable

import torch
from jaxtyping import TypeCheckError
from torch import Tensor

from shared.shapes import describe_type_check_error

__all__ = ["fixed", "show_error"]


def _number(value: float, decimals: int) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    rounded = round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:.{decimals}f}"


def fixed(values: Tensor | float | list, decimals: int = 4) -> str:
    """``values`` as text with exactly ``decimals`` decimals: a number, or a tensor's nested lists.

    >>> fixed(torch.tensor([1.0, 0.99999994, -1e-9]))
    '[1.0000, 1.0000, 0.0000]'
    >>> print(fixed(torch.eye(2), 1))
    [[1.0, 0.0],
     [0.0, 1.0]]
    """
    if decimals < 0:
        raise ValueError(f"decimals must be 0 or more, got {decimals}")
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values, dtype=torch.float64)
    values = values.detach().to("cpu", torch.float64)
    if values.dim() == 0:
        return _number(values.item(), decimals)
    texts = [_number(v, decimals) for v in values.flatten().tolist()]
    width = max((len(t) for t in texts), default=0)
    cells = iter(t.rjust(width) for t in texts)

    def nest(shape: tuple[int, ...], depth: int) -> str:
        if len(shape) == 1:
            return "[" + ", ".join(next(cells) for _ in range(shape[0])) + "]"
        separator = "," + "\n" * (len(shape) - 1) + " " * (depth + 1)
        return "[" + separator.join(nest(shape[1:], depth + 1) for _ in range(shape[0])) + "]"

    return nest(tuple(values.shape), 0)


def show_error(action: Callable[[], object], *, width: int = 100, max_lines: int = 6) -> Exception:
    """Run ``action`` (a function of no arguments), which must raise; print ``TypeName: message`` and
    return the exception. If ``action`` returns instead, raise ``AssertionError``: a cell that shows an
    error on purpose still proves that the error happens.

    >>> show_error(lambda: int("seven"))
    ValueError: invalid literal for int() with base 10: 'seven'
    """
    try:
        action()
    except Exception as error:  # the point: show any error, briefly
        message = describe_type_check_error(error) if isinstance(error, TypeCheckError) else str(error)
        if isinstance(error, KeyError) and len(error.args) == 1:
            message = str(error.args[0])  # str(KeyError) adds quotes
        lines = []
        for paragraph in f"{type(error).__name__}: {message}".strip().splitlines():
            lines += textwrap.wrap(paragraph, width, subsequent_indent="    ") or [""]
        if len(lines) > max_lines:
            lines = [*lines[: max_lines - 1], "    ..."]
        print("\n".join(lines))
        return error
    raise AssertionError("expected an error, but the code ran without one")

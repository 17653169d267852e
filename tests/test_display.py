"""shared.display.fixed: the same text for values a few last bits apart, as other CPUs compute them."""

import ast

import pytest
import torch
from beartype import beartype
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import Float, jaxtyped
from torch import Tensor

from shared.display import fixed, show_error


def test_whole_numbers_print_with_decimals_where_torch_switches_style():
    exact, nudged = torch.ones(5), torch.nextafter(torch.ones(5), torch.zeros(5))
    assert str(exact) != str(nudged)  # torch: tensor([1., 1., ...]) against tensor([1.0000, ...])
    assert fixed(exact) == fixed(nudged) == "[1.0000, 1.0000, 1.0000, 1.0000, 1.0000]"


def test_no_negative_zero():
    assert fixed(torch.tensor([-1e-9, 1e-9, -0.0])) == "[0.0000, 0.0000, 0.0000]"
    assert fixed(-0.00004) == "0.0000" and fixed(-0.00006) == "-0.0001"


@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=12))
def test_values_one_ulp_apart_print_alike_unless_they_straddle_a_rounding_boundary(values):
    # Below 100 a float32's last bit is under 1e-5, far below the fourth decimal.
    x = torch.tensor(values, dtype=torch.float32)
    up = torch.nextafter(x, torch.full_like(x, float("inf")))
    scaled = (x.double() * 1e4).abs()
    if ((scaled - scaled.floor() - 0.5).abs() < 0.1).any():  # near a .00005 boundary: either side is right
        return
    assert fixed(x) == fixed(up)


def test_the_nesting_and_the_values_are_the_tensors():
    x = torch.randn(2, 3, 4)
    text = fixed(x, 3)
    assert torch.allclose(torch.tensor(ast.literal_eval(text.replace("\n", ""))), x, atol=5e-4)
    assert text.count("\n") == 2 * 2 + 2  # a new line per row, and a blank line between the two matrices
    assert fixed(torch.eye(2), 1) == "[[1.0, 0.0],\n [0.0, 1.0]]"


def test_numbers_lists_and_empty_tensors():
    assert fixed(3.14159) == "3.1416" and fixed(2, 2) == "2.00"
    assert fixed([0.5, 1.25], 1) == "[0.5, 1.2]"
    assert fixed(torch.zeros(0)) == "[]"
    assert fixed(torch.tensor([float("nan"), float("inf")])) == "[nan, inf]"
    with pytest.raises(ValueError, match="decimals must be 0 or more"):
        fixed(1.0, -1)


# -- show_error -----------------------------------------------------------------------------------


def test_show_error_prints_the_type_and_message_and_returns_the_error(capsys):
    error = show_error(lambda: int("seven"))
    assert isinstance(error, ValueError)
    assert capsys.readouterr().out == "ValueError: invalid literal for int() with base 10: 'seven'\n"
    show_error(lambda: {}["a key"])
    assert capsys.readouterr().out == "KeyError: a key\n"  # without the quotes str(KeyError) adds


def test_show_error_refuses_code_that_does_not_fail():
    with pytest.raises(AssertionError, match="expected an error, but the code ran without one"):
        show_error(lambda: 42)


def test_show_error_keeps_long_messages_to_a_few_wrapped_lines(capsys):
    show_error(lambda: (_ for _ in ()).throw(RuntimeError("word " * 200)), width=60, max_lines=4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1] == "    ..." and all(len(line) <= 60 for line in lines)


@jaxtyped(typechecker=beartype)
def _scores(queries: Float[Tensor, "batch seq d"], keys: Float[Tensor, "batch seq d"]) -> Float[Tensor, " batch"]:
    return queries.sum(dim=(1, 2))


@jaxtyped(typechecker=beartype)
def _wrong_return(x: Float[Tensor, "batch d"]) -> Float[Tensor, " batch"]:
    return x


def test_a_shape_check_error_is_one_line_naming_the_argument_its_shape_and_the_bound_sizes(capsys):
    show_error(lambda: _scores(torch.zeros(2, 7, 4), torch.zeros(1, 7, 4)), width=200)
    assert capsys.readouterr().out == ("TypeCheckError: parameter 'keys' of tests.test_display._scores is f32[1,7,4], "
                                       "annotated Float[Tensor, 'batch seq d'] (batch=2, seq=7, d=4)\n")
    show_error(lambda: _wrong_return(torch.zeros(3, 2)), width=200)
    assert capsys.readouterr().out == ("TypeCheckError: the return value of tests.test_display._wrong_return is "
                                       "f32[3,2], annotated Float[Tensor, 'batch'] (batch=3, d=2)\n")

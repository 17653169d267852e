import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError

from shared.datasets import NextTokenDataset
from shared.shapes import ShapeError, set_shape_checks, shape_checks, shape_checks_enabled, strict_matmul


def test_strict_matmul_equals_matmul_when_batches_match():
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(strict_matmul(a, b), a @ b)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((2, 4, 5), (4, 5, 3)),  # @ would broadcast the batch of 2 against 4 ... and fail
        ((1, 4, 5), (3, 5, 2)),  # @ broadcasts 1 -> 3 silently
        ((4, 5), (3, 5, 2)),  # @ broadcasts a missing batch dimension silently
        ((2, 4, 5), (2, 6, 3)),  # inner dimensions differ
    ],
)
def test_strict_matmul_refuses_broadcasting_and_names_both_shapes(a_shape, b_shape):
    with pytest.raises(ShapeError) as info:
        strict_matmul(torch.randn(a_shape), torch.randn(b_shape))
    assert str(a_shape).replace(" ", "") in str(info.value).replace(" ", "")
    assert str(b_shape).replace(" ", "") in str(info.value).replace(" ", "")


def test_strict_matmul_still_refuses_with_shape_checks_off():
    with shape_checks(False), pytest.raises(ShapeError):
        strict_matmul(torch.randn(1, 4, 5), torch.randn(3, 5, 2))


def test_wrong_shape_error_names_the_dimension():
    # NextTokenDataset.__getitem__ promises (seq,), (seq,); a function in shared with a wrong
    # argument shape fails with jaxtyping's error naming the argument and bound dimensions.
    from shared.tokenizer import BPETokenizer  # noqa: F401  (any module under the hook)

    ds = NextTokenDataset(torch.arange(20), context_length=4)
    with pytest.raises(TypeCheckError) as info:
        NextTokenDataset(torch.arange(20).reshape(4, 5), context_length=4)
    assert "token_ids" in str(info.value)
    assert "n_tokens" in str(info.value.__cause__) or "n_tokens" in str(info.value)
    assert len(ds) == 4


def test_a_submodule_imported_on_first_use_is_still_shape_checked():
    """``import shared`` imports no submodule; the one imported later, alone, is under the hook all the same
    (the command-line program, ``shared.cli``, is not)."""
    code = """
import sys
import shared
assert not [m for m in sys.modules if m.startswith("shared.")], sorted(sys.modules)
import torch
from jaxtyping import TypeCheckError
from shared.datasets import NextTokenDataset
try:
    NextTokenDataset(torch.arange(20).reshape(4, 5), context_length=4)
except TypeCheckError as e:
    print("checked:", "token_ids" in str(e))
print("loaded:", sorted(m for m in sys.modules if m.startswith("shared.")))
hooks = [f for f in sys.meta_path if hasattr(f, "should_instrument")]  # jaxtyping's finder
print("instrumented:", [any(f.should_instrument(m) for f in hooks) for m in ("shared.model", "shared.cli.pretrain")])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "checked: True" in out, out
    assert "'shared.model'" not in out and "'shared.exercises'" not in out, out  # only what datasets needs
    assert "instrumented: [True, False]" in out, out


def test_checks_can_be_switched_off_and_on():
    assert shape_checks_enabled()
    set_shape_checks(False)
    try:
        assert not shape_checks_enabled()
        with pytest.raises(ValueError, match="one flat sequence"):  # our own check, not jaxtyping's
            NextTokenDataset(torch.arange(20).reshape(4, 5), context_length=4)
    finally:
        set_shape_checks(True)
    assert shape_checks_enabled()


def test_environment_variable_switches_checks_off():
    code = "import shared.shapes as s; print(s.shape_checks_enabled())"
    env = {**os.environ, "JAXTYPING_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shared_reshapes_are_einops_patterns():
    """A raw view/transpose/permute in shared/ must sit on a line that says it is a fast path."""
    offenders = []
    for path in Path(__file__).parent.parent.joinpath("shared").glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(f".{op}(" in line for op in ("view", "transpose", "permute")) and "fast path" not in line:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "use einops (rearrange) instead:\n" + "\n".join(offenders)

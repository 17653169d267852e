"""Self-checking exercises: every chapter's checkers, and :func:`check`, which runs one and says how it went.

A chapter's exercise gives the learner a stub (a function that raises ``NotImplementedError``, or
a prediction left as ``...``) and a check cell: ``check("6.2", my_answer)``. The checker tests the
answer against the canonical code in ``shared`` or against a property, and prints one line:

- ``Exercise 6.2: passed.`` (and what was checked);
- ``Exercise 6.2: not attempted yet.`` for the stub as committed;
- ``Exercise 6.2: not yet. <what was wrong, and a hint>`` for a wrong answer, never a traceback.

Checkers live in one module per chapter (``shared.exercises.ch06``) and register themselves
with :func:`exercise`. The solutions are in ``notebooks/solutions/``.
"""

import importlib
import numbers
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import TypeCheckError
from torch import Tensor

from shared.shapes import describe_type_check_error

__all__ = [
    "LEVELS",
    "NotYet",
    "Result",
    "as_number",
    "as_shape",
    "badge",
    "check",
    "close",
    "describe",
    "exercise",
    "expect",
    "own_work",
    "registered",
    "rounded",
    "run_answer",
    "seeded",
    "true_statements",
]

_CHAPTER_MODULES = ["ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08", "ch09", "ch10", "ch11", "ch12"]


class NotYet(Exception):
    """Raised by a checker when the answer is wrong; its message says what and gives a hint."""


@dataclass(frozen=True)
class Result:
    """How an answer fared: ``status`` is ``"passed"``, ``"not yet"`` or ``"not attempted"``."""

    exercise: str
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def _ipython_display_(self) -> None:
        """Show nothing: :func:`check` has printed the verdict already, so a bare ``check(...)`` at
        the end of a notebook cell shows it once, not twice."""

    def __str__(self) -> str:
        text = f"Exercise {self.exercise}: {self.status}"
        text += "." if self.status != "not attempted" else " yet."
        return f"{text} {self.message}".rstrip()


LEVELS = {1: "★☆☆ warm-up", 2: "★★☆ practice", 3: "★★★ challenge"}


@dataclass(frozen=True)
class _Exercise:
    number: str
    title: str
    checker: Callable[[object], str | None]
    level: int | None = None
    minutes: int | None = None


_REGISTRY: dict[str, _Exercise] = {}


def exercise(number: str, title: str, *, level: int | None = None, minutes: int | None = None) -> Callable:
    """Register the decorated function as the checker of exercise ``number`` (e.g. ``"6.2"``).

    ``level`` (1 warm-up, 2 practice, 3 challenge) and ``minutes`` (the time it should take) are shown
    under the exercise's heading in the notebook, as :func:`badge` writes them.

    The checker receives the learner's answer. It returns nothing (or a sentence saying what
    passed), or raises :class:`NotYet` with what was wrong and a hint.
    """
    if level is not None and level not in LEVELS:
        raise ValueError(f"exercise {number}: level must be one of {sorted(LEVELS)}, got {level}")
    if minutes is not None and minutes < 1:
        raise ValueError(f"exercise {number}: minutes must be at least 1, got {minutes}")

    def register(checker: Callable[[object], str | None]) -> Callable[[object], str | None]:
        if number in _REGISTRY:
            raise ValueError(f"exercise {number} is registered twice")
        _REGISTRY[number] = _Exercise(number, title, checker, level, minutes)
        return checker

    return register


def badge(number: str) -> str:
    """The line under an exercise's heading: its difficulty and expected time, e.g.
    ``*★★☆ practice · about 10 minutes*``."""
    _load_chapter(number)
    found = _REGISTRY[number]
    if found.level is None or found.minutes is None:
        raise ValueError(f"exercise {number} has no level or minutes: give both to @exercise")
    return f"*{LEVELS[found.level]} · about {found.minutes} minutes*"


def expect(condition: bool, hint: str) -> None:
    """Inside a checker: if ``condition`` is false, the answer is wrong; ``hint`` says why."""
    if not condition:
        raise NotYet(hint)


# -- tools for checkers --------------------------------------------------------------------------


def true_statements(answer: object, statements: dict[str, str], true: set[str], why: dict[str, str]) -> None:
    """A true-or-false checker's test: ``answer`` is the set of letters the learner thinks true.

    A wrong set gets how many verdicts are wrong and, for every statement, what to think about
    (``why``, written so that it does not say which way it goes): naming only the wrong letters
    would give their answers away, since each is a yes or a no.
    """
    expect(isinstance(answer, (set, frozenset, list, tuple, str)),
           f"Give the letters of the true statements as a set, e.g. {{'a', 'b'}}; got {type(answer).__name__}.")
    letters = {str(v).strip().lower() for v in ([answer] if isinstance(answer, str) else answer)}
    unknown = sorted(letters - set(statements))
    expect(not unknown, f"{unknown} are not statements: the letters are {sorted(statements)}.")
    if letters != true:
        wrong = len(letters ^ true)
        raise NotYet(f"{wrong} of your {len(statements)} verdicts are not right yet. For each statement, think "
                     "again about: " + "; ".join(f"{k}: {why[k]}" for k in sorted(statements)) + ".")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with PyTorch's CPU generator seeded and on one thread, then give the learner back
    their random state and thread count. (Checkers use tiny tensors: a second thread only adds
    synchronisation, which costs seconds on a busy machine.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def close(a: object, b: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """``a`` is a tensor of ``b``'s shape with the same numbers, up to the tolerances."""
    return (
        isinstance(a, Tensor)
        and a.shape == b.shape
        and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol))
    )


def rounded(t: Tensor, decimals: int = 4) -> list:
    """A tensor as a short nested list of rounded numbers, for a hint."""
    return [round(v, decimals) for v in t.flatten().tolist()] if t.ndim <= 1 else [rounded(r, decimals) for r in t]


def describe(x: object) -> str:
    """What an answer is, in a few words: a tensor's shape, or the type of anything else."""
    return f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def as_shape(value: object) -> tuple[int, ...] | None:
    """A predicted shape as a tuple of ints, or None if it is not written as one."""
    if isinstance(value, (tuple, list, torch.Size)) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def as_number(value: object, what: str) -> float:
    """A predicted number (an int, a float, or a one-element tensor) as a float; anything else is
    a wrong answer that says what it got."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    expect(isinstance(value, numbers.Real) and not isinstance(value, bool),
           f"{what} should be a number, got {type(value).__name__}: {value!r}.")
    return float(value)


def _shape_check_hint(error: TypeCheckError) -> str:
    """jaxtyping's message, cut to what a learner needs: what failed, the shape, the bindings."""
    return (f"The shape check failed: {describe_type_check_error(error)}. "
            "Compare the shape you compute with the one you annotated.")


def _code_names(obj: object) -> set[str]:
    """Every global and attribute name the code of a function, lambda or class (its methods) reads."""
    functions = [obj]
    if isinstance(obj, type):
        functions = [v for k, v in vars(obj).items() if callable(v) or isinstance(v, (staticmethod, classmethod))]
    names, codes = set(), []
    for f in functions:
        f = getattr(f, "__func__", f)
        if hasattr(f, "__code__"):
            codes.append(f.__code__)
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes += [c for c in code.co_consts if hasattr(c, "co_names")]
    return names


def own_work(answer: object, *course_versions: object) -> None:
    """Inside the checker of an implement exercise: refuse an answer that only hands the work to the
    course's own version (``split = split_words``, ``return attention_weights(q, k)``, a subclass of
    ``SelfAttention``), with a hint that says so. The exercise is to write it yourself."""
    names = _code_names(answer)
    for original in course_versions:
        name = getattr(original, "__name__", None)
        subclass = isinstance(answer, type) and isinstance(original, type) and issubclass(answer, original)
        calls = name is not None and name in names
        if answer is original or subclass or calls:
            module = getattr(original, "__module__", "shared")
            raise NotYet(f"That is the course's own {name} from {module}: write it yourself, using only PyTorch "
                         "(and einops), so that you see every step.")


def run_answer(answer: Callable, *args, **kwargs):
    """Call the learner's code; a failed shape check becomes a hint, not a traceback."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. `.T` on a 3-D tensor: the hint says what went wrong
            return answer(*args, **kwargs)
    except TypeCheckError as e:
        raise NotYet(_shape_check_hint(e)) from None


# -- the verdict -----------------------------------------------------------------------------------


def _not_attempted(answer: object) -> bool:
    return answer is ... or answer is None


def _load_all() -> None:
    for name in _CHAPTER_MODULES:
        try:
            importlib.import_module(f"shared.exercises.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"shared.exercises.{name}":
                raise


def _load_chapter(number: str) -> None:
    """Register the checkers of exercise ``number``'s chapter ("7.2": ``ch07``), and only those."""
    chapter = number.split(".", 1)[0]
    name = f"ch{int(chapter):02d}" if chapter.isdigit() else ""
    if name in _CHAPTER_MODULES:
        importlib.import_module(f"shared.exercises.{name}")


def registered() -> dict[str, str]:
    """Every exercise's number and title, in order."""
    _load_all()
    key = lambda n: tuple(int(part) for part in n.split("."))
    return {n: _REGISTRY[n].title for n in sorted(_REGISTRY, key=key)}


def check(number: str, answer: object, *, quiet: bool = False) -> Result:
    """Check ``answer`` to exercise ``number``; print the verdict (unless ``quiet``) and return it.

    A wrong answer, or one that raises, is reported as "not yet" with a hint, never as a
    traceback. A stub (``...``, ``None``, or a function that raises ``NotImplementedError``) is
    "not attempted".
    """
    _load_chapter(number)
    if number not in _REGISTRY:
        _load_all()
        raise KeyError(f"there is no exercise {number}; the exercises are {list(registered())}")
    if _not_attempted(answer):
        result = Result(number, "not attempted", "Replace the ... with your answer, then run this cell again.")
    else:
        try:
            said = _REGISTRY[number].checker(answer)
        except NotImplementedError:
            result = Result(number, "not attempted",
                            "Replace the `raise NotImplementedError` with your code, then run this cell again.")
        except NotYet as e:
            result = Result(number, "not yet", str(e))
        except TypeCheckError as e:  # the learner's annotations caught a wrong shape
            result = Result(number, "not yet", _shape_check_hint(e))
        except Exception as e:  # the learner's code raised: say where, briefly
            where = traceback.extract_tb(e.__traceback__)[-1]
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            result = Result(number, "not yet",
                            f"Your code raised {type(e).__name__}: {first_line} (line {where.lineno} of "
                            f"{where.name}). Fix it and run this cell again.")
        else:
            result = Result(number, "passed", said or "")
    if not quiet:
        print(result)
    return result

"""The exercises: the framework's verdicts, and the promises every chapter's exercises keep.

- every ``### Exercise N.k`` heading in a chapter has a registered checker and a check cell whose
  stored output says "not attempted yet" (the stubs as committed);
- the chapter's solutions notebook has the same headings, and its stored outputs say "passed"
  for each (nbval re-runs it, so a checker that stops accepting its solution fails the suite);
- every checker rejects at least one plausible wrong answer: each ``tests/test_exercises_chNN.py``
  module lists them in ``WRONG_ANSWERS`` (exercise number -> wrong answers), checked here.
"""

import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from shared.exercises import NotYet, Result, badge, check, exercise, expect, own_work, registered

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^### Exercise (\d+\.\d+)\b", re.M)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def exercise_numbers(path: Path) -> list[str]:
    return [n for c in cells(path) if c["cell_type"] == "markdown" for n in HEADING.findall("".join(c["source"]))]


# Every chapter with exercises (chapter 10's included, once it has them).
CHAPTERS = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if exercise_numbers(p))


def check_outputs(path: Path) -> dict[str, str]:
    """Exercise number -> the stored output of the cell that checks it."""
    found = {}
    for c in cells(path):
        source = "".join(c["source"])
        if c["cell_type"] != "code" or "check(" not in source:
            continue
        text = "".join("".join(o.get("text", "")) for o in c.get("outputs", []) if o["output_type"] == "stream")
        for number, status in re.findall(r"Exercise (\d+\.\d+): (passed|not attempted|not yet)", text):
            found[number] = status
    return found


# -- the framework ---------------------------------------------------------------------------------


@exercise("0.1", "a test exercise: a function that doubles")
def _check_doubling(answer):
    expect(answer(2) == 4, "doubling 2 should give 4")
    return "doubled 2 correctly"


def test_check_gives_one_line_verdicts_and_never_raises_for_a_wrong_answer(capsys):
    def stub(x):
        raise NotImplementedError

    def crashes(x):
        return x / 0

    assert check("0.1", lambda x: 2 * x).passed
    assert capsys.readouterr().out == "Exercise 0.1: passed. doubled 2 correctly\n"
    assert check("0.1", stub).status == check("0.1", ...).status == "not attempted"
    wrong = check("0.1", lambda x: x + 1)
    assert wrong.status == "not yet" and "doubling 2 should give 4" in str(wrong)
    crashed = check("0.1", crashes, quiet=True)
    assert crashed.status == "not yet" and "ZeroDivisionError" in crashed.message and "crashes" in crashed.message
    assert "Traceback" not in capsys.readouterr().out
    with pytest.raises(KeyError, match=r"there is no exercise 99\.9"):
        check("99.9", stub)
    assert isinstance(wrong, Result) and issubclass(NotYet, Exception)


def _course_softmax(x):
    return x.exp() / x.exp().sum()


class _CourseModule:
    def forward(self, x):
        return x


def test_own_work_refuses_the_courses_own_version_in_every_disguise():
    def delegates(x):
        return _course_softmax(x)

    class Subclass(_CourseModule):
        pass

    class Wraps:
        def forward(self, x):
            return _course_softmax(x)

    for answer in [_course_softmax, delegates, lambda x: _course_softmax(x), Subclass, Wraps]:
        with pytest.raises(NotYet, match=r"That is the course's own (_course_softmax|_CourseModule)"):
            own_work(answer, _course_softmax, _CourseModule)
        assert check_own_work(answer).status == "not yet"

    def written(x):
        e = x.exp()
        return e / e.sum()

    own_work(written, _course_softmax, _CourseModule)  # no error: the learner's own code
    assert check_own_work(written).passed


@exercise("0.2", "a test exercise: softmax, written yourself", level=2, minutes=10)
def _check_softmax(answer):
    own_work(answer, _course_softmax, _CourseModule)
    expect(abs(float(answer(torch.tensor([0.0, 0.0]))[0]) - 0.5) < 1e-6, "softmax of two zeros is a half each")


def check_own_work(answer):
    return check("0.2", answer, quiet=True)


def test_badge_shows_the_level_and_the_minutes():
    assert badge("0.2") == "*★★☆ practice · about 10 minutes*"
    with pytest.raises(ValueError, match="no level or minutes"):
        badge("0.1")
    with pytest.raises(ValueError, match="level must be one of"):
        exercise("0.3", "bad level", level=4, minutes=5)


# -- every chapter ---------------------------------------------------------------------------------


def chapter_ids():
    return [p.stem for p in CHAPTERS]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids())
def test_every_chapter_has_four_to_six_exercises_with_checkers_and_stubs(chapter):
    numbers = exercise_numbers(chapter)
    prefix = str(int(chapter.stem[:2]))
    assert 4 <= len(numbers) <= 6, f"{chapter.name}: {len(numbers)} exercises"
    assert numbers == [f"{prefix}.{k}" for k in range(1, len(numbers) + 1)], numbers
    assert set(numbers) <= set(registered()), f"no checker for {set(numbers) - set(registered())}"
    stored = check_outputs(chapter)
    assert stored == dict.fromkeys(numbers, "not attempted"), f"{chapter.name}: stored verdicts {stored}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids())
def test_every_chapter_has_a_solutions_notebook_that_passes_every_check(chapter):
    solutions = ROOT / "notebooks" / "solutions" / chapter.name
    assert solutions.exists(), f"no solutions notebook {solutions.relative_to(ROOT)}"
    numbers = exercise_numbers(chapter)
    assert exercise_numbers(solutions) == numbers
    assert check_outputs(solutions) == dict.fromkeys(numbers, "passed")


def _hint_cases(module) -> list[tuple]:
    """The (number, answer, hint) cases of a chapter's ``test_the_hint_names_the_mistake``."""
    marks = getattr(module.test_the_hint_names_the_mistake, "pytestmark", [])
    return [tuple(case) for mark in marks if mark.name == "parametrize" for case in mark.args[1]]


def test_every_checker_rejects_a_plausible_wrong_answer():
    wrong: dict[str, list] = {}
    checked_elsewhere: set[str] = set()
    for path in sorted((ROOT / "tests").glob("test_exercises_ch*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        wrong |= module.WRONG_ANSWERS
        # A chapter whose checks are slow (10.1 starts processes) tests every wrong answer of those
        # exercises itself, with its hint: its hint test must name each of them.
        for number in getattr(module, "WRONG_ANSWERS_CHECKED_HERE", set()):
            hinted = {answer for n, answer, _ in _hint_cases(module) if n == number}
            assert all(answer in hinted for answer in module.WRONG_ANSWERS[number]), (
                f"{path.name} claims to test every wrong answer of {number}, but its hint test misses some"
            )
            checked_elsewhere.add(number)
    numbers = [n for n in registered() if not n.startswith("0.")]
    missing = [n for n in numbers if not wrong.get(n)]
    assert not missing, f"no wrong answers tested for exercises {missing}"
    for number in sorted(set(numbers) - checked_elsewhere):
        for answer in wrong[number]:
            result = check(number, answer, quiet=True)
            assert result.status == "not yet", f"exercise {number} accepted a wrong answer: {result}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids())
def test_every_exercise_shows_its_difficulty_and_time_under_its_heading(chapter):
    for path in (chapter, ROOT / "notebooks" / "solutions" / chapter.name):
        for c in cells(path):
            text = "".join(c["source"])
            for number in HEADING.findall(text) if c["cell_type"] == "markdown" else []:
                after = text.split(f"### Exercise {number}", 1)[1].splitlines()[1:3]
                assert badge(number) in after, f"{path.name}: exercise {number} should show {badge(number)!r} on " \
                                               f"the line under its heading"

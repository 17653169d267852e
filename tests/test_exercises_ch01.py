"""Chapter 1's exercises: each checker accepts a correct answer and rejects the common mistakes.

``WRONG_ANSWERS`` is read by ``tests/test_exercises.py``, which asserts that every one gets "not yet".
"""

import re
from collections import Counter
from itertools import pairwise

import pytest

from shared.exercises import check
from shared.exercises.ch01 import WHOLE_TEXT
from shared.tokenizer import BPETokenizer, split_words

# -- 1.1: a character tokenizer --------------------------------------------------------------------


class CharTokenizer:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.char_to_id = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        return [self.char_to_id[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class InOrderOfAppearance(CharTokenizer):  # the vocabulary not sorted
    def __init__(self, text: str):
        self.chars = list(dict.fromkeys(text))
        self.char_to_id = {c: i for i, c in enumerate(self.chars)}


class NumberedFromOne(CharTokenizer):  # ids 1..n, as if 0 were reserved
    def encode(self, text: str) -> list[int]:
        return [self.char_to_id[c] + 1 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids)


class JoinedWithSpaces(CharTokenizer):  # decoding like the word-level tokenizer
    def decode(self, ids: list[int]) -> str:
        return " ".join(self.chars[i] for i in ids)


class FixedVocabulary(CharTokenizer):  # ignores the text it is given
    def __init__(self, text: str):
        from shared.exercises.ch01 import SONNET

        super().__init__(SONNET)


# -- 1.3: BPE on raw bytes -------------------------------------------------------------------------


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bytes_bpe(text: str, n_merges: int) -> dict[tuple[int, int], int]:
    ids, merges = list(text.encode("utf-8")), {}
    for step in range(n_merges):
        counts = Counter(pairwise(ids))
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = 256 + step
        ids = merge(ids, best, 256 + step)
    return merges


def ties_to_the_first_seen(text: str, n_merges: int) -> dict[tuple[int, int], int]:
    ids, merges = list(text.encode("utf-8")), {}
    for step in range(n_merges):
        best = Counter(pairwise(ids)).most_common(1)[0][0]
        merges[best] = 256 + step
        ids = merge(ids, best, 256 + step)
    return merges


def counted_once(text: str, n_merges: int) -> dict[tuple[int, int], int]:  # never recounts after a merge
    counts = Counter(pairwise(text.encode("utf-8")))
    ranked = sorted(counts, key=lambda p: (-counts[p], p))
    return {pair: 256 + k for k, pair in enumerate(ranked[:n_merges])}


def ids_from_255(text: str, n_merges: int) -> dict[tuple[int, int], int]:
    return {pair: new_id - 1 for pair, new_id in train_bytes_bpe(text, n_merges).items()}


def the_courses_trainer(text: str, n_merges: int) -> dict[tuple[int, int], int]:  # right merges, not own work
    return dict(BPETokenizer.train(text, 256 + n_merges, special_tokens=(), pattern=WHOLE_TEXT).merges)


# -- 1.4 and 1.5: the bug hunts --------------------------------------------------------------------

BUGGY_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]|<\|endoftext\|>|<\|unk\|>")  # the notebook's planted bug
FIXED_PATTERN = re.compile(r"<\|endoftext\|>|<\|unk\|>|\w+(?:'\w+)*|[^\w\s]")
NO_APOSTROPHES = re.compile(r"<\|endoftext\|>|<\|unk\|>|\w+|[^\w\s]")  # fixes the bug, breaks "I'll"


def decode_each_token(ids: list[int], vocab: dict[int, bytes]) -> str:  # the notebook's planted bug
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def decode_bytes_first(ids: list[int], vocab: dict[int, bytes]) -> str:
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def decode_strictly(ids: list[int], vocab: dict[int, bytes]) -> str:  # crashes on a cut character
    return b"".join(vocab[i] for i in ids).decode("utf-8")


WRONG_ANSWERS: dict[str, list] = {
    "1.1": [InOrderOfAppearance, NumberedFromOne, JoinedWithSpaces, FixedVocabulary],
    "1.2": [(24, 6, 6), (24, 7, 7), (23, 6, 7), [24, 6, 7]],
    "1.3": [ties_to_the_first_seen, counted_once, ids_from_255, the_courses_trainer],
    "1.4": [BUGGY_PATTERN.findall, NO_APOSTROPHES.findall, str.split, split_words, lambda text: split_words(text)],
    "1.5": [decode_each_token, decode_strictly],
}

RIGHT_ANSWERS = {
    "1.1": CharTokenizer,
    "1.2": (24, 6, 7),
    "1.3": train_bytes_bpe,
    "1.4": FIXED_PATTERN.findall,
    "1.5": decode_bytes_first,
}


@pytest.mark.parametrize("number", sorted(RIGHT_ANSWERS))
def test_a_correct_answer_passes(number):
    result = check(number, RIGHT_ANSWERS[number], quiet=True)
    assert result.passed, result


def test_the_planted_bugs_get_hints_that_name_the_symptom():
    splitter = check("1.4", BUGGY_PATTERN.findall, quiet=True)
    assert "cut into '<', '|'" in splitter.message
    decoder = check("1.5", decode_each_token, quiet=True)
    assert "each token's bytes were decoded on their own" in decoder.message


@pytest.mark.parametrize("prediction", [(24, 6, 6), (24, 6, 8), (23, 5, 7), (25, 7, 6), (0, 0, 0), (99, 99, 99)])
def test_a_wrong_prediction_is_told_which_way_it_is_off_but_never_the_counts(prediction):
    result = check("1.2", prediction, quiet=True)
    assert result.status == "not yet"
    words = result.message.replace("GPT-2", "").replace("chapter 1", "")
    assert not re.search(r"\d", words), result.message  # no count, no difference, nothing to subtract from
    truth = (24, 6, 7)
    for k, label in enumerate(["(a)", "(b)", "(c)"]):
        assert (label in result.message) == (prediction[k] != truth[k])
    assert ("too high" in result.message) == any(p > t for p, t in zip(prediction, truth, strict=True))
    assert ("too low" in result.message) == any(p < t for p, t in zip(prediction, truth, strict=True))


def test_the_courses_own_splitter_and_trainer_are_refused():
    for answer in [split_words, lambda text: split_words(text)]:
        assert "write it yourself" in check("1.4", answer, quiet=True).message
    assert "write it yourself" in check("1.3", the_courses_trainer, quiet=True).message


def test_hints_of_the_implement_exercises_never_show_the_expected_output():
    splitter = check("1.4", NO_APOSTROPHES.findall, quiet=True).message
    assert "expected" not in splitter and "I'll" in splitter
    trainer = check("1.3", ids_from_255, quiet=True).message
    assert "expected" not in trainer and "256, 257" in trainer


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("number", ["1.1", "1.3", "1.4", "1.5"])
def test_a_stub_is_not_attempted(number):
    assert check(number, stub, quiet=True).status == "not attempted"

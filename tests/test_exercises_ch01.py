"""Chapter 1's exercises: each checker accepts a correct answer and rejects the common mistakes.

``WRONG_ANSWERS`` is read by ``tests/test_exercises.py``, which asserts that every one gets "not yet".
"""

import re
from collections import Counter
from itertools import pairwise

import pytest

from shared.exercises import check

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
    "1.3": [ties_to_the_first_seen, counted_once, ids_from_255],
    "1.4": [BUGGY_PATTERN.findall, NO_APOSTROPHES.findall, str.split],
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
    assert "Join all the bytes first" in decoder.message


def test_a_prediction_that_is_off_is_told_the_counts_and_why():
    result = check("1.2", (24, 6, 6), quiet=True)
    assert "(24, 6, 7)" in result.message and "'s" in result.message
    assert "characters:" not in result.message  # only the wrong part is explained


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("number", ["1.1", "1.3", "1.4", "1.5"])
def test_a_stub_is_not_attempted(number):
    assert check(number, stub, quiet=True).status == "not attempted"

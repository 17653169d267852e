"""Labelled tasks cut from Tiny Shakespeare itself, for fine-tuning a model pretrained on it.

The corpus is a run of speeches: a speaker line (``ROMEO:``), the lines spoken, a blank line. A task
turns speeches into (text, label) examples. Only the speeches of the *validation* part count, the
last 10% that ``shared.datasets.train_val_split`` holds out and chapter 7 never trains on, so no
example is a text the base model has read. Every example keeps the corpus offset of its speech,
which is how the tests prove it.

Three tasks. What was measured on chapter 7's CPU-setting base (0.86 M parameters, 40 steps of 16
texts, three seeds; chapter 11 prints these numbers):

- :func:`speech_end_task` (chapter 11's main task): does the speech end here, or does it go on? A
  whole speech (1) or the same speech cut after one of its lines (0). The base model was pretrained
  to predict what comes next, a blank line included, so it knows this without labels: its own
  probability of a newline next scores about 0.9, and so do fine-tuned classifiers, well above the
  majority baseline of 0.5. A surface rule (the last line ends with ``.``, ``!`` or ``?``) scores
  about 0.9 too: the cue is real and strong.
- :func:`real_or_shuffled_task`: a real speech (1) or the same speech with its plain words shuffled (0):
  capitalised and punctuated words stay in place, so only word order tells the classes apart. The
  base's loss prefers the real speech in most pairs, but classifiers on its states stay at chance at
  this budget, and so does a linear probe trained to convergence.
- :func:`who_speaks_task`: which of the ``n_characters`` most frequent characters speaks a speech.
  Probes on the base's states stay near the majority baseline: the small base does not encode it.

Examples are split by speech, never inside one, deterministically for a seed; the lists come in a
random order, so any prefix (``task.train[:50]``) is a random sample.
"""

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from shared.corpus import tiny_shakespeare
from shared.datasets import train_val_split

__all__ = [
    "Example",
    "LabelledTask",
    "Speech",
    "can_shuffle",
    "held_out_speeches",
    "parse_speeches",
    "real_or_shuffled_task",
    "shuffle_words",
    "speech_end_task",
    "who_speaks_task",
]

# A speech starts after a blank line (or at the start of the text): a speaker line ending in a colon,
# then one or more non-empty lines. A speaker line with no lines after it ("TITUS:" then a blank) is skipped.
_SPEECH = re.compile(r"(?:^|(?<=\n\n))([^\n]+):\n((?:[^\n]+\n)*[^\n]+)")


@dataclass(frozen=True)
class Speech:
    """One speech: who speaks, what they say (its lines, joined by newlines), and where it sits:
    ``corpus[start:end] == f"{speaker}:\\n{text}"``."""

    speaker: str
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.speaker) + 2 + len(self.text)


@dataclass(frozen=True)
class Example:
    """A labelled text, with the corpus offset of the speech it was cut from (``Speech.start``)."""

    text: str
    label: int
    start: int


@dataclass(frozen=True)
class LabelledTask:
    """A classification task: examples to train on and to test on, the names of the classes
    (``class_names[label]``), and which end of a text longer than a classifier's context it reads:
    ``keep`` is ``"first"`` (the start) or ``"last"`` (the end), as ``shared.classify.encode_texts``
    takes it, so that every reader of the task crops its texts the same way."""

    name: str
    class_names: tuple[str, ...]
    train: list[Example]
    test: list[Example]
    keep: str = "first"

    def __post_init__(self) -> None:
        if self.keep not in ("first", "last"):
            raise ValueError(f"keep must be 'first' (read a long text's start) or 'last' (its end), got {self.keep!r}")

    def class_counts(self, split: str = "train") -> list[int]:
        """How many examples of each class ``split`` ("train" or "test") holds."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        counts = Counter(example.label for example in getattr(self, split))
        return [counts[label] for label in range(len(self.class_names))]

    @property
    def majority_class(self) -> int:
        """The most frequent class in the training examples (the lowest label on a tie)."""
        counts = self.class_counts("train")
        return counts.index(max(counts))

    @property
    def majority_baseline(self) -> float:
        """Test accuracy of always answering :attr:`majority_class`: what a classifier must beat."""
        return self.class_counts("test")[self.majority_class] / len(self.test)

    def describe(self) -> str:
        """A few lines: the classes with their train/test counts and the majority-class baseline."""
        width = max(len(name) for name in self.class_names)
        lines = [f"{self.name}: {len(self.train)} train / {len(self.test)} test examples"]
        counts = zip(self.class_names, self.class_counts("train"), self.class_counts("test"), strict=True)
        for name, n_train, n_test in counts:
            lines.append(f"  {name:<{width}}  {n_train:>4} train  {n_test:>4} test")
        majority = self.class_names[self.majority_class]
        lines.append(f"  majority-class baseline: {self.majority_baseline:.3f} (always {majority!r})")
        return "\n".join(lines)


def parse_speeches(corpus: str) -> list[Speech]:
    """Every speech of a text laid out as Tiny Shakespeare is, in order, with its offset."""
    return [Speech(m.group(1), m.group(2), m.start()) for m in _SPEECH.finditer(corpus)]


def held_out_speeches(corpus: str | None = None, val_fraction: float = 0.1) -> list[Speech]:
    """The speeches that start inside the validation part of ``train_val_split(corpus, val_fraction)``
    (Tiny Shakespeare by default): none of their text is in the part a base model was pretrained on.
    The speech cut in two by the split is left out."""
    corpus = tiny_shakespeare() if corpus is None else corpus
    train_text, _ = train_val_split(corpus, val_fraction)
    return [speech for speech in parse_speeches(corpus) if speech.start >= len(train_text)]


def _is_plain(word: str) -> bool:
    """A plain word: lowercase letters only (no capital, no punctuation), such as ``the``."""
    return re.fullmatch(r"[a-z]+", word) is not None


def _movable(lines: list[list[str]]) -> list[tuple[int, int]]:
    """(line, word) positions a shuffle may move: the plain words, except each line's first word and
    the text's last word (so the first and last characters of every line and of the text stay)."""
    last = (len(lines) - 1, len(lines[-1]) - 1)
    return [
        (i, j)
        for i, line in enumerate(lines)
        for j, word in enumerate(line)
        if j > 0 and (i, j) != last and _is_plain(word)
    ]


def can_shuffle(text: str) -> bool:
    """Whether :func:`shuffle_words` can shuffle ``text``: it has at least two different movable plain words."""
    lines = [line.split() for line in text.split("\n")]
    return len({lines[i][j] for i, j in _movable(lines)}) >= 2


def shuffle_words(text: str, rng: random.Random) -> str:
    """``text`` with its plain words (lowercase letters only, such as ``the``) shuffled among their own
    positions. Every other word keeps its place: a capitalised word (``Romeo``, ``I``), a word carrying
    punctuation (``sir,``), each line's first word and the text's last word; so do the line breaks.
    Capitals, punctuation and line lengths therefore give nothing away: only the order of the plain
    words tells a shuffle from the real text. The result always differs from ``text``; a text with
    fewer than two different movable plain words (:func:`can_shuffle`) cannot be shuffled and is an error."""
    lines = [line.split() for line in text.split("\n")]
    positions = _movable(lines)
    words = [lines[i][j] for i, j in positions]
    if len(set(words)) < 2:
        raise ValueError(
            f"shuffle_words: {text!r} has fewer than two different plain words (lowercase letters only) that "
            "may move, so no shuffle differs from it; check can_shuffle(text) first"
        )
    shuffled = words.copy()
    rng.shuffle(shuffled)
    if shuffled == words:  # a rotation by one differs from any sequence with two different elements
        shuffled = shuffled[1:] + shuffled[:1]
    for (i, j), word in zip(positions, shuffled, strict=True):
        lines[i][j] = word
    return "\n".join(" ".join(line) for line in lines)


def _split(items: Sequence, test_fraction: float, rng: random.Random) -> tuple[list, list]:
    """Shuffle ``items`` and cut off ``test_fraction`` of them (at least one on each side) for testing."""
    if len(items) < 2:
        raise ValueError(f"cannot split {len(items)} item(s) into a train and a test part; need at least 2")
    items = list(items)
    rng.shuffle(items)
    n_test = min(max(round(len(items) * test_fraction), 1), len(items) - 1)
    return items[n_test:], items[:n_test]


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}; e.g. 0.3 keeps 30% for testing")


def who_speaks_task(
    n_characters: int = 4,
    seed: int = 0,
    test_fraction: float = 0.3,
    min_speeches: int = 10,
    corpus: str | None = None,
) -> LabelledTask:
    """Which character speaks a speech: the ``n_characters`` characters with the most held-out speeches
    (ties broken by name), label ``i`` for ``class_names[i]``. Each character's speeches are split
    ``test_fraction`` to the test side (a stratified split: every class keeps its share on both sides).

    Characters need at least ``min_speeches`` speeches each; asking for more than there are is an error.
    """
    _check_fraction(test_fraction)
    speeches = held_out_speeches(corpus)
    counts = Counter(speech.speaker for speech in speeches)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    eligible = [(name, n) for name, n in ranked if n >= min_speeches]
    if n_characters < 2:
        raise ValueError(f"who_speaks_task: n_characters must be at least 2 (two classes), got {n_characters}")
    if n_characters > len(eligible):
        shown = ", ".join(f"{name} {n}" for name, n in eligible[:12])
        raise ValueError(
            f"who_speaks_task: asked for {n_characters} characters, but the held-out part has {len(eligible)} "
            f"characters with at least {min_speeches} speeches ({shown}{', ...' if len(eligible) > 12 else ''}). "
            f"Ask for at most {len(eligible)}, or lower min_speeches."
        )
    class_names = tuple(name for name, _ in eligible[:n_characters])
    rng = random.Random(seed)
    train, test = [], []
    for label, name in enumerate(class_names):
        side_train, side_test = _split([s for s in speeches if s.speaker == name], test_fraction, rng)
        train += [Example(s.text, label, s.start) for s in side_train]
        test += [Example(s.text, label, s.start) for s in side_test]
    rng.shuffle(train)
    rng.shuffle(test)
    return LabelledTask(f"who speaks ({n_characters} characters)", class_names, train, test)


def real_or_shuffled_task(seed: int = 0, test_fraction: float = 0.3, corpus: str | None = None) -> LabelledTask:
    """Real speech (label 1) or the same speech with its plain words shuffled (label 0, :func:`shuffle_words`).

    Capitalised words, punctuated words and line breaks stay in place, so surface rules (starts with a
    capital, ends with punctuation) score about 50%. Every held-out speech that :func:`can_shuffle`
    gives one example of each class, so the classes are balanced. The split is by speech: a speech and
    its shuffle are on the same side. The lists hold each real speech next to its shuffle, so any
    even-length prefix is balanced too.
    """
    _check_fraction(test_fraction)
    speeches = [s for s in held_out_speeches(corpus) if can_shuffle(s.text)]
    rng = random.Random(seed)
    train_speeches, test_speeches = _split(speeches, test_fraction, rng)

    def pairs(side: list[Speech]) -> list[Example]:
        examples = []
        for s in side:  # the real speech, then its shuffle
            examples += [Example(s.text, 1, s.start), Example(shuffle_words(s.text, rng), 0, s.start)]
        return examples

    return LabelledTask("real or shuffled", ("shuffled", "real"), pairs(train_speeches), pairs(test_speeches))


def speech_end_task(seed: int = 0, test_fraction: float = 0.3, corpus: str | None = None) -> LabelledTask:
    """Does the speech end here? A whole speech (label 1, "ends") or the same speech cut after one of
    its lines (label 0, "continues").

    Every held-out speech with at least two lines gives one example of each class, both as the corpus
    lays them out, a speaker line first and a line break last: ``"SPEAKER:\\n" + all its lines + "\\n"``
    (in the corpus a blank line follows: the speech is over), and the speaker line with its first k
    lines and a line break, k drawn uniformly from 1 to n - 1 for a speech of n lines (another line
    follows). The cut example is therefore a prefix of the whole one, and both end on a line break, so
    what the last line says, and how, tells them apart, and so does length: a cut is always shorter than
    its whole speech (a cue a classifier can read from the cropped text's length). The split is by speech:
    a speech and its cut are on the same side, next to each other, so any even-length prefix of a list is
    balanced.

    The end of a text is what this task reads: its ``keep`` is ``"last"``, so long texts are cropped from
    the end (``shared.classify.encode_texts(..., crop=True, keep=task.keep)``).
    """
    _check_fraction(test_fraction)
    speeches = [s for s in held_out_speeches(corpus) if "\n" in s.text]
    rng = random.Random(seed)
    train_speeches, test_speeches = _split(speeches, test_fraction, rng)

    def pairs(side: list[Speech]) -> list[Example]:
        examples = []
        for s in side:  # the whole speech, then the same speech cut after k of its n lines
            lines = s.text.split("\n")
            k = rng.randrange(1, len(lines))
            whole = f"{s.speaker}:\n" + "\n".join(lines) + "\n"
            cut = f"{s.speaker}:\n" + "\n".join(lines[:k]) + "\n"
            examples += [Example(whole, 1, s.start), Example(cut, 0, s.start)]
        return examples

    return LabelledTask("does the speech end here?", ("continues", "ends"), pairs(train_speeches), pairs(test_speeches),
                        keep="last")

"""Labelled tasks from Tiny Shakespeare: parsing with offsets, no example from the pretraining text,
balanced and deterministic splits by speech, and clear errors."""

import itertools
import random
from collections import Counter

import pytest

from shared.corpus import tiny_shakespeare
from shared.datasets import train_val_split
from shared.tasks import (
    Example,
    LabelledTask,
    Speech,
    can_shuffle,
    held_out_speeches,
    parse_speeches,
    real_or_shuffled_task,
    shuffle_words,
    speech_end_task,
    who_speaks_task,
)

# A speaker line with no lines (TITUS), a line ending in a colon inside a speech, a triple newline,
# and a last line with no newline after it.
TOY = (
    "First Citizen:\nBefore we proceed,\nhear me.\n\nAll:\nSpeak.\n\nTITUS:\n\nMARCIUS:\nNay:\nfollow.\n\n\nROMEO:\nAy"
)


@pytest.fixture(scope="module")
def corpus() -> str:
    return tiny_shakespeare()


@pytest.fixture(scope="module")
def training_text(corpus) -> str:
    return train_val_split(corpus)[0]


@pytest.fixture(scope="module")
def tasks() -> dict[str, LabelledTask]:
    return {
        "who": who_speaks_task(n_characters=4, seed=0),
        "shuffled": real_or_shuffled_task(seed=0),
        "end": speech_end_task(seed=0),
    }


def test_parse_speeches_by_hand():
    # TITUS, with no lines, is no speech; MARCIUS's "Nay:" is a line, not a speaker.
    assert parse_speeches(TOY) == [
        Speech("First Citizen", "Before we proceed,\nhear me.", 0),
        Speech("All", "Speak.", TOY.index("All:")),
        Speech("MARCIUS", "Nay:\nfollow.", TOY.index("MARCIUS:")),
        Speech("ROMEO", "Ay", TOY.index("ROMEO:")),
    ]
    for speech in parse_speeches(TOY):
        assert TOY[speech.start : speech.end] == f"{speech.speaker}:\n{speech.text}"


def test_every_speech_of_tiny_shakespeare_sits_at_its_offset(corpus):
    speeches = parse_speeches(corpus)
    assert len(speeches) == 7097
    assert speeches[0] == Speech("First Citizen", "Before we proceed any further, hear me speak.", 0)
    assert all(corpus[s.start : s.end] == f"{s.speaker}:\n{s.text}" for s in speeches)
    # Nothing is lost between two speeches but blank lines and, rarely, speaker lines with no lines.
    for before, after in itertools.pairwise(speeches):
        assert all(line.endswith(":") for line in corpus[before.end : after.start].split("\n") if line)


def test_held_out_speeches_all_lie_after_the_pretraining_text(corpus, training_text):
    held_out = held_out_speeches()
    cut = len(training_text)
    assert len(held_out) == 920
    assert all(s.start >= cut for s in held_out)
    # Only the speech the cut falls into is lost: the first held-out speech is the first to start after it.
    assert held_out[0] == next(s for s in parse_speeches(corpus) if s.start >= cut)
    assert held_out == [s for s in parse_speeches(corpus) if s.start >= cut]


@pytest.mark.parametrize("name", ["who", "shuffled", "end"])
def test_no_example_comes_from_the_pretraining_text(name, tasks, training_text):
    task = tasks[name]
    examples = task.train + task.test
    assert min(example.start for example in examples) >= len(training_text)
    # By content too: a sample of the real texts (long enough not to recur by chance) is absent.
    real = [e.text for e in examples if (name == "who" or e.label == 1) and len(e.text) >= 30]
    sample = random.Random(0).sample(real, 60)
    assert not [text for text in sample if text in training_text]


def test_real_or_shuffled_is_balanced_and_splits_by_speech(tasks):
    task = tasks["shuffled"]
    assert task.class_names == ("shuffled", "real")
    assert task.class_counts("train") == [len(task.train) // 2] * 2
    assert task.class_counts("test") == [len(task.test) // 2] * 2
    for examples in (task.train, task.test):
        # Each speech gives one real example and its shuffle, side by side.
        for real, fake in zip(examples[::2], examples[1::2], strict=True):
            assert (real.label, fake.label) == (1, 0) and real.start == fake.start
            assert fake.text != real.text and sorted(fake.text.split()) == sorted(real.text.split())
            # No surface cue: the first and last characters and every line's first character are the same.
            assert (fake.text[0], fake.text[-1]) == (real.text[0], real.text[-1])
            assert [line[0] for line in fake.text.split("\n")] == [line[0] for line in real.text.split("\n")]
    assert (len(task.train), len(task.test)) == (1102, 472)
    assert not {e.start for e in task.train} & {e.start for e in task.test}
    assert task.majority_baseline == 0.5
    assert 0.28 < len(task.test) / (len(task.train) + len(task.test)) < 0.32


def test_tasks_are_deterministic_given_a_seed(tasks):
    assert who_speaks_task(n_characters=4, seed=0) == tasks["who"]
    assert real_or_shuffled_task(seed=0) == tasks["shuffled"]
    other = real_or_shuffled_task(seed=1)
    assert {e.start for e in other.test} != {e.start for e in tasks["shuffled"].test}


def test_speech_end_is_balanced_cuts_at_a_line_break_and_splits_by_speech(tasks, training_text):
    task = tasks["end"]
    assert task.class_names == ("continues", "ends")
    assert (len(task.train), len(task.test)) == (624, 268)
    assert task.class_counts("train") == [312, 312] and task.class_counts("test") == [134, 134]
    assert task.majority_baseline == 0.5
    by_start = {s.start: s for s in held_out_speeches()}
    for examples in (task.train, task.test):
        # Each speech gives its whole text, then a cut of it, side by side: every even prefix is balanced.
        for whole, cut in zip(examples[::2], examples[1::2], strict=True):
            assert (whole.label, cut.label) == (1, 0) and whole.start == cut.start
            speech = by_start[whole.start]  # a held-out speech, so after the pretraining text
            assert speech.start >= len(training_text)
            assert whole.text == f"{speech.speaker}:\n{speech.text}\n"
            # The cut is a proper prefix that ends at a line break, after at least one line of the speech.
            assert whole.text.startswith(cut.text) and len(cut.text) < len(whole.text)
            assert cut.text.endswith("\n") and cut.text.count("\n") >= 2
            assert whole.text[len(cut.text) - 1] == "\n"
            assert speech.text.count("\n") >= 1  # a speech of one line cannot be cut
    # Split by speech, with about test_fraction of the speeches on the test side.
    assert not {e.start for e in task.train} & {e.start for e in task.test}
    assert 0.28 < len(task.test) / (len(task.train) + len(task.test)) < 0.32
    n_lines = sum(1 for s in held_out_speeches() if "\n" in s.text)
    assert (len(task.train) + len(task.test)) // 2 == n_lines


def test_speech_end_is_deterministic_and_cuts_anywhere(tasks):
    assert speech_end_task(seed=0) == tasks["end"]
    other = speech_end_task(seed=1)
    assert {e.start for e in other.test} != {e.start for e in tasks["end"].test}
    # k is drawn from 1 to n - 1: over the task, cuts after the first line and before the last both occur.
    cut_lines = [(cut.text.count("\n") - 1, whole.text.count("\n") - 1)
                 for whole, cut in zip(tasks["end"].train[::2], tasks["end"].train[1::2], strict=True)]
    assert all(1 <= k < n for k, n in cut_lines)
    assert any(k == 1 and n > 2 for k, n in cut_lines) and any(k == n - 1 and n > 2 for k, n in cut_lines)
    with pytest.raises(ValueError, match="test_fraction"):
        speech_end_task(test_fraction=0.0)


def test_speech_end_on_a_toy_corpus():
    # Only speeches of two lines or more count; with corpus= the held-out part is the last 10% of it.
    toy = "\n\n".join(f"A{i}:\nline one {i}\nline two {i}\nline three {i}" for i in range(40)) + "\n\nB:\nalone\n"
    task = speech_end_task(seed=3, corpus=toy)
    assert all(e.text.startswith("A") for e in task.train + task.test)
    assert {e.text.count("\n") for e in task.train if e.label == 1} == {4}
    assert {e.text.count("\n") for e in task.train if e.label == 0} <= {2, 3}


def test_surface_rule_is_strong_on_speech_end(tasks):
    # Stated plainly in chapter 11: "the last line ends with . ! or ?" reads the end of a speech well.
    task = tasks["end"]
    score = sum((e.text.rstrip()[-1] in ".!?") == (e.label == 1) for e in task.test) / len(task.test)
    assert score == pytest.approx(241 / 268)


def test_who_speaks_picks_the_most_frequent_characters_and_stratifies(tasks):
    task = tasks["who"]
    counts = Counter(s.speaker for s in held_out_speeches())
    assert list(task.class_names) == [name for name, _ in counts.most_common(4)]
    assert task.class_names == ("PETRUCHIO", "KATHARINA", "TRANIO", "BAPTISTA")
    for label, name in enumerate(task.class_names):
        n_train, n_test = task.class_counts("train")[label], task.class_counts("test")[label]
        assert n_train + n_test == counts[name]
        assert n_test == round(0.3 * counts[name])
    assert not {e.start for e in task.train} & {e.start for e in task.test}
    assert task.majority_class == 0
    assert task.majority_baseline == pytest.approx(40 / 98)
    assert "majority-class baseline: 0.408 (always 'PETRUCHIO')" in task.describe()


def test_who_speaks_refuses_more_characters_than_there_are():
    with pytest.raises(ValueError, match=r"asked for 23 characters.*has 22 characters with at least 10 speeches"):
        who_speaks_task(n_characters=23)
    with pytest.raises(ValueError, match=r"asked for 5 characters.*has 4 characters with at least 61 speeches"):
        who_speaks_task(n_characters=5, min_speeches=61)
    with pytest.raises(ValueError, match="at least 2"):
        who_speaks_task(n_characters=1)
    with pytest.raises(ValueError, match="test_fraction"):
        who_speaks_task(test_fraction=1.0)


def test_shuffle_words_moves_only_plain_words():
    text = "To be, or not to be: that is the question.\nAy, there is the rub and the sleep of death"
    shuffled = shuffle_words(text, random.Random(0))
    assert shuffled != text
    assert sorted(shuffled.split()) == sorted(text.split())
    assert [len(line.split()) for line in shuffled.split("\n")] == [10, 10]
    # Capitalised and punctuated words, each line's first word and the last word keep their places.
    for before, after in zip(text.split(), shuffled.split(), strict=True):
        if not before.isalpha() or not before.islower():
            assert after == before
    assert (shuffled.split()[0], shuffled.split()[10], shuffled.split()[-1]) == ("To", "Ay,", "death")
    # Two movable plain words: a shuffle that gives them back in order is rotated instead.
    assert all(shuffle_words("Good morrow to you, sir", random.Random(seed)) == "Good to morrow you, sir"
               for seed in range(10))
    for unshufflable in ("no no", "Good morrow, sir.", "O Romeo, Romeo! wherefore art", "Ay me me me."):
        assert not can_shuffle(unshufflable)
        with pytest.raises(ValueError, match="fewer than two different plain words"):
            shuffle_words(unshufflable, random.Random(0))
    assert can_shuffle("Good morrow to you, sir")


def test_surface_rules_score_a_coin_flip_on_real_or_shuffled(tasks):
    # The shuffle keeps capitals and punctuation in place, so "starts with a capital" or "ends with
    # punctuation" cannot tell the classes apart: on every example pair, both rules give one answer.
    task = tasks["shuffled"]

    def accuracy(rule) -> float:
        return sum(rule(e.text) == (e.label == 1) for e in task.test) / len(task.test)

    assert accuracy(lambda text: text[0].isupper()) == 0.5
    assert accuracy(lambda text: not text[-1].isalnum()) == 0.5


def test_majority_baseline_by_hand():
    def examples(labels):
        return [Example(str(i), label, i) for i, label in enumerate(labels)]

    task = LabelledTask("toy", ("a", "b", "c"), examples([2, 2, 1, 0, 2]), examples([0, 2, 1, 1]))
    assert task.class_counts("train") == [1, 1, 3]
    assert task.class_counts("test") == [1, 2, 1]
    assert (task.majority_class, task.majority_baseline) == (2, 0.25)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        task.class_counts("val")


def test_each_task_says_which_end_of_a_long_text_it_reads(tasks):
    # speech-end is told apart by how a text ends; the others read a speech from its start.
    assert {name: task.keep for name, task in tasks.items()} == {"who": "first", "shuffled": "first", "end": "last"}
    with pytest.raises(ValueError, match=r"'first' .* or 'last'"):
        LabelledTask("toy", ("a", "b"), [], [], keep="end")

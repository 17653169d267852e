import json
from collections import Counter
from itertools import pairwise

import pytest
import regex
import torch
from hypothesis import given
from hypothesis import strategies as st

from shared.corpus import tiny_shakespeare
from shared.datasets import create_dataloader
from shared.files import gpt2_bpe_files
from shared.tokenizer import (
    ENDOFTEXT,
    GPT2_PATTERN,
    UNKNOWN,
    BPETokenizer,
    UnknownTokenError,
    WordTokenizer,
    gpt2_encoding,
    split_words,
)

# Text that stresses a byte-level tokenizer: unicode, emoji (multi-codepoint too), whitespace
# runs, digits, contractions and code, glued together in any order.
FRAGMENTS = [
    "Hello",
    " world",
    "'s",
    "'ll",
    "'ve",
    "'re",
    "I'm",
    " don't",
    "  ",
    "   ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "123",
    "4567",
    " 2024",
    "3.14",
    "def f(x):\n    return x ** 2\n",
    "{'a': [1, 2]}",
    "<|endoftext|>",
    "😀",
    "👩‍👩‍👧",
    "🇫🇷",
    "naïve",
    "日本語",
    "Ünïcödé",
    "ñ",
    "\u00a0",
    "--",
    "...",
    "?!",
    "$",
    "ΑΒΓ",
]
mixed_text = st.lists(st.sampled_from(FRAGMENTS), max_size=20).map("".join)
any_text = st.one_of(st.text(max_size=60), mixed_text)


@pytest.fixture(scope="module")
def gpt2_bpe() -> BPETokenizer:
    return BPETokenizer.from_gpt2(*gpt2_bpe_files())


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(tiny_shakespeare()[:20_000], vocab_size=300)


# -- word-level tokenizer ----------------------------------------------------------------------


def test_word_tokenizer_round_trips_words_and_reattaches_punctuation():
    text = "Hello, world. Is this-- a test? I'll see (maybe)."
    tok = WordTokenizer.from_text(text)
    assert split_words("Is this-- a test?") == ["Is", "this", "-", "-", "a", "test", "?"]
    assert tok.decode(tok.encode(text)) == "Hello, world. Is this - - a test? I'll see (maybe)."


def test_word_tokenizer_strict_mode_lists_the_unknown_words():
    tok = WordTokenizer.from_text("the cat sat on the mat", strict=True)
    with pytest.raises(UnknownTokenError) as info:
        tok.encode("the dog sat on the hat")
    assert "'dog'" in str(info.value) and "'hat'" in str(info.value) and "2 word(s)" in str(info.value)


def test_word_tokenizer_maps_unknown_words_to_unk_and_keeps_endoftext():
    tok = WordTokenizer.from_text("the cat sat on the mat")
    ids = tok.encode(f"the dog sat {ENDOFTEXT} the hat")
    assert tok.decode(ids) == f"the {UNKNOWN} sat {ENDOFTEXT} the {UNKNOWN}"
    assert ids.count(tok.str_to_id[ENDOFTEXT]) == 1


def test_word_tokenizer_rejects_ids_outside_its_vocabulary():
    tok = WordTokenizer.from_text("a b")
    with pytest.raises(ValueError, match="not in this vocabulary"):
        tok.decode([tok.vocab_size])


# -- GPT-2 through tiktoken, offline -----------------------------------------------------------


def test_local_gpt2_encoding_equals_tiktoken_on_tiny_shakespeare(tiktoken_gpt2):
    text = tiny_shakespeare()
    ids = gpt2_encoding().encode_ordinary(text)
    assert len(ids) == 338_025
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_encoding().n_vocab == tiktoken_gpt2.n_vocab == 50_257


@given(any_text)
def test_local_gpt2_encoding_equals_tiktoken_on_any_text(tiktoken_gpt2, text):
    expected = tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2_encoding().encode(text, allowed_special="all") == expected


# -- BPE from scratch with GPT-2's merges ------------------------------------------------------


def test_from_gpt2_equals_tiktoken_on_all_of_tiny_shakespeare(gpt2_bpe, tiktoken_gpt2):
    text = tiny_shakespeare()
    ids = gpt2_bpe.encode(text)
    assert len(ids) == 338_025
    assert ids == tiktoken_gpt2.encode(text)
    assert gpt2_bpe.decode(ids) == text


@given(any_text)
def test_from_gpt2_equals_tiktoken_on_any_text(gpt2_bpe, tiktoken_gpt2, text):
    assert gpt2_bpe.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2_bpe.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_bpe.vocab_size == tiktoken_gpt2.n_vocab


@given(any_text)
def test_encode_decode_round_trips_any_text(gpt2_bpe, small_bpe, text):
    assert gpt2_bpe.decode(gpt2_bpe.encode(text)) == text
    assert small_bpe.decode(small_bpe.encode(text)) == text
    assert small_bpe.decode(small_bpe.encode_ordinary(text)) == text


def test_decoding_invalid_utf8_gives_replacement_characters(gpt2_bpe):
    ids = gpt2_bpe.encode("😀")  # one emoji is four bytes, split over several tokens
    assert len(ids) > 1
    assert gpt2_bpe.decode(ids[:1]) == "\ufffd"
    assert gpt2_bpe.decode(ids) == "😀"
    with pytest.raises(ValueError, match="not in this vocabulary"):
        gpt2_bpe.decode([gpt2_bpe.vocab_size])


# -- BPE training ------------------------------------------------------------------------------


def naive_train(text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """Reference: recount every pair from scratch before each merge (slow, obviously right)."""
    words = [list(p.encode("utf-8")) for p in regex.findall(GPT2_PATTERN, text)]
    merges = []
    for m in range(n_merges):
        counts = Counter(pair for w in words for pair in pairwise(w))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, ties -> smallest pair
        new_id = 256 + m
        merges.append((*best, new_id))
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [new_id]
                i += 1
    return merges


@given(st.one_of(st.text(alphabet="ab c\n", max_size=80), mixed_text), st.integers(0, 30))
def test_incremental_training_equals_naive_training(text, n_merges):
    fast = BPETokenizer.train(text, 256 + n_merges, special_tokens=())
    expected = naive_train(text, n_merges)
    assert [(a, b, i) for (a, b), i in fast.merges.items()] == expected


def test_training_on_the_classic_example_merges_by_hand_computed_counts():
    # "aaabdaaabac": aa occurs 4 times -> merge it. Then (aa, a) and (a, b) both occur twice and the
    # tie goes to the smaller pair of ids, (97, 98) = "ab". Then (aa, ab) occurs twice -> "aaab".
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3, special_tokens=())
    assert [tok.vocab[i] for i in sorted(tok.merges.values())] == [b"aa", b"ab", b"aaab"]


def test_merges_never_cross_pre_token_boundaries(small_bpe):
    for token_id in small_bpe.merges.values():
        piece = small_bpe.vocab[token_id].decode("utf-8")  # the training text is ASCII
        assert len(regex.findall(GPT2_PATTERN, piece)) == 1, piece


def test_special_tokens_get_the_last_ids_and_are_encoded_only_when_asked():
    tok = BPETokenizer.train("hello world " * 50, 260, special_tokens=[ENDOFTEXT])
    assert tok.vocab_size == 260 and tok.special_tokens == {ENDOFTEXT: 259}
    ids = tok.encode(f"hello{ENDOFTEXT}world")
    assert 259 in ids and tok.decode(ids) == f"hello{ENDOFTEXT}world"
    assert 259 not in tok.encode_ordinary(f"hello{ENDOFTEXT}world")


def test_training_refuses_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("abc", 200)


def test_save_and_load_give_the_same_tokenizer(small_bpe, tmp_path):
    path = tmp_path / "tok.json"
    small_bpe.save(path)
    loaded = BPETokenizer.load(path)
    text = tiny_shakespeare()[50_000:60_000] + ENDOFTEXT
    assert loaded.encode(text) == small_bpe.encode(text)
    assert loaded.merges == small_bpe.merges and loaded.special_tokens == small_bpe.special_tokens


def test_from_dict_inverts_to_dict_and_refuses_anything_else(small_bpe):
    state = json.loads(json.dumps(small_bpe.to_dict()))  # as stored: merges become lists
    rebuilt = BPETokenizer.from_dict(state)
    assert rebuilt.merges == small_bpe.merges and rebuilt.byte_ids == small_bpe.byte_ids
    assert rebuilt.special_tokens == small_bpe.special_tokens and rebuilt.pattern == small_bpe.pattern
    text = tiny_shakespeare()[70_000:75_000] + ENDOFTEXT
    assert rebuilt.encode(text) == small_bpe.encode(text)
    for bad in ({**state, "format": "something/else"}, {"merges": state["merges"]}):
        with pytest.raises(ValueError, match="the checkpoint's tokenizer is not a tokenizer written by"):
            BPETokenizer.from_dict(bad, source="the checkpoint's tokenizer")


def test_a_trained_tokenizer_feeds_a_dataloader(small_bpe):
    ids = small_bpe.encode(tiny_shakespeare()[:5_000])
    loader = create_dataloader(ids, batch_size=4, context_length=16)
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.long
    assert int(inputs.max()) < small_bpe.vocab_size

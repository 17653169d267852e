"""Tokenizers: a word-level one, GPT-2's BPE through tiktoken (offline), and byte-level BPE from scratch."""

import functools
import heapq
import json
import re
import typing
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import regex
import tiktoken
import tiktoken.load

from shared.files import gpt2_bpe_files

__all__ = [
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "UNKNOWN",
    "BPETokenizer",
    "UnknownTokenError",
    "WordTokenizer",
    "gpt2_bytes_to_unicode",
    "gpt2_encoding",
    "split_words",
]

ENDOFTEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"


class UnknownTokenError(KeyError):
    """The text holds words that are not in the tokenizer's vocabulary (strict mode)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# Word-level tokenizer
# ---------------------------------------------------------------------------------------------

# A word (letters, digits, underscores; inner apostrophes as in "I'll" stay inside), or one
# punctuation mark. Whitespace separates tokens and is not kept.
_WORD_PATTERN = re.compile(rf"{re.escape(ENDOFTEXT)}|{re.escape(UNKNOWN)}|\w+(?:'\w+)*|[^\w\s]")
_NO_SPACE_BEFORE = re.compile(r" ([,.:;?!)\]}'])")
_NO_SPACE_AFTER = re.compile(r"([(\[{]) ")


def split_words(text: str) -> list[str]:
    """Split text into words and punctuation marks (the word-level tokenizer's pieces)."""
    return _WORD_PATTERN.findall(text)


class WordTokenizer:
    """Word-level tokenizer with a vocabulary built from a text.

    ``strict=True`` refuses words outside the vocabulary (the error lists them); otherwise they
    become ``<|unk|>``. ``<|endoftext|>`` separates documents. Decoding joins tokens with spaces
    and re-attaches punctuation, so it restores the words but not the original whitespace.
    """

    def __init__(self, vocab: dict[str, int], strict: bool = False):
        for special in (ENDOFTEXT, UNKNOWN):
            if special not in vocab:
                raise ValueError(f"the vocabulary must contain the special token {special}")
        self.str_to_id = dict(vocab)
        self.id_to_str = {i: s for s, i in vocab.items()}
        self.strict = strict

    @classmethod
    def from_text(cls, text: str, strict: bool = False) -> "WordTokenizer":
        """Vocabulary = the sorted distinct words of ``text``, then ``<|endoftext|>``, ``<|unk|>``."""
        words = sorted(set(split_words(text)) - {ENDOFTEXT, UNKNOWN})
        vocab = {w: i for i, w in enumerate([*words, ENDOFTEXT, UNKNOWN])}
        return cls(vocab, strict=strict)

    @property
    def vocab_size(self) -> int:
        return len(self.str_to_id)

    def encode(self, text: str) -> list[int]:
        words = split_words(text)
        unknown = sorted({w for w in words if w not in self.str_to_id})
        if unknown and self.strict:
            shown = ", ".join(repr(w) for w in unknown[:20])
            more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
            raise UnknownTokenError(
                f"{len(unknown)} word(s) are not in the vocabulary: {shown}{more}. Build the "
                "vocabulary from a text that contains them, or use strict=False to map them "
                f"to {UNKNOWN}."
            )
        unk = self.str_to_id[UNKNOWN]
        return [self.str_to_id.get(w, unk) for w in words]

    def decode(self, ids: Iterable[int]) -> str:
        try:
            text = " ".join(self.id_to_str[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in this vocabulary (0..{self.vocab_size - 1})") from None
        return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


# ---------------------------------------------------------------------------------------------
# GPT-2's tokenizer through tiktoken, built from local files
# ---------------------------------------------------------------------------------------------

# GPT-2's pre-tokenization regex, exactly as tiktoken uses it: contractions, runs of letters,
# of digits, of other symbols (each with at most one leading space), and whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from the local ``gpt2_bpe_files()`` (works offline)."""
    encoder_json, vocab_bpe = gpt2_bpe_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )


# ---------------------------------------------------------------------------------------------
# Byte-level BPE from scratch
# ---------------------------------------------------------------------------------------------

Pair = tuple[int, int]


@typing.no_type_check  # hot loop: runtime type checks would cost more than the work
def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by ``new_id``."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, used to store byte strings in ``encoder.json``.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) are
    shifted to the characters 256, 257, ... in byte order, so a space appears as 'Ġ' (256 + 32).
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    mapping, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


class BPETokenizer:
    """Byte-level byte-pair encoding, trained here or loaded from GPT-2's merges.

    The text is first split with a pre-tokenization regex (GPT-2's by default) into pieces such
    as " the" or "123"; each piece is turned into its UTF-8 bytes and merged pair by pair, always
    applying the earliest-learned merge first. Merges never cross piece boundaries.
    """

    def __init__(
        self,
        byte_ids: Sequence[int],
        merges: Sequence[tuple[int, int, int]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
    ):
        if sorted(byte_ids) != list(range(256)):
            raise ValueError("byte_ids must give the 256 single bytes the ids 0..255 in some order")
        self.byte_ids = list(byte_ids)
        self.pattern = pattern
        self._piece_re = regex.compile(pattern)
        self.vocab: dict[int, bytes] = {self.byte_ids[b]: bytes([b]) for b in range(256)}
        self.merges: dict[Pair, int] = {}
        previous_id = -1
        for a, b, new_id in merges:
            if new_id in self.vocab:
                raise ValueError(f"merge ({a}, {b}) -> {new_id}: id {new_id} is already taken")
            if new_id < previous_id:  # encoding relies on "smaller id = earlier merge"
                raise ValueError("merges must be listed in the order they were learned (rising ids)")
            previous_id = new_id
            self.merges[(a, b)] = new_id
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        self.special_tokens = dict(special_tokens or {})
        for name, i in self.special_tokens.items():
            if i in self.vocab:
                raise ValueError(f"special token {name} has id {i}, which is already a regular token")
        self._special_by_id = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self._special_re = None
        if self.special_tokens:  # longest first, so that one special token can contain another
            names = sorted(self.special_tokens, key=len, reverse=True)
            self._special_re = regex.compile("(" + "|".join(regex.escape(s) for s in names) + ")")
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        pattern: str = GPT2_PATTERN,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Pairs are counted once per distinct piece (weighted by how often the piece occurs), and
        after each merge only the pieces that contained the merged pair are recounted. Ties in
        pair frequency go to the smaller pair of ids, so training is deterministic.
        """
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)} (bytes + special tokens)")
        piece_re = regex.compile(pattern)
        chunks = [text]
        if special_tokens:  # never learn merges across (or inside) special tokens
            chunks = regex.split("|".join(regex.escape(s) for s in special_tokens), text)
        piece_counts = Counter(p for chunk in chunks for p in piece_re.findall(chunk))
        words = [list(p.encode("utf-8")) for p in piece_counts]
        counts = list(piece_counts.values())

        pair_counts: dict[Pair, int] = defaultdict(int)
        where: dict[Pair, set[int]] = defaultdict(set)  # pair -> pieces that (may) contain it
        for w, (ids, count) in enumerate(zip(words, counts, strict=True)):
            for pair in pairwise(ids):
                pair_counts[pair] += count
                where[pair].add(w)
        heap = [(-c, pair) for pair, c in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int, int]] = []
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count:  # a stale entry: the count changed since
                continue
            new_id = 256 + len(merges)
            merges.append((*pair, new_id))
            changed: set[Pair] = set()
            for w in where.pop(pair):
                old = words[w]
                new = _merge(old, pair, new_id)
                if len(new) == len(old):
                    continue
                count = counts[w]
                for p in pairwise(old):
                    pair_counts[p] -= count
                    changed.add(p)
                for p in pairwise(new):
                    pair_counts[p] += count
                    where[p].add(w)
                    changed.add(p)
                words[w] = new
            for p in changed:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    pair_counts.pop(p, None)
        base = 256 + len(merges)
        specials = {s: base + i for i, s in enumerate(special_tokens)}
        return cls(range(256), merges, specials, pattern)

    # -- GPT-2 ---------------------------------------------------------------------------------

    @classmethod
    def from_gpt2(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> "BPETokenizer":
        """Load GPT-2's vocabulary (``encoder.json``) and its 50,000 merges (``vocab.bpe``)."""
        encoder: dict[str, int] = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        byte_to_char = gpt2_bytes_to_unicode()
        byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
        merges = []
        for line in lines[1:]:  # the first line is a version comment
            if line.strip():
                left, right = line.split()
                merges.append((encoder[left], encoder[right], encoder[left + right]))
        specials = {s: i for s, i in encoder.items() if s == ENDOFTEXT}
        return cls(byte_ids, merges, specials, GPT2_PATTERN)

    # -- encoding and decoding -----------------------------------------------------------------

    @typing.no_type_check  # hot loop
    def _encode_piece(self, piece: bytes) -> list[int]:
        ids = [self.byte_ids[b] for b in piece]
        merges = self.merges
        while len(ids) > 1:
            # The earliest-learned merge among adjacent pairs (merged ids grow with merge order).
            best, best_id = None, None
            for pair in pairwise(ids):
                new_id = merges.get(pair)
                if new_id is not None and (best_id is None or new_id < best_id):
                    best, best_id = pair, new_id
            if best is None:
                break
            ids = _merge(ids, best, best_id)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, treating special-token strings as ordinary text."""
        out: list[int] = []
        cache = self._cache
        for piece in self._piece_re.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._encode_piece(piece.encode("utf-8"))
                if len(cache) > 200_000:  # bound the memory of a long-lived tokenizer
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text (``<|endoftext|>``) become their ids."""
        if self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:  # odd parts are the separators, i.e. special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    @typing.no_type_check  # called once per token when decoding
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        raise ValueError(f"token id {token_id} is not in this vocabulary (0..{self.vocab_size - 1})")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; byte sequences that are not valid UTF-8 become U+FFFD (�)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- saving and loading --------------------------------------------------------------------

    def to_dict(self) -> dict:
        merges = [[a, b, new_id] for (a, b), new_id in self.merges.items()]
        return {
            "format": "build-a-gpt/bpe",
            "version": 1,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": merges,
            "special_tokens": self.special_tokens,
        }

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (merges in learned order); :meth:`load` reads it back."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def from_dict(cls, state: dict, source: str = "this dict") -> "BPETokenizer":
        """The tokenizer :meth:`to_dict` describes (``source`` names where ``state`` came from, for the error)."""
        if not isinstance(state, dict) or state.get("format") != "build-a-gpt/bpe":
            raise ValueError(f"{source} is not a tokenizer written by BPETokenizer.to_dict or BPETokenizer.save")
        merges = [tuple(m) for m in state["merges"]]
        return cls(state["byte_ids"], merges, state["special_tokens"], state["pattern"])

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), source=str(path))

    def __repr__(self) -> str:
        specials = list(self.special_tokens)
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={specials})"

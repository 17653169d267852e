"""Chapter 1's exercises: tokenizers, checked against ``shared.tokenizer`` and tiktoken.

The checkers build their own small inputs (a sonnet, a few hand-picked strings) instead of
reading Tiny Shakespeare, so that each check takes milliseconds and needs no download.
"""

import regex

from shared.exercises import NotYet, exercise, expect
from shared.tokenizer import GPT2_PATTERN, BPETokenizer, gpt2_encoding, split_words

# Sonnet 18: short, in the public domain, and with enough repeated pairs (and ties between their
# counts) to tell a correct BPE trainer from a nearly correct one.
SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""

PREDICT_LINE = "All the world's a stage,"


def _show(items: list, limit: int = 12) -> str:
    """A list for a hint, cut short so that a hint stays one readable line."""
    return repr(items[:limit])[:-1] + (", ...]" if len(items) > limit else "]")


# -- 1.1 -------------------------------------------------------------------------------------------


@exercise("1.1", "a character tokenizer")
def _check_char_tokenizer(answer):
    tokenizer = answer(SONNET)
    chars = sorted(set(SONNET))
    for sample in ["Shall I compare thee", "May,\nAnd"]:
        ids = tokenizer.encode(sample)
        expected = [chars.index(c) for c in sample]
        expect(isinstance(ids, list) and all(isinstance(i, int) for i in ids),
               f"encode({sample!r}) should return a list of ints, got {type(ids).__name__}: {ids!r:.80}")
        expect(ids == expected,
               f"encode({sample!r}) gave {_show(ids)}, expected {_show(expected)}. The vocabulary is every "
               "distinct character of the text, sorted (sorted(set(text))), numbered from 0 (section 1.1).")
    back = tokenizer.decode(tokenizer.encode(SONNET))
    expect(back == SONNET, f"decode(encode(text)) should give the text back, got {back[:40]!r}... "
                           "Map each id back to its character and join them with nothing in between.")
    other = answer("abc")
    expect(other.encode("cab") == [2, 0, 1],
           f"built from the text 'abc', encode('cab') gave {other.encode('cab')}, expected [2, 0, 1]: "
           "the vocabulary must come from the text passed to the constructor.")
    return f"{len(chars)} characters in the sonnet's vocabulary; encode and decode round-trip exactly."


# -- 1.2 -------------------------------------------------------------------------------------------


@exercise("1.2", "predict the token counts")
def _check_token_counts(prediction):
    expect(isinstance(prediction, tuple) and len(prediction) == 3 and all(isinstance(n, int) for n in prediction),
           "write your prediction as a tuple of three ints (characters, word pieces, GPT-2 tokens), "
           f"got {prediction!r}")
    gpt2 = gpt2_encoding()
    pieces = [gpt2.decode([i]) for i in gpt2.encode(PREDICT_LINE)]
    words = split_words(PREDICT_LINE)
    truth = (len(PREDICT_LINE), len(words), len(pieces))
    why = [
        f"characters: every character counts, spaces and punctuation included ({len(PREDICT_LINE)})",
        f"word pieces: chapter 1's word pattern keeps \"world's\" whole and splits off the comma: {words}",
        f"GPT-2 tokens: its pre-tokenizer splits the contraction \"'s\" off \"world\", and each common word "
        f"is one token with its leading space: {pieces}",
    ]
    wrong = [k for k in range(3) if prediction[k] != truth[k]]
    if wrong:
        raise NotYet(f"you predicted {prediction}, the counts are {truth}. " + "; ".join(why[k] for k in wrong) + ".")
    return f"{truth}: GPT-2's pieces are {pieces}."


# -- 1.3 -------------------------------------------------------------------------------------------

# One pre-token that holds the whole text: BPETokenizer then trains exactly like a learner's loop
# over the raw bytes, with the same tie rule (the most frequent pair, then the smallest ids).
WHOLE_TEXT = r"[\s\S]+"


@exercise("1.3", "BPE on raw bytes, without pre-tokens")
def _check_byte_bpe(answer):
    n_merges = 24
    merges = answer(SONNET, n_merges)
    reference = BPETokenizer.train(SONNET, vocab_size=256 + n_merges, special_tokens=(), pattern=WHOLE_TEXT)
    expect(isinstance(merges, dict), f"return a dict {{(left_id, right_id): new_id}}, got {type(merges).__name__}")
    expect(len(merges) == n_merges, f"asked for {n_merges} merges, got {len(merges)}")
    vocab = {i: bytes([i]) for i in range(256)}
    both = zip(merges.items(), reference.merges.items(), strict=True)  # same length: checked above
    for step, ((pair, new_id), (ref_pair, ref_id)) in enumerate(both):
        if (tuple(pair), new_id) != (ref_pair, ref_id):
            shown = vocab[ref_pair[0]] + vocab[ref_pair[1]]
            hint = (f"merge {step} (in the order learned): yours {pair} -> {new_id}, expected {ref_pair} -> "
                    f"{ref_id} ({shown.decode('utf-8', 'replace')!r}).")
            if new_id != ref_id:
                hint += " New ids are 256, 257, ... in the order the merges are learned."
            elif pair in reference.merges:
                hint += (" Your pair is a merge the reference learns at another step: recount the pairs after "
                         "every merge, and break ties in the count by the smaller pair (min over (-count, pair)).")
            raise NotYet(hint)
        vocab[ref_id] = vocab[ref_pair[0]] + vocab[ref_pair[1]]
    # The point of the exercise: without pre-tokens, merges glue words to their neighbours.
    crossing = [vocab[i].decode("utf-8", "replace") for i in reference.merges.values()
                if len(regex.findall(GPT2_PATTERN, vocab[i].decode("utf-8", "replace"))) > 1]
    return (f"your {n_merges} merges equal BPETokenizer's; {len(crossing)} of them cross a pre-token "
            f"boundary, which GPT-2's pattern would forbid: {crossing}")


# -- 1.4 -------------------------------------------------------------------------------------------

SPLIT_SAMPLES = [
    "Is this a dagger which I see before me?<|endoftext|>I'll see thee at Philippi.",
    "<|unk|> and <|endoftext|>",
    "Stay -- O, stay! o'er-leap't (maybe).",
    "",
]


@exercise("1.4", "bug hunt: a splitter that cuts special tokens apart")
def _check_splitter(answer):
    for sample in SPLIT_SAMPLES:
        got, want = answer(sample), split_words(sample)
        if got != want:
            hint = f"split({sample!r}) gave {_show(got)}, expected {_show(want)}."
            if "endoftext" in got or "unk" in got:
                hint += (" A special token was cut into '<', '|', a word, '|', '>'. At each position a regular "
                         "expression tries its alternatives from left to right and keeps the first that matches.")
            raise NotYet(hint)
    return "special tokens stay whole, and words and punctuation split as shared.tokenizer.split_words does."


# -- 1.5 -------------------------------------------------------------------------------------------

DECODE_SAMPLES = ["Shall I compare thee", "naïve café", "😀 a summer's day", "語"]


@exercise("1.5", "bug hunt: decoding token by token")
def _check_decode(answer):
    tokenizer = BPETokenizer.train(SONNET, vocab_size=256 + 40, special_tokens=())
    for sample in DECODE_SAMPLES:
        ids = tokenizer.encode(sample)
        got = answer(ids, tokenizer.vocab)
        if got != sample:
            hint = f"decode(ids of {sample!r}) gave {got!r}, expected {sample!r}."
            if "\ufffd" in got:
                hint += (" A character of several bytes was spread over several tokens, and each token's bytes "
                         "were decoded on their own. Join all the bytes first, then decode once.")
            raise NotYet(hint)
    cut = tokenizer.encode("😀!")[:2]  # two of the emoji's four bytes
    got, want = answer(cut, tokenizer.vocab), tokenizer.decode(cut)
    expect(got == want, f"the first two bytes of '😀' should decode to {want!r} (errors='replace'), got {got!r}")
    return "multi-byte characters split across tokens decode correctly, and a cut character becomes '�'."

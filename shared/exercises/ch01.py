"""Chapter 1's exercises: tokenizers, checked against ``shared.tokenizer`` and tiktoken.

The checkers build their own small inputs (a sonnet, a few hand-picked strings) instead of
reading Tiny Shakespeare, so that each check takes milliseconds and needs no download.
"""

import regex

from shared.exercises import NotYet, exercise, expect, own_work
from shared.tokenizer import GPT2_PATTERN, BPETokenizer, WordTokenizer, gpt2_encoding, split_words

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


@exercise("1.1", "a character tokenizer", level=1, minutes=10)
def _check_char_tokenizer(answer):
    own_work(answer, WordTokenizer, BPETokenizer)
    tokenizer = answer(SONNET)
    chars = sorted(set(SONNET))
    for sample in ["Shall I compare thee", "May,\nAnd"]:
        ids = tokenizer.encode(sample)
        expected = [chars.index(c) for c in sample]
        expect(isinstance(ids, list) and all(isinstance(i, int) for i in ids),
               f"encode({sample!r}) should return a list of ints, got {type(ids).__name__}: {ids!r:.80}")
        if ids != expected:
            hint = f"encode({sample!r}) gave {_show(ids)}: not the ids of section 1.1's vocabulary."
            if len(ids) != len(sample):
                hint += " Every character, spaces and newlines included, is one id."
            elif min(ids, default=0) > 0 and [i - 1 for i in ids] == expected:
                hint += " The first character of the vocabulary has id 0."
            else:
                hint += " The vocabulary is every distinct character of the text, sorted (sorted(set(text))), " \
                        "numbered from 0."
            raise NotYet(hint)
    back = tokenizer.decode(tokenizer.encode(SONNET))
    expect(back == SONNET, f"decode(encode(text)) should give the text back, got {back[:40]!r}...: "
                           "Map each id back to its character and join them with nothing in between.")
    other = answer("abc")
    expect(other.encode("cab") == [2, 0, 1],
           f"built from the text 'abc', encode('cab') gave {other.encode('cab')}, which is not right for that "
           "text: the vocabulary must come from the text passed to the constructor.")
    return f"{len(chars)} characters in the sonnet's vocabulary; encode and decode round-trip exactly."


# -- 1.2 -------------------------------------------------------------------------------------------


@exercise("1.2", "predict the token counts", level=1, minutes=5)
def _check_token_counts(prediction):
    expect(isinstance(prediction, tuple) and len(prediction) == 3 and all(isinstance(n, int) for n in prediction),
           "write your prediction as a tuple of three ints (characters, word pieces, GPT-2 tokens), "
           f"got {prediction!r}")
    gpt2 = gpt2_encoding()
    pieces = [gpt2.decode([i]) for i in gpt2.encode(PREDICT_LINE)]
    truth = (len(PREDICT_LINE), len(split_words(PREDICT_LINE)), len(pieces))
    # A wrong count gets a direction and what to think about, never the count itself.
    why = [
        "(a) characters: every character counts, the spaces, the apostrophe and the comma included",
        "(b) word pieces: chapter 1's word pattern keeps an apostrophe that sits inside a word in that word, "
        "and makes every punctuation mark a piece of its own",
        "(c) GPT-2 tokens: its pre-tokenizer splits English contractions off the word before them, each common "
        "word is one token with its leading space, and punctuation is a token of its own",
    ]
    wrong = [k for k in range(3) if prediction[k] != truth[k]]
    if wrong:
        said = [f"{why[k]}; your count is too {'high' if prediction[k] > truth[k] else 'low'}" for k in wrong]
        right = [k for k in range(3) if k not in wrong]
        intro = "Not all three yet. " if right else ""
        raise NotYet(intro + ". ".join(said) + ".")
    return f"{truth}: GPT-2's pieces are {pieces}."


# -- 1.3 -------------------------------------------------------------------------------------------

# One pre-token that holds the whole text: BPETokenizer then trains exactly like a learner's loop
# over the raw bytes, with the same tie rule (the most frequent pair, then the smallest ids).
WHOLE_TEXT = r"[\s\S]+"


@exercise("1.3", "BPE on raw bytes, without pre-tokens", level=3, minutes=25)
def _check_byte_bpe(answer):
    own_work(answer, BPETokenizer)
    n_merges = 24
    merges = answer(SONNET, n_merges)
    reference = BPETokenizer.train(SONNET, vocab_size=256 + n_merges, special_tokens=(), pattern=WHOLE_TEXT)
    expect(isinstance(merges, dict), f"return a dict {{(left_id, right_id): new_id}}, got {type(merges).__name__}")
    expect(len(merges) == n_merges, f"asked for {n_merges} merges, got {len(merges)}")
    vocab = {i: bytes([i]) for i in range(256)}
    both = zip(merges.items(), reference.merges.items(), strict=True)  # same length: checked above
    for step, ((pair, new_id), (ref_pair, ref_id)) in enumerate(both):
        if (tuple(pair), new_id) != (ref_pair, ref_id):
            hint = f"merge {step} (in the order learned) is yours {tuple(pair)} -> {new_id}, and it is not the "
            hint += "reference's."
            if tuple(pair) == ref_pair:
                hint += " The pair is right but not its id: new ids are 256, 257, ... in the order learned."
            elif tuple(pair) in reference.merges:
                hint += (" Your pair is a merge the reference learns at another step: recount the pairs after "
                         "every merge, and break ties in the count by the smaller pair (min over (-count, pair)).")
            else:
                hint += (" The reference never learns that pair: count every pair of neighbours in the sequence "
                         "as it is after the earlier merges, and replace the chosen pair everywhere.")
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


@exercise("1.4", "bug hunt: a splitter that cuts special tokens apart", level=2, minutes=10)
def _check_splitter(answer):
    own_work(answer, split_words, WordTokenizer)
    for sample in SPLIT_SAMPLES:
        got, want = answer(sample), split_words(sample)
        if got != want:
            hint = f"split({sample!r}) gave {_show(got)}, which is not section 1.2's split."
            if isinstance(got, list) and not ("endoftext" in got or "unk" in got):
                hint += (" Words keep their inner apostrophes (I'll), every other punctuation mark is a piece of "
                         "its own, and whitespace only separates pieces.")
            if "endoftext" in got or "unk" in got:
                hint += (" A special token was cut into '<', '|', a word, '|', '>'. At each position a regular "
                         "expression tries its alternatives from left to right and keeps the first that matches.")
            raise NotYet(hint)
    return "special tokens stay whole, and words and punctuation split as shared.tokenizer.split_words does."


# -- 1.5 -------------------------------------------------------------------------------------------

DECODE_SAMPLES = ["Shall I compare thee", "naïve café", "😀 a summer's day", "語"]


@exercise("1.5", "bug hunt: decoding token by token", level=2, minutes=10)
def _check_decode(answer):
    own_work(answer, BPETokenizer)
    tokenizer = BPETokenizer.train(SONNET, vocab_size=256 + 40, special_tokens=())
    for sample in DECODE_SAMPLES:
        ids = tokenizer.encode(sample)
        got = answer(ids, tokenizer.vocab)
        if got != sample:
            hint = f"decode(ids of {sample!r}) gave {got!r}, not the text back."
            if "\ufffd" in got:
                hint += (" A character of several bytes was spread over several tokens, and each token's bytes "
                         "were decoded on their own: when may a token's bytes be turned into characters?")
            raise NotYet(hint)
    cut = tokenizer.encode("😀!")[:2]  # two of the emoji's four bytes
    got, want = answer(cut, tokenizer.vocab), tokenizer.decode(cut)
    expect(got == want, f"the first two bytes of '😀' decoded to {got!r}: an incomplete character should decode "
                        "as BPETokenizer.decode does, with errors='replace'")
    return "multi-byte characters split across tokens decode correctly, and a cut character becomes '�'."

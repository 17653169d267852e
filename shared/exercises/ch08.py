"""Chapter 8's exercises: a min-p filter, how many tokens top-p keeps, a repetition penalty, a bug
hunt in cached decoding, and which decoding calls always give greedy decoding's tokens.

Every checker makes its own seeded inputs (in a forked random state, so the learner's random
stream is left as it was) and compares the answer with ``shared.generate``, with a short
reference written here, or with a property only the right answer has. Where a wrong answer matches
a common mistake, the hint names it.
"""

import math
import numbers

import torch
from torch import Tensor, nn

from shared.attention import KVCache
from shared.exercises import NotYet, describe, exercise, expect, own_work, seeded
from shared.generate import generate, generate_text, top_p_filter
from shared.model import GPTConfig, GPTModel

__all__ = [
    "GREEDY_CALLS",
    "NUCLEUS_P",
    "NUCLEUS_PROBS",
    "min_p_reference",
    "repetition_penalty_reference",
]

# 8.2: a next-token distribution, sorted, and three values of p. No token's mass-before lies
# within 0.01 of a p, so rounding cannot decide a count.
NUCLEUS_PROBS = (0.42, 0.23, 0.15, 0.09, 0.07, 0.04)
NUCLEUS_P = (0.3, 0.6, 0.9)
# 8.4: a small model with room for every prompt and its continuation in its context.
DECODE_CONFIG = GPTConfig(vocab_size=61, context_length=64, emb_dim=32, n_heads=4, n_layers=2)
# 8.5: calls of generate, each with the keyword arguments it adds to generate(model, prompt, 20).
GREEDY_CALLS: dict[str, dict] = {
    "a": dict(temperature=0.0, use_cache=False),
    "b": dict(temperature=1.0, top_k=1),
    "c": dict(temperature=2.0, top_k=1),
    "d": dict(temperature=0.1),
    "e": dict(temperature=1.0, top_p=0.5),
    "f": dict(temperature=0.0, top_k=50, top_p=0.9),
}
# The calls that give greedy decoding's tokens for every model, prompt and seed (exact ties aside):
# a, the cache changes the work, not the result; b, only the likeliest token is left to draw; c, a
# temperature rescales the logits and never reorders them; f, temperature 0 is the argmax, and a
# filter never removes the likeliest token. d samples from a sharper distribution, and e's nucleus
# holds several tokens whenever the likeliest has less than half the probability.
_SAME_AS_GREEDY = frozenset("abcf")


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# -- 8.1 ---------------------------------------------------------------------------------------------


def min_p_reference(logits: Tensor, min_p: float) -> Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times the top token's; the rest become -inf."""
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _min_p_inputs() -> Tensor:
    generator = torch.Generator().manual_seed(81)
    logits = torch.randn(4, 40, generator=generator)
    logits[0, 7] += 6.0  # a confident row: one token holds most of the probability
    logits[1] *= 0.3  # a flat row: many tokens are almost equally likely
    logits[3] *= 3.0  # a spread-out row with a long tail
    return logits


@exercise("8.1", "A min-p filter", level=2, minutes=15)
def check_min_p(min_p_filter) -> str:
    expect(callable(min_p_filter), f"Pass your function itself, not {type(min_p_filter).__name__}.")
    own_work(min_p_filter, min_p_reference)
    logits = _min_p_inputs()
    for min_p in (0.05, 0.2, 0.5):
        given = logits.clone()
        with torch.no_grad():
            out = min_p_filter(given, min_p)
        expect(torch.equal(given, logits), "Your filter changed its input in place; return a new tensor "
                                           "(masked_fill, not masked_fill_).")
        expect(
            isinstance(out, Tensor) and out.shape == logits.shape,
            f"Return logits of the input's shape {tuple(logits.shape)} (batch, vocab), got {describe(out)}.",
        )
        expected = min_p_reference(logits, min_p)
        kept, should_keep = out > float("-inf"), expected > float("-inf")
        if torch.equal(kept, should_keep):
            expect(
                torch.equal(out[kept], logits[kept]),
                "The right tokens survive, but their logits changed: leave the survivors as they are (softmax "
                "renormalises them when the sampler draws); return logits, not probabilities.",
            )
            continue
        probs = torch.softmax(logits, dim=-1)
        absolute = probs >= min_p
        if torch.equal(kept, absolute):
            raise NotYet(
                f"With min_p = {min_p} you kept the tokens whose probability is at least {min_p}: the threshold is "
                "relative to the top token, min_p * (its probability), so it falls when the model is unsure."
            )
        if not bool(kept.any(dim=-1).all()):
            raise NotYet(f"With min_p = {min_p} a row lost every token; the top token always passes "
                         "(its probability is >= min_p times itself).")
        row = int((kept != should_keep).any(dim=-1).nonzero()[0])
        too = "many" if kept[row].sum() > should_keep[row].sum() else "few"
        raise NotYet(
            f"With min_p = {min_p}, row {row} keeps too {too} tokens ({int(kept[row].sum())} of {logits.shape[-1]}). "
            "Keep a token when softmax(logits) >= min_p * (the row's largest probability); set the others to -inf."
        )
    counts = [int((min_p_reference(logits, 0.2)[r] > float("-inf")).sum()) for r in range(logits.shape[0])]
    return (f"Same tokens kept as the reference for min_p = 0.05, 0.2 and 0.5; at 0.2 the four rows keep {counts} "
            "of 40 tokens: few where the model is sure, many where it is not.")


# -- 8.2 ---------------------------------------------------------------------------------------------


def _nucleus_counts() -> tuple[int, ...]:
    logits = torch.tensor(NUCLEUS_PROBS).log()[None]
    return tuple(int((top_p_filter(logits, p) > float("-inf")).sum()) for p in NUCLEUS_P)


@exercise("8.2", "Predict how many tokens top-p keeps", level=1, minutes=10)
def check_nucleus_counts(prediction) -> str:
    expect(
        isinstance(prediction, (tuple, list)) and len(prediction) == len(NUCLEUS_P)
        and all(_is_number(n) and float(n).is_integer() for n in prediction),
        f"Your prediction should be {len(NUCLEUS_P)} whole numbers, one per p in {NUCLEUS_P}, e.g. (1, 2, 3); got "
        f"{prediction!r}.",
    )
    given, true = tuple(int(n) for n in prediction), _nucleus_counts()
    if given == true:
        return (f"top_p_filter keeps {true} tokens for p = {NUCLEUS_P}: every token whose higher-ranked tokens hold "
                "less than p, including the one that crosses p.")
    cumulative = torch.tensor(NUCLEUS_PROBS).cumsum(0)
    strictly_below = tuple(int((cumulative < p).sum()) for p in NUCLEUS_P)
    if given == strictly_below:
        raise NotYet(
            "You kept the tokens whose cumulative probability, their own included, stays below p. That set holds "
            "less than p; top-p keeps the smallest set that reaches p, so the token that crosses p is kept too."
        )
    if given == tuple(int(sum(q >= p for q in NUCLEUS_PROBS)) for p in NUCLEUS_P):
        raise NotYet("You counted the tokens whose own probability is at least p; top-p adds up probabilities, "
                     "from the likeliest token down, until they reach p.")
    wrong = [f"{p} (too {'many' if a > b else 'few'})"
             for p, a, b in zip(NUCLEUS_P, given, true, strict=True) if a != b]
    raise NotYet(f"Not right for p = {', '.join(wrong)}. Add up the probabilities from the top; a token is "
                 "kept while the tokens above it hold less than p (section 8.5's table).")


# -- 8.3 ---------------------------------------------------------------------------------------------


def repetition_penalty_reference(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (as Hugging Face's ``RepetitionPenaltyLogitsProcessor``): the logit of every
    token already in ``previous`` is divided by ``penalty`` if positive, multiplied if negative."""
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


def _penalty_inputs() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(83)
    logits = 2.0 * torch.randn(3, 20, generator=generator)
    previous = torch.tensor([[4, 4, 9, 1, 4, 12], [0, 3, 3, 3, 3, 3], [19, 18, 5, 7, 2, 11]])
    logits[0, 4], logits[0, 9], logits[1, 3] = 2.5, -1.5, -0.7  # repeated tokens on both sides of zero
    return logits, previous


@exercise("8.3", "A repetition penalty", level=2, minutes=20)
def check_repetition_penalty(repetition_penalty) -> str:
    expect(callable(repetition_penalty), f"Pass your function itself, not {type(repetition_penalty).__name__}.")
    own_work(repetition_penalty, repetition_penalty_reference)
    logits, previous = _penalty_inputs()
    penalty = 1.5
    given_logits, given_previous = logits.clone(), previous.clone()
    with torch.no_grad():
        out = repetition_penalty(given_logits, given_previous, penalty)
    expect(torch.equal(given_logits, logits) and torch.equal(given_previous, previous),
           "Your function changed its input in place; return a new tensor (clone the logits first, or use scatter "
           "rather than scatter_).")
    expect(
        isinstance(out, Tensor) and out.shape == logits.shape,
        f"Return logits of the input's shape {tuple(logits.shape)} (batch, vocab), got {describe(out)}.",
    )
    expected = repetition_penalty_reference(logits, previous, penalty)
    if torch.allclose(out, expected, atol=1e-6):
        return ("Matches CTRL's penalty (Hugging Face's RepetitionPenaltyLogitsProcessor) on 3 rows: each earlier "
                "token penalised once, positive logits divided, negative ones multiplied.")
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    if not torch.equal(out[~seen], logits[~seen]):
        raise NotYet("Tokens that do not appear in `previous` changed too: penalise only the tokens already generated.")
    if torch.allclose(out, logits.scatter(-1, previous, logits.gather(-1, previous) / penalty), atol=1e-6):
        raise NotYet(
            "You divided every repeated token's logit by the penalty. For a negative logit that moves it toward 0, "
            "which makes the token *more* likely (token 9 of row 0 goes from -1.5 to -1.0): multiply negative logits "
            "by the penalty instead."
        )
    counts = torch.zeros_like(logits).scatter_add(-1, previous, torch.ones_like(previous, dtype=logits.dtype))
    once_per_copy = torch.where(logits > 0, logits / penalty**counts, logits * penalty**counts)
    if torch.allclose(out, once_per_copy, atol=1e-5):
        raise NotYet(
            "You penalised a token once per occurrence (token 3 of row 1 appears five times, and its logit was "
            "multiplied by 1.5 five times). CTRL's penalty, and Hugging Face's, hits each token that appears once, "
            "however often."
        )
    if torch.allclose(out, logits - seen.float() * math.log(penalty), atol=1e-5):
        raise NotYet("You subtracted log(penalty) from every repeated logit, a different rule: divide positive logits "
                     "by the penalty and multiply negative ones by it.")
    row, col = (out - expected).abs().gt(1e-6).nonzero()[0].tolist()
    was, got = logits[row, col].item(), out[row, col].item()
    raise NotYet(f"Row {row}, token {col} is not right: its logit {was:.4f} became {got:.4f}. Is the token in that "
                 "row's `previous`? If so, its logit should move down by the penalty's factor, once.")


# -- 8.4 ---------------------------------------------------------------------------------------------


class _Spy(nn.Module):
    """Wraps a model and records each call: how many tokens, with a cache or not, and its length."""

    def __init__(self, model: GPTModel):
        super().__init__()
        self.model, self.context_length = model, model.context_length
        self.calls: list[tuple[int, int | None]] = []  # (tokens fed, cached tokens before the call or None)

    def new_cache(self) -> KVCache:
        return self.model.new_cache()

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        self.calls.append((idx.shape[1], cache.seq_len if cache is not None else None))
        return self.model(idx, cache)


PROMPT_LENGTHS, NEW_TOKENS = (5, 3, 7), 8


@exercise("8.4", "Find the bug: decoding several prompts with a cache", level=2, minutes=15)
def check_complete_all(complete_all) -> str:
    expect(callable(complete_all), f"Pass your function itself, not {type(complete_all).__name__}.")
    own_work(complete_all, generate, generate_text)
    with seeded(84):
        model = GPTModel(DECODE_CONFIG).eval()
        with torch.no_grad():  # larger weights than at initialisation: every prompt gets its own continuation
            for p in model.parameters():
                p.mul_(4.0)
        prompts = [torch.randint(0, DECODE_CONFIG.vocab_size, (1, n)) for n in PROMPT_LENGTHS]
        spy = _Spy(model)
        with torch.no_grad():
            outputs = complete_all(spy, prompts, NEW_TOKENS)
        expected = [generate(model, p, NEW_TOKENS, use_cache=False) for p in prompts]
    expect(
        isinstance(outputs, (list, tuple)) and len(outputs) == len(prompts),
        f"Return one tensor per prompt ({len(prompts)} here), as complete_all_buggy does; got {describe(outputs)}.",
    )
    for k, (out, right, prompt) in enumerate(zip(outputs, expected, prompts, strict=True)):
        expect(
            isinstance(out, Tensor) and out.shape == right.shape,
            f"Prompt {k} has {prompt.shape[1]} tokens, so its result should have shape {tuple(right.shape)} "
            f"(prompt + {NEW_TOKENS} new tokens), got {describe(out)}.",
        )
        if not torch.equal(out, right):
            first = int((out != right)[0].nonzero()[0]) - prompt.shape[1]
            stale = "" if k == 0 else (
                " The first prompt came out right and a later one did not: what does a later prompt's prefill find "
                "already in the cache?"
            )
            raise NotYet(f"Prompt {k}'s continuation differs from greedy decoding without a cache from new token "
                         f"{first} on.{stale}")
    prefills = [(n, cached) for n, cached in spy.calls if n > 1]
    expect(all(cached is not None for _, cached in spy.calls),
           "The tokens are right, but some calls ran without a cache: keep the cache, with one prefill per prompt and "
           "then one token per step.")
    expect(
        [n for n, _ in prefills] == list(PROMPT_LENGTHS) and all(cached == 0 for _, cached in prefills),
        "The tokens are right, but the model was not called as a cache should be: one call with the whole prompt on "
        f"an empty cache, then one token per call. Calls (tokens, cached before): {spy.calls}.",
    )
    steps = len(spy.calls) - len(prefills)
    return (f"{len(prompts)} prompts completed, each from its own empty cache: {len(prefills)} prefills and {steps} "
            "one-token steps, the same tokens as decoding without a cache.")


# -- 8.5 ---------------------------------------------------------------------------------------------


def _as_letters(prediction: object) -> set[str] | None:
    """A set, list or tuple of letters (or a string of them) as a set of lower-case letters."""
    if isinstance(prediction, str):
        prediction = [c for c in prediction if not c.isspace() and c != ","]
    if isinstance(prediction, (set, frozenset, list, tuple)) and all(isinstance(c, str) for c in prediction):
        return {c.strip().lower() for c in prediction}
    return None


@exercise("8.5", "Predict which calls give greedy's tokens", level=1, minutes=10)
def check_same_as_greedy(prediction) -> str:
    chosen = _as_letters(prediction)
    expect(
        chosen is not None and chosen <= set(GREEDY_CALLS),
        f"Your prediction should be a set of letters from {sorted(GREEDY_CALLS)}, e.g. {{\"a\", \"d\"}} (or set() for "
        f"none of them); got {prediction!r}.",
    )
    same = set(_SAME_AS_GREEDY)
    if chosen == same:
        return (f"{', '.join(sorted(same))} always give greedy's tokens: the cache changes how much each step "
                "computes, not what; temperature rescales the logits without reordering them; top_k=1 leaves only the "
                "likeliest token to draw; and a filter never removes it. The others sample, so they can differ.")
    # The hints say what kind of mistake there is, never which letter: with yes/no choices, naming a
    # letter would give its answer away.
    hints = []
    if chosen - same:
        hints.append("Your set includes a call that can choose a token other than the likeliest one: a sampler is "
                     "sure to pick greedy's token only when nothing else is left to draw from.")
    if same - chosen:
        hints.append("Your set leaves out a call that always gives greedy's tokens. For each knob, ask whether it "
                     "can change which token ranks first, or what the sampler is left to draw from: the KV cache, "
                     "the temperature, top_k, top_p.")
    raise NotYet(" ".join(hints))

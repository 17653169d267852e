"""A chat format on chapter 1's BPE: turn tokens, a bigger vocabulary, one template, and ``chat()``.

A conversation is a list of turns, each a speaker and what they say. The template writes every turn
as the plays do (``NAME:`` then the lines), between two new special tokens::

    <|turn|>GREMIO:
    Good morrow, neighbour Baptista.<|endofturn|><|turn|>BAPTISTA:
    Good morrow, neighbour Gremio.<|endofturn|>

The last turn is the response: the model learns to write its lines and then ``<|endofturn|>``,
which is how it says it is done (generation stops there). Everything before, the last speaker's name
included, is the prompt: it says who speaks, and the model answers in that character.

The tokens get new ids after the tokenizer's last one, so every old id keeps its meaning, and
:func:`grow_vocabulary` gives a pretrained model rows for them while keeping its old rows exactly.
"""

import copy
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from shared.generate import generate
from shared.llama import LlamaModel
from shared.model import GPTModel
from shared.tokenizer import BPETokenizer

__all__ = [
    "CHAT_TOKENS",
    "END_OF_TURN",
    "TURN",
    "Reply",
    "Turn",
    "add_special_tokens",
    "chat",
    "chat_token_ids",
    "encode_chats",
    "fixed_length_prompt",
    "generate_replies",
    "grow_vocabulary",
    "render_chat",
    "with_chat_tokens",
]

TURN = "<|turn|>"
END_OF_TURN = "<|endofturn|>"
CHAT_TOKENS = (TURN, END_OF_TURN)


class Turn(NamedTuple):
    """One turn of a conversation: who speaks, and what they say."""

    speaker: str
    text: str


class Reply(NamedTuple):
    """What :func:`chat` returns: the reply's text, and whether the model ended its turn itself
    (produced ``<|endofturn|>``) rather than running out of ``max_new_tokens``."""

    text: str
    ended: bool


# -- tokens ------------------------------------------------------------------------------------


def add_special_tokens(tokenizer: BPETokenizer, names: Sequence[str]) -> BPETokenizer:
    """A new tokenizer with ``names`` as extra special tokens, numbered from ``tokenizer.vocab_size`` on.

    Merges, byte ids and existing special tokens are unchanged, so ordinary text encodes to the same
    ids as before; ``tokenizer`` itself is left as it is.
    """
    ids = sorted([*tokenizer.vocab, *tokenizer.special_tokens.values()])
    if ids != list(range(tokenizer.vocab_size)):
        raise ValueError(
            "add_special_tokens: the tokenizer's ids are not 0..vocab_size - 1 without gaps, so 'after the last id' "
            "is not one place; use a tokenizer trained with BPETokenizer.train or loaded from GPT-2"
        )
    taken = [name for name in names if name in tokenizer.special_tokens]
    if taken or len(set(names)) != len(names):
        raise ValueError(
            f"add_special_tokens: {taken or list(names)} repeat tokens the tokenizer (or the list) already has; "
            f"its special tokens are {list(tokenizer.special_tokens)}. Add each new token once"
        )
    if not names or any(not name for name in names):
        raise ValueError(f"add_special_tokens: give one or more non-empty token strings, got {list(names)}")
    specials = {**tokenizer.special_tokens, **{name: tokenizer.vocab_size + i for i, name in enumerate(names)}}
    merges = [(a, b, new_id) for (a, b), new_id in tokenizer.merges.items()]  # insertion order = learned order
    return BPETokenizer(tokenizer.byte_ids, merges, specials, tokenizer.pattern)


def with_chat_tokens(tokenizer: BPETokenizer) -> BPETokenizer:
    """``tokenizer`` plus ``<|turn|>`` and ``<|endofturn|>`` (:data:`CHAT_TOKENS`) after its last id."""
    return add_special_tokens(tokenizer, CHAT_TOKENS)


def chat_token_ids(tokenizer: BPETokenizer) -> tuple[int, int]:
    """``(turn_id, end_of_turn_id)`` of a tokenizer made by :func:`with_chat_tokens`."""
    missing = [name for name in CHAT_TOKENS if name not in tokenizer.special_tokens]
    if missing:
        raise ValueError(
            f"the tokenizer has no {missing} token (its special tokens: {list(tokenizer.special_tokens)}); "
            "make a chat tokenizer first with shared.chat.with_chat_tokens(tokenizer)"
        )
    return tokenizer.special_tokens[TURN], tokenizer.special_tokens[END_OF_TURN]


# -- a bigger vocabulary -----------------------------------------------------------------------


def _grown_rows(old: Float[Tensor, "vocab emb_dim"], new_vocab_size: int) -> Float[Tensor, "new_vocab emb_dim"]:
    # New rows are the mean of the old ones. As an embedding, the new token starts as an "average"
    # token, at the scale of the trained rows (not a random vector of another norm). As an output
    # row, its logit is the mean of the old logits, and exp(mean) <= mean(exp) (Jensen), so each new
    # token starts with at most an average token's probability: the old distribution hardly moves
    # (Hewitt 2021, "Initializing new word embeddings for pretrained language models").
    extra = old.mean(dim=0, keepdim=True).expand(new_vocab_size - old.shape[0], -1)
    return nn.Parameter(torch.cat([old.detach(), extra]), requires_grad=old.requires_grad)


def grow_vocabulary(model: GPTModel | LlamaModel, new_vocab_size: int) -> GPTModel | LlamaModel:
    """A copy of ``model`` with ``new_vocab_size`` token ids: the old embedding and output rows are
    kept exactly, the new rows are the mean of the old ones, and ``config.vocab_size`` says the new size.

    A tied head stays tied (one matrix). The logits of the old ids do not change; the new ids start
    with at most an average token's probability (see the comment in ``_grown_rows``). Grow the
    vocabulary before adding LoRA adapters. ``model`` itself is left as it is.
    """
    old_vocab_size = model.config.vocab_size
    if new_vocab_size < old_vocab_size:
        raise ValueError(
            f"grow_vocabulary: the model has {old_vocab_size} token ids and cannot shrink to {new_vocab_size}; "
            "pass the new tokenizer's vocab_size, which must be at least the old one"
        )
    if type(model.out_head) is not nn.Linear:
        raise TypeError(
            f"grow_vocabulary: the output head is a {type(model.out_head).__name__}, not a plain nn.Linear; "
            "grow the vocabulary before wrapping layers (e.g. with LoRA), or merge the adapters first"
        )
    grown = copy.deepcopy(model)
    embedding = grown.embed.tok if isinstance(grown, GPTModel) else grown.tok_emb
    tied = grown.out_head.weight is embedding.weight
    with torch.no_grad():
        embedding.weight = _grown_rows(embedding.weight, new_vocab_size)
        embedding.num_embeddings = new_vocab_size
        grown.out_head.weight = embedding.weight if tied else _grown_rows(grown.out_head.weight, new_vocab_size)
        grown.out_head.out_features = new_vocab_size
    grown.config = dataclasses.replace(model.config, vocab_size=new_vocab_size)
    return grown


# -- the template ------------------------------------------------------------------------------


def render_chat(turns: Sequence[Turn], tokenizer: BPETokenizer) -> tuple[list[int], list[int]]:
    """The template: ``(prompt_ids, response_ids)`` of a conversation whose last turn is the response.

    Each turn is ``<|turn|>`` + ``"{speaker}:\\n"`` + its text + ``<|endofturn|>``. The prompt is every
    turn but the last, then the last turn's ``<|turn|>`` and speaker line (whom the model speaks as);
    the response is the last turn's text and ``<|endofturn|>``, the only tokens the SFT loss counts.
    ``shared.sft.collate_instructions`` takes a list of these pairs. A last turn with empty text gives
    the prompt for a reply to be generated (what :func:`chat` does).
    """
    if not turns:
        raise ValueError("render_chat: got no turns; give at least the turn to answer, e.g. [Turn('BAPTISTA', '')]")
    turn_id, end_id = chat_token_ids(tokenizer)
    for i, turn in enumerate(turns):
        if not turn.speaker or "\n" in turn.speaker or TURN in turn.text or END_OF_TURN in turn.text:
            raise ValueError(
                f"render_chat: turn {i} ({turn.speaker!r}) has an empty or multi-line speaker, or text that "
                f"contains {TURN} or {END_OF_TURN}; a speaker is one line and the template writes the tokens itself"
            )
    # Header and text are encoded apart: the prompt/response border is always a token border.
    prompt: list[int] = []
    for turn in turns[:-1]:
        prompt += [turn_id, *tokenizer.encode_ordinary(f"{turn.speaker}:\n"), *tokenizer.encode_ordinary(turn.text)]
        prompt.append(end_id)
    prompt += [turn_id, *tokenizer.encode_ordinary(f"{turns[-1].speaker}:\n")]
    return prompt, [*tokenizer.encode_ordinary(turns[-1].text), end_id]


def _fit(turns: Sequence[Turn], tokenizer: BPETokenizer, max_tokens: int, trim_prompt: bool):
    turns = list(turns)
    while True:
        prompt, response = render_chat(turns, tokenizer)
        if len(prompt) + len(response) <= max_tokens:
            return prompt, response
        if not trim_prompt:
            return None
        first = turns[0]
        if len(turns) > 2:  # drop the oldest turn first, while two or more prompt turns are left
            turns = turns[1:]
        elif "\n" in first.text:  # then the oldest lines of the one prompt turn, keeping its last
            turns[0] = Turn(first.speaker, first.text.split("\n", 1)[1])
        else:
            return None


def encode_chats(
    conversations: Sequence[Sequence[Turn]], tokenizer: BPETokenizer, max_tokens: int, *, trim_prompt: bool = False
) -> list[tuple[list[int], list[int]]]:
    """:func:`render_chat` of each conversation that fits in ``max_tokens`` (a model's context length).

    The response is never cut (a cut response would never show the model its end-of-turn). With
    ``trim_prompt``, a prompt that is too long loses its oldest part until the whole fits: whole
    earlier turns, then the first lines of the turn being answered, down to its last line (a reply
    answers the end of a speech most). Conversations that still do not fit are dropped.
    """
    if max_tokens < 2:
        raise ValueError(
            f"encode_chats: max_tokens must be at least 2 (one prompt and one response token), got {max_tokens}"
        )
    fitted = (_fit(turns, tokenizer, max_tokens, trim_prompt) for turns in conversations)
    return [example for example in fitted if example is not None]


def fixed_length_prompt(turns: Sequence[Turn], tokenizer: BPETokenizer, n_tokens: int) -> list[int] | None:
    """The prompt of :func:`render_chat` cut to exactly ``n_tokens``, or ``None`` if it is shorter.

    The cut drops the oldest tokens of the *text* of the first turn (never a header, so the template
    stays whole: ``<|turn|>NAME:\n``, the speech's last tokens, ``<|endofturn|><|turn|>ASKED:\n``).
    Prompts of one length can share a batch in generation with absolute positions: no padding, so
    every token keeps the position it has alone (see :func:`generate_replies`).
    """
    if len(turns) < 2:
        raise ValueError("fixed_length_prompt: give a turn to answer and at least one turn before it")
    prompt, _ = render_chat(turns, tokenizer)
    if len(prompt) < n_tokens:
        return None
    turn_id, _ = chat_token_ids(tokenizer)
    header = 1 + len(tokenizer.encode_ordinary(f"{turns[0].speaker}:\n"))
    text = len(tokenizer.encode_ordinary(turns[0].text))
    cut = len(prompt) - n_tokens
    if cut >= text:  # the first turn's text alone cannot absorb the cut
        return None
    return [turn_id, *prompt[1:header], *prompt[header + cut :]]


def generate_replies(
    model: GPTModel | LlamaModel,
    tokenizer: BPETokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[Reply]:
    """:func:`chat`'s replies for many rendered prompts at once: prompts of the same length share a batch
    (with absolute positions, padding on the left would shift them), generation stops at
    ``<|endofturn|>``. Replies come back in the order of ``prompts``; sampling draws from ``generator``."""
    _, end_id = chat_token_ids(tokenizer)
    if end_id >= model.config.vocab_size:
        raise ValueError(
            f"the model has {model.config.vocab_size} token ids but <|endofturn|> is id {end_id}: give it rows "
            f"for the chat tokens with shared.chat.grow_vocabulary(model, tokenizer.vocab_size)"
        )
    too_long = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > model.config.context_length]
    if too_long:
        raise ValueError(
            f"generate_replies: prompt {too_long[0]} ({len(prompts[too_long[0]])} tokens) plus {max_new_tokens} new "
            f"tokens is longer than the model's context of {model.config.context_length}; use shorter prompts "
            "(fixed_length_prompt) or fewer new tokens"
        )
    device = next(model.parameters()).device
    replies: list[Reply | None] = [None] * len(prompts)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
        out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=end_id,
                       generator=generator)
        for i, new in zip(rows, out[:, length:].tolist(), strict=True):
            ended = end_id in new
            replies[i] = Reply(tokenizer.decode(new[: new.index(end_id)] if ended else new), ended)
    return replies


# -- chatting ----------------------------------------------------------------------------------


def chat(
    model: GPTModel | LlamaModel,
    tokenizer: BPETokenizer,
    message: str,
    as_character: str,
    max_new_tokens: int,
    *,
    speaker: str = "Stranger",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Reply:
    """Answer ``message`` (said by ``speaker``) as ``as_character``, with :func:`shared.generate.generate`.

    The prompt is :func:`render_chat` of the message and an open turn for ``as_character``; generation
    stops at ``<|endofturn|>`` or after ``max_new_tokens``. Greedy by default; ``temperature``,
    ``top_k``, ``top_p`` and ``generator`` sample as in ``generate``.
    """
    _, end_id = chat_token_ids(tokenizer)
    if end_id >= model.config.vocab_size:
        raise ValueError(
            f"the model has {model.config.vocab_size} token ids but <|endofturn|> is id {end_id}: give it rows "
            f"for the chat tokens with shared.chat.grow_vocabulary(model, tokenizer.vocab_size)"
        )
    prompt, _ = render_chat([Turn(speaker, message), Turn(as_character, "")], tokenizer)
    if len(prompt) > model.context_length:
        raise ValueError(
            f"the prompt is {len(prompt)} tokens with the template, longer than the model's context of "
            f"{model.context_length}; shorten the message"
        )
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out = generate(
        model,
        ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=end_id,
        generator=generator,
    )
    new = out[0, len(prompt) :].tolist()
    ended = end_id in new
    return Reply(tokenizer.decode(new[: new.index(end_id)] if ended else new), ended)

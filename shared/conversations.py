"""Conversations cut from the plays: one speech, and the reply that follows it, by another character.

Tiny Shakespeare is a run of speeches (``shared.tasks.parse_speeches``: a line ``NAME:`` and the
lines spoken, a blank line between speeches). A conversation is one speech (the prompt) and the
next speech (the response), when a different character speaks it: "answer this as BAPTISTA" has
the play's own reply as its answer.

Pretraining (chapter 7) reads the first 90% of the text, so the conversations come from the last
10% only, and only from speeches that begin there (the speech cut in two by the split is dropped).
Those speeches are split again, deterministically, into supervised fine-tuning data, held-out
conversations that no training stage sees, and speeches kept for the judge of chapter 12 alone
(``shared.judge``), which neither tuning nor evaluation uses: see :func:`play_conversations`.
"""

import random
from itertools import pairwise
from typing import NamedTuple

from shared.chat import Turn
from shared.corpus import tiny_shakespeare
from shared.datasets import train_val_split
from shared.tasks import Speech, held_out_speeches

__all__ = ["Conversation", "ConversationSplit", "play_conversations"]


class Conversation(NamedTuple):
    """A speech (the prompt) and the next speech in the play (the response, by another character)."""

    prompt: Speech
    reply: Speech

    @property
    def turns(self) -> list[Turn]:
        """The two turns, for :func:`shared.chat.render_chat`: the last one is the response."""
        return [Turn(self.prompt.speaker, self.prompt.text), Turn(self.reply.speaker, self.reply.text)]

    @property
    def source_text(self) -> str:
        """The exchange as the play writes it (a substring of the corpus)."""
        return f"{self.prompt.speaker}:\n{self.prompt.text}\n\n{self.reply.speaker}:\n{self.reply.text}"


class ConversationSplit(NamedTuple):
    """Conversations to fine-tune on (``sft``), conversations kept for evaluation (``heldout``), and
    speeches kept for the judge (``judge``): none of them is a speech of an ``sft`` or ``heldout`` conversation."""

    sft: list[Conversation]
    heldout: list[Conversation]
    judge: list[Speech]


def _conversations(speeches: list[Speech]) -> list[Conversation]:
    # The reply must follow the speech directly (one blank line between): after a speaker line with
    # no lines ("TITUS:" then a blank), the next speech answers words the text lost. And a speech
    # followed by the same speaker is a scene change or a continuation, not an answer.
    return [Conversation(a, b) for a, b in pairwise(speeches) if b.start == a.end + 2 and a.speaker != b.speaker]


def play_conversations(
    text: str | None = None,
    *,
    val_fraction: float = 0.1,
    heldout_fraction: float = 0.2,
    judge_fraction: float = 0.2,
    block_size: int = 8,
    seed: int = 0,
) -> ConversationSplit:
    """Conversations from the part of ``text`` (Tiny Shakespeare by default) that pretraining never reads.

    - Only speeches whose header starts in the last ``val_fraction`` of the text (the part
      :func:`shared.datasets.train_val_split` holds out) are used.
    - Those speeches are cut into blocks of ``block_size`` consecutive speeches, and a seeded shuffle
      of the blocks sends ``heldout_fraction`` of them to the held-out set and the next
      ``judge_fraction`` of them to the judge (their speeches, not conversations: ``split.judge``); the
      rest is fine-tuning data. A conversation whose two speeches fall in blocks of different sets is
      dropped, so no speech is in two sets. Blocks,
      not single speeches, keep each set spread over both plays of the last 10% (The Taming of the
      Shrew and The Tempest) and their characters, while wasting few conversations at the borders.
    - A held-out conversation whose exchange also occurs word for word in the pretraining text or
      in a fine-tuning conversation is dropped too (a repeated line would leak it).
    The same arguments always give the same split.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be between 0 and 1, got {heldout_fraction}")
    if not 0.0 <= judge_fraction < 1.0 or heldout_fraction + judge_fraction >= 1.0:
        raise ValueError(
            f"judge_fraction must be at least 0 and leave blocks to fine-tune on (heldout_fraction + judge_fraction "
            f"< 1), got judge_fraction={judge_fraction} with heldout_fraction={heldout_fraction}"
        )
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 speeches (one conversation), got {block_size}")
    text = tiny_shakespeare() if text is None else text
    train_text, _ = train_val_split(text, val_fraction)
    speeches = held_out_speeches(text, val_fraction)  # whole speeches from the last val_fraction
    n_blocks = -(-len(speeches) // block_size)
    if n_blocks < 2:
        raise ValueError(
            f"the held-out part of the text has {len(speeches)} speeches, too few for {block_size}-speech blocks "
            "in two sets; use a longer text or a smaller block_size"
        )
    order = list(range(n_blocks))
    random.Random(seed).shuffle(order)
    n_heldout = min(n_blocks - 1, max(1, round(heldout_fraction * n_blocks)))
    n_judge = min(n_blocks - 1 - n_heldout, round(judge_fraction * n_blocks))
    heldout_blocks, judge_blocks = set(order[:n_heldout]), set(order[n_heldout : n_heldout + n_judge])
    role = ["heldout" if b in heldout_blocks else "judge" if b in judge_blocks else "sft" for b in range(n_blocks)]
    sft, heldout = [], []
    position = {s.start: i for i, s in enumerate(speeches)}
    for conversation in _conversations(speeches):
        roles = {role[position[s.start] // block_size] for s in conversation}
        if len(roles) > 1 or roles == {"judge"}:
            continue  # straddles two sets, or belongs to the judge
        (heldout if roles == {"heldout"} else sft).append(conversation)
    judge = [s for i, s in enumerate(speeches) if role[i // block_size] == "judge"]
    sft_text = "\0".join(c.source_text for c in sft)  # a separator no exchange contains
    heldout = [c for c in heldout if c.source_text not in train_text and c.source_text not in sft_text]
    return ConversationSplit(sft, heldout, judge)

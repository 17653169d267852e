"""An automatic, deterministic judge of replies: is this what the asked character would say?

Chapter 12 tunes a model to answer as a character of the plays. To score its replies without a
person (or a big model behind an API), the judge is a classifier like chapter 11's, trained once with a
fixed seed on the speeches :func:`shared.conversations.play_conversations` keeps for it (``split.judge``:
whole blocks of the plays' held-out 10%, never pretrained on, and no speech of a fine-tuning or
held-out conversation, so no SFT target, DPO reply or evaluated reply):

- ``kind="who_speaks"``: which of the ``n_characters`` characters with the most speeches speaks a
  text. A reply is *in character* when the judge names the character that was asked to answer.
- ``kind="which_play"``: which play a text comes from (the held-out 10% holds the end of *The Taming
  of the Shrew* and *The Tempest*, whose casts do not overlap). A reply is *in the right play* when
  the judge names the asked character's play.

The judge reads only a reply's text, re-encoded with the base tokenizer (the chat tokens play no
part), so it scores every model the same way. It is a measuring instrument with its own error: its
accuracy on the real held-out replies (:meth:`Judge.accuracy`, the real-reply rate) is what a model
that answered exactly as the play would score (not a bound: another reply can score higher); its rate on
real replies by other characters given to the prompts (:meth:`Judge.mismatched`) is what a fluent
model that ignores the asked character would score.
"""

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from shared.classify import SequenceClassifier, encode_texts, pad_token_ids, train_classifier
from shared.conversations import Conversation, ConversationSplit
from shared.corpus import tiny_shakespeare
from shared.model import GPTModel
from shared.runtime import eval_mode
from shared.tasks import Speech, held_out_speeches
from shared.tokenizer import BPETokenizer

__all__ = [
    "JUDGE_KINDS", "PLAYS", "Judge", "JudgeKind", "judge_speeches", "mismatched_replies", "play_of", "train_judge",
]

JudgeKind = Literal["who_speaks", "which_play"]
JUDGE_KINDS: tuple[str, ...] = ("who_speaks", "which_play")

# The two plays of Tiny Shakespeare's last 10%, and the first line of the second one (its first speech).
PLAYS: tuple[str, ...] = ("The Taming of the Shrew", "The Tempest")
_TEMPEST_OPENS = "Master:\nBoatswain!\n"


def play_of(speech: Speech, corpus: str | None = None) -> str:
    """Which of :data:`PLAYS` a held-out speech belongs to (by its offset in the corpus)."""
    corpus = tiny_shakespeare() if corpus is None else corpus
    tempest = corpus.find(_TEMPEST_OPENS)
    if tempest < 0:
        raise ValueError("play_of: this corpus does not contain The Tempest's opening lines; use Tiny Shakespeare")
    return PLAYS[int(speech.start >= tempest)]


def judge_speeches(split: ConversationSplit) -> list[Speech]:
    """The speeches the judge trains on: ``split.judge``, the blocks of the held-out 10% that
    :func:`shared.conversations.play_conversations` keeps out of fine-tuning and evaluation.

    Raises if one of them is a speech of an ``sft`` or ``heldout`` conversation (a split made by hand)."""
    if not isinstance(split, ConversationSplit):
        raise TypeError(f"judge_speeches: give play_conversations()'s ConversationSplit, got {type(split).__name__}")
    used = {s.start for c in (*split.sft, *split.heldout) for s in (c.prompt, c.reply)}
    leaked = [s for s in split.judge if s.start in used]
    if leaked:
        raise ValueError(
            f"judge_speeches: {len(leaked)} judge speeches are also in tuning or held-out conversations (first by "
            f"{leaked[0].speaker}); the judge would reward memorised replies. Use play_conversations()'s split"
        )
    if not split.judge:
        raise ValueError("judge_speeches: this split keeps no speeches for the judge; use judge_fraction > 0")
    return list(split.judge)


@dataclass
class Judge:
    """A trained classifier and what its classes mean.

    ``class_names`` are characters (``who_speaks``) or plays (``which_play``); ``target`` maps each
    character the judge can score to the class a reply in that character should get.
    """

    classifier: SequenceClassifier
    tokenizer: BPETokenizer
    kind: str
    class_names: tuple[str, ...]
    target: dict[str, int]
    pad_id: int
    max_tokens: int

    def knows(self, character: str) -> bool:
        """Whether the judge can score replies asked of ``character``."""
        return character in self.target

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """The judge's class probabilities for each text, ``(len(texts), n_classes)`` on the CPU.

        Each text is cropped to its first ``max_tokens`` tokens (as in training); an empty text (a
        model that ends its turn at once) gets a single space, so that it is scored rather than refused."""
        texts = [t if t.strip() else " " for t in texts]
        ids = encode_texts(self.tokenizer.encode_ordinary, texts, self.max_tokens, crop=True)
        device = self.classifier.head.weight.device
        out = []
        with eval_mode(self.classifier):
            for first in range(0, len(ids), batch_size):
                token_ids, lengths = pad_token_ids(ids[first : first + batch_size], self.pad_id)
                logits = self.classifier(token_ids.to(device), lengths.to(device))
                out.append(logits.float().softmax(dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def _targets(self, characters: Sequence[str]) -> list[int]:
        unknown = sorted({c for c in characters if c not in self.target})
        if unknown:
            raise ValueError(
                f"the judge cannot score replies asked of {unknown}: it knows {sorted(self.target)}. "
                "Keep only conversations whose answering character it knows (Judge.knows)"
            )
        return [self.target[c] for c in characters]

    def in_character(self, replies: Sequence[str], characters: Sequence[str]) -> list[bool]:
        """For each reply, whether the judge's top class is the one of the character asked to give it."""
        if len(replies) != len(characters):
            raise ValueError(f"in_character: {len(replies)} replies but {len(characters)} characters; give one each")
        targets = self._targets(characters)
        predicted = self.probabilities(replies).argmax(dim=-1).tolist()
        return [p == t for p, t in zip(predicted, targets, strict=True)]

    def scores(self, replies: Sequence[str], characters: Sequence[str]) -> list[float]:
        """For each reply, the probability the judge gives to the asked character's class (a softer score)."""
        if len(replies) != len(characters):
            raise ValueError(f"scores: {len(replies)} replies but {len(characters)} characters; give one each")
        targets = torch.tensor(self._targets(characters), dtype=torch.long)
        probs = self.probabilities(replies)
        return probs[torch.arange(len(targets)), targets].tolist()

    def accuracy(self, conversations: Sequence[Conversation]) -> float:
        """The share of the real replies of ``conversations`` (those it can score) that the judge puts in
        the right class: the real-reply rate, the in-character rate of a model that answered exactly as the
        play (not a bound: other replies can score higher)."""
        known = [c for c in conversations if self.knows(c.reply.speaker)]
        if not known:
            raise ValueError("accuracy: none of these conversations is answered by a character the judge knows")
        hits = self.in_character([c.reply.text for c in known], [c.reply.speaker for c in known])
        return sum(hits) / len(hits)

    def mismatched(self, conversations: Sequence[Conversation]) -> float:
        """The in-character rate of real replies given to the wrong prompts: each conversation (of those it
        can score) gets the reply of the next conversation, in order and wrapping around, whose reply is by
        *another* character (:func:`mismatched_replies`): fluent replies that ignore the asked character.
        :meth:`accuracy` minus this is how well the judge tells a fitting reply from another one."""
        known = [c for c in conversations if self.knows(c.reply.speaker)]
        replies = mismatched_replies(known)
        hits = self.in_character(replies, [c.reply.speaker for c in known])
        return sum(hits) / len(hits)


def mismatched_replies(conversations: Sequence[Conversation]) -> list[str]:
    """For each conversation, the reply text of the next conversation (in order, wrapping around) whose
    reply is by a different character than its own."""
    speakers = {c.reply.speaker for c in conversations}
    if len(speakers) < 2:
        raise ValueError(
            f"mismatched: the replies are all by {sorted(speakers)}; a mismatched reply must come from another "
            "character, so give conversations answered by two or more characters the judge knows"
        )
    n = len(conversations)
    out = []
    for i, c in enumerate(conversations):
        j = next(j for j in range(i + 1, i + n) if conversations[j % n].reply.speaker != c.reply.speaker)
        out.append(conversations[j % n].reply.text)
    return out


def train_judge(
    base_model: GPTModel,
    tokenizer: BPETokenizer,
    split: ConversationSplit,
    *,
    kind: str = "who_speaks",
    n_characters: int = 4,
    steps: int = 150,
    batch_size: int = 32,
    lr: float = 1e-3,
    pooling: str = "last",
    max_tokens: int | None = None,
    seed: int = 0,
    corpus: str | None = None,
) -> Judge:
    """Fine-tune a copy of ``base_model`` (every weight, with a new head) into a :class:`Judge`.

    It trains on :func:`judge_speeches` (``split.judge``: no speech of a tuning or held-out conversation), with
    ``torch.manual_seed(seed)`` before the head is made and ``seed`` for the batches: the same
    arguments give the same judge. ``who_speaks`` uses the ``n_characters`` characters with the most
    of those speeches (ties by name); ``which_play`` uses every speech, labelled with its play.
    Each speech is cropped to its first ``max_tokens`` tokens (default: the model's context); give
    the length of the replies it will score, so that it learns from texts like them.
    """
    if kind not in JUDGE_KINDS:
        raise ValueError(f"train_judge: unknown kind {kind!r}; choose one of {list(JUDGE_KINDS)}")
    corpus = tiny_shakespeare() if corpus is None else corpus
    speeches = judge_speeches(split)
    if kind == "who_speaks":
        counts = Counter(s.speaker for s in speeches)
        if n_characters < 2 or n_characters > len(counts):
            raise ValueError(f"train_judge: n_characters must be between 2 and {len(counts)}, got {n_characters}")
        class_names = tuple(name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_characters])
        target = {name: i for i, name in enumerate(class_names)}
        labelled = [(s.text, target[s.speaker]) for s in speeches if s.speaker in target]
    else:
        class_names = PLAYS
        target = {s.speaker: PLAYS.index(play_of(s, corpus)) for s in held_out_speeches(corpus)}
        labelled = [(s.text, PLAYS.index(play_of(s, corpus))) for s in speeches]
    max_tokens = base_model.context_length if max_tokens is None else min(max_tokens, base_model.context_length)
    ids = encode_texts(tokenizer.encode_ordinary, [text for text, _ in labelled], max_tokens, crop=True)
    examples = [(token_ids, label) for token_ids, (_, label) in zip(ids, labelled, strict=True)]
    torch.manual_seed(seed)
    device = next(base_model.parameters()).device
    classifier = SequenceClassifier(copy.deepcopy(base_model), len(class_names), pooling=pooling).to(device)
    pad_id = 0
    train_classifier(classifier, examples, steps, pad_id, batch_size=batch_size, lr=lr, seed=seed)
    return Judge(classifier.eval(), tokenizer, kind, class_names, target, pad_id, max_tokens)

"""Classification from a causal language model: its body, then a new linear head.

A GPT or Llama maps token ids to one hidden vector per position (``hidden_states``: embeddings,
blocks, final norm) and its ``out_head`` maps each to next-token logits. A classifier keeps the body,
ignores ``out_head`` and puts a small head of its own on one vector per text, pooled from the
positions of its real tokens. Texts of different lengths share a batch by right padding: under the
causal mask a real token attends only to itself and earlier tokens, never to the padding after it,
so padding changes nothing the classifier reads (tested).

Three ways to train it make one comparison: everything (full fine-tuning), the head alone on the
frozen body (:meth:`SequenceClassifier.freeze_body`), or LoRA adapters in the body plus the head
(``shared.lora.apply_lora(classifier.body, ...)``).
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from shared.datasets import seeded_batches
from shared.llama import LlamaModel
from shared.model import GPTModel
from shared.runtime import eval_mode

__all__ = [
    "Pooling",
    "SequenceClassifier",
    "accuracy",
    "collate_classification",
    "encode_texts",
    "pad_token_ids",
    "train_classifier",
]

Pooling = Literal["last", "mean"]


class SequenceClassifier(nn.Module):
    """A causal model's body (``body.hidden_states``) and a linear head on one vector per text.

    ``pooling="last"`` reads the hidden state of the last real token. Under the causal mask it is the
    only position that has attended to the whole text, which is why it is the natural summary: the
    model was pretrained to put there everything it needs to predict what comes next. ``"mean"``
    averages the hidden states of all real tokens: every token contributes directly, so the head
    sees more even when the body is frozen, but most of those states have seen only a prefix of the
    text, and an average forgets in which order things came (it cannot tell a text from its
    shuffle unless the body has already encoded the order into each state).

    The body's ``out_head`` stays (the body is still a whole language model) but is unused here; it
    is frozen so that it does not count as trained, unless it is tied to the embedding, which trains.
    """

    def __init__(self, body: GPTModel | LlamaModel, n_classes: int, pooling: Pooling = "last"):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"SequenceClassifier: n_classes must be at least 2, got {n_classes}")
        if pooling not in ("last", "mean"):
            raise ValueError(f"SequenceClassifier: pooling must be 'last' or 'mean', got {pooling!r}")
        self.body, self.pooling, self.n_classes = body, pooling, n_classes
        self.emb_dim, self.context_length = body.config.emb_dim, body.config.context_length
        if not body.config.tie_weights:
            body.out_head.requires_grad_(False)
        self.head = nn.Linear(self.emb_dim, n_classes)

    def freeze_body(self) -> "SequenceClassifier":
        """Freeze every parameter of the body: only the head trains (frozen features + a linear head)."""
        self.body.requires_grad_(False)
        return self

    def pool(
        self, hidden: Float[Tensor, "batch seq emb_dim"], lengths: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch emb_dim"]:
        """One vector per text from the hidden states of its first ``lengths[i]`` positions."""
        if self.pooling == "last":
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        real = rearrange(positions, "seq -> 1 seq 1") < rearrange(lengths, "batch -> batch 1 1")
        return torch.where(real, hidden, 0.0).sum(dim=1) / rearrange(lengths, "batch -> batch 1")

    def forward(
        self, token_ids: Int[Tensor, "batch seq"], lengths: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch n_classes"]:
        """Class logits for right-padded ``token_ids`` whose row ``i`` has ``lengths[i]`` real tokens."""
        seq = token_ids.shape[1]
        if seq > self.context_length:
            raise ValueError(
                f"SequenceClassifier: the longest text in this batch is {seq} tokens, longer than the model's "
                f"context of {self.context_length}. Crop or truncate the texts first, e.g. "
                f"encode_texts(..., context_length={self.context_length}, crop=True)."
            )
        checkable = not torch.compiler.is_compiling() and lengths.numel() > 0  # reading lengths syncs a GPU: once, here
        if checkable and (int(lengths.min()) < 1 or int(lengths.max()) > seq):
            raise ValueError(
                f"SequenceClassifier: lengths must be between 1 and the padded length {seq}, got {lengths.tolist()}; "
                "build the batch with pad_token_ids or collate_classification"
            )
        return self.head(self.pool(self.body.hidden_states(token_ids), lengths.to(token_ids.device)))


def encode_texts(
    encode: Callable[[str], list[int]],
    texts: Sequence[str],
    context_length: int,
    crop: bool = False,
    keep: Literal["first", "last"] = "first",
) -> list[list[int]]:
    """Token ids of each text, by any tokenizer's ``encode`` (``BPETokenizer.encode``, tiktoken's).

    A text longer than ``context_length`` tokens is an error, unless ``crop=True``: then it keeps its
    first ``context_length`` tokens (``keep="first"``, for a task that reads a text's start) or its last
    ones (``keep="last"``, for a task that reads its end, such as ``shared.tasks.speech_end_task``).
    """
    if keep not in ("first", "last"):
        raise ValueError(
            f"encode_texts: keep must be 'first' or 'last' (which end of a cropped text to keep), got {keep!r}"
        )
    encoded = []
    for i, text in enumerate(texts):
        ids = list(encode(text))
        if not ids:
            raise ValueError(f"encode_texts: text {i} ({text!r}) has no tokens; a classifier needs at least one")
        if len(ids) > context_length:
            if not crop:
                raise ValueError(
                    f"encode_texts: text {i} is {len(ids)} tokens long, longer than the context of {context_length} "
                    f"({text[:40]!r}...). Pass crop=True to keep each text's {keep} {context_length} tokens, or "
                    "shorten the texts before encoding."
                )
            ids = ids[:context_length] if keep == "first" else ids[-context_length:]
        encoded.append(ids)
    return encoded


def pad_token_ids(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, " batch"]]:
    """Pad token-id lists on the right with ``pad_id`` to the longest: ``(token_ids, lengths)``.

    Right padding keeps every real token at its own position, so a causal model computes the same
    hidden states for them as without padding. ``pad_id`` must be a valid token id (it is embedded,
    then never read); any id will do.
    """
    if not sequences:
        raise ValueError("pad_token_ids: got no sequences; pass at least one list of token ids")
    lengths = torch.tensor([len(ids) for ids in sequences])
    if int(lengths.min()) == 0:
        empty = int(lengths.argmin())
        raise ValueError(f"pad_token_ids: sequence {empty} is empty; every text needs at least one token")
    token_ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, ids in enumerate(sequences):
        token_ids[i, : len(ids)] = torch.tensor(ids)
    return token_ids, lengths


def collate_classification(
    examples: Sequence[tuple[Sequence[int], int]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """A batch from (token ids, label) pairs: ``(token_ids, lengths, labels)``, padded as :func:`pad_token_ids`."""
    token_ids, lengths = pad_token_ids([ids for ids, _ in examples], pad_id)
    return token_ids, lengths, torch.tensor([label for _, label in examples])


def train_classifier(
    classifier: SequenceClassifier,
    examples: Sequence[tuple[Sequence[int], int]],
    steps: int,
    pad_id: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Train the parameters of ``classifier`` that require grad (AdamW, cross-entropy) for ``steps``
    batches of ``batch_size`` examples; returns the loss of every step.

    Batches walk through the examples in a random order, a new one each pass, drawn from a generator
    seeded with ``seed``: the same seed and the same classifier give the same run.
    """
    params = [p for p in classifier.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_classifier: no parameter of this classifier requires grad, so nothing would train")
    if len(examples) < 1 or steps < 1:
        raise ValueError(f"train_classifier: need at least one example and one step, got {len(examples)} and {steps}")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device = classifier.head.weight.device
    losses = []
    was_training = classifier.training
    classifier.train()
    try:
        for indices in seeded_batches(len(examples), batch_size, steps, seed):
            batch = [examples[i] for i in indices]
            token_ids, lengths, labels = (t.to(device) for t in collate_classification(batch, pad_id))
            loss = F.cross_entropy(classifier(token_ids, lengths).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        classifier.train(was_training)
    return losses


@torch.no_grad()
def accuracy(
    classifier: SequenceClassifier, examples: Sequence[tuple[Sequence[int], int]], pad_id: int, batch_size: int = 128
) -> float:
    """Share of ``examples`` whose highest logit is their label (in eval mode, in batches)."""
    if not examples:
        raise ValueError("accuracy: got no examples")
    device = classifier.head.weight.device
    correct = 0
    with eval_mode(classifier):
        for first in range(0, len(examples), batch_size):
            token_ids, lengths, labels = (
                t.to(device) for t in collate_classification(examples[first : first + batch_size], pad_id)
            )
            correct += int((classifier(token_ids, lengths).argmax(dim=-1) == labels).sum())
    return correct / len(examples)

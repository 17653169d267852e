"""Datasets: a text split into training and validation parts, next-token windows over token ids,
a resumable (and shardable) sampler, and the data loaders built from them."""

from collections.abc import Iterator, Sequence

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "NextTokenDataset",
    "ResumableSampler",
    "create_dataloader",
    "seeded_batches",
    "train_val_split",
]


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split a text by characters: the first part to train on, the last ``val_fraction`` to validate."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


class NextTokenDataset(Dataset):
    """Sliding windows over one token sequence: each item is (inputs, targets = inputs shifted by 1).

    The windows are views into the one token tensor (``Tensor.unfold``), so building the dataset
    copies nothing and its memory does not grow with ``context_length / stride``.
    """

    def __init__(
        self,
        token_ids: Int[Tensor, " n_tokens"] | Sequence[int],
        context_length: int,
        stride: int | None = None,
        max_context_length: int | None = None,
    ):
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        stride = context_length if stride is None else stride
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        if stride <= 0:
            raise ValueError(f"stride must be a positive number of tokens, got {stride}")
        if max_context_length is not None and context_length > max_context_length:
            raise ValueError(
                f"context_length {context_length} is longer than the model's context of "
                f"{max_context_length} tokens; use context_length <= {max_context_length}"
            )
        if ids.ndim != 1:
            raise ValueError(f"token_ids must be one flat sequence, got shape {tuple(ids.shape)}")
        if len(ids) < context_length + 1:
            raise ValueError(
                f"the text is too short for one window: {len(ids)} tokens, but a window needs "
                f"context_length + 1 = {context_length + 1} (inputs plus the shifted target). "
                "Use more text or a smaller context_length."
            )
        self.token_ids = ids
        self.context_length = context_length
        self.stride = stride
        windows = ids.unfold(0, context_length + 1, stride)  # a view: (n_windows, context + 1)
        self.inputs: Int[Tensor, "n_windows seq"] = windows[:, :-1]
        self.targets: Int[Tensor, "n_windows seq"] = windows[:, 1:]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i: int) -> tuple[Int[Tensor, " seq"], Int[Tensor, " seq"]]:
        return self.inputs[i], self.targets[i]


class ResumableSampler(Sampler[int]):
    """Indices in a seeded order that depends only on (seed, epoch), so a run can resume mid-epoch,
    and can be shared out among the processes of a data-parallel run.

    One training step consumes one *global batch* of ``batch_size`` consecutive indices of the
    epoch's order. With ``world_size`` processes, process ``rank`` yields its own slice of each
    global batch (``batch_size / world_size`` indices): the slices are disjoint and together they
    are exactly the batch one process would have drawn alone. With ``drop_last`` (required when
    sharded), only whole global batches are used, so that every process takes the same number of
    steps and a step never straddles two epochs.

    ``set_position(epoch, start)`` makes the next iteration yield epoch ``epoch``'s order from
    index ``start`` on; the training loop uses it to continue exactly where a checkpoint stopped.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        *,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if world_size > 1 and not drop_last:
            raise ValueError("a sampler shared among several processes must drop the last, incomplete batch")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size - 1, got rank {rank} of world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"the global batch of {batch_size} windows cannot be shared equally among {world_size} processes: "
                f"choose a batch size divisible by {world_size} (e.g. {world_size * max(1, batch_size // world_size)})"
            )
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    @property
    def per_rank(self) -> int:
        """How many windows of each global batch this process takes."""
        return self.batch_size // self.world_size

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=generator)

    def _indices(self) -> Tensor:
        rest = self.order(self.epoch)[self.start :]
        if not self.drop_last:
            return rest
        whole = rest[: len(rest) // self.batch_size * self.batch_size]  # whole global batches only
        if self.world_size == 1:
            return whole
        batches = rearrange(whole, "(batches ranks per_rank) -> batches ranks per_rank", ranks=self.world_size,
                            per_rank=self.per_rank)
        return rearrange(batches[:, self.rank], "batches per_rank -> (batches per_rank)")

    def __iter__(self) -> Iterator[int]:
        yield from self._indices().tolist()

    def __len__(self) -> int:
        return len(self._indices())


def create_dataloader(
    token_ids: Int[Tensor, " n_tokens"] | Sequence[int],
    *,
    batch_size: int,
    context_length: int,
    stride: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    max_context_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    micro_batch_size: int | None = None,
) -> DataLoader:
    """A DataLoader of (inputs, targets) batches of ``context_length`` tokens each.

    ``batch_size`` is the *global* batch: the windows one training step learns from. ``stride``
    defaults to ``context_length`` (windows that do not overlap). The shuffle order depends only on
    ``seed`` and the epoch (see :class:`ResumableSampler`).

    In a data-parallel run, process ``rank`` of ``world_size`` loads its disjoint share,
    ``batch_size / world_size`` windows per step. With ``micro_batch_size``, the loader hands out
    that share in pieces of that size, and the training loop accumulates their gradients (for a
    share too large to fit in memory at once).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = NextTokenDataset(token_ids, context_length, stride, max_context_length)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"the text is too short for one batch: it gives {len(dataset)} windows of "
            f"{context_length} tokens (stride {dataset.stride}) but batch_size is {batch_size}. "
            "Lower batch_size, context_length or stride, use more text, or pass drop_last=False."
        )
    sampler = ResumableSampler(
        len(dataset), shuffle=shuffle, seed=seed, batch_size=batch_size, rank=rank, world_size=world_size,
        drop_last=drop_last,
    )
    loader_batch = micro_batch_size or sampler.per_rank
    if loader_batch < 1 or sampler.per_rank % loader_batch:
        raise ValueError(
            f"micro_batch_size ({micro_batch_size}) must divide each process's share of the batch "
            f"({sampler.per_rank} = {batch_size} / {world_size} processes)"
        )
    # Its own generator, so iterating never consumes the global RNG (which dropout uses).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=loader_batch, sampler=sampler, drop_last=drop_last, generator=generator)


def seeded_batches(n_examples: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices into ``n_examples`` examples (at most ``batch_size`` each): a walk
    through the examples in a new random order each pass, drawn from a generator seeded with ``seed``,
    so the same seed gives the same batches. The post-training loops (classifier, SFT, DPO) draw with it."""
    if n_examples < 1 or batch_size < 1 or steps < 0:
        raise ValueError(f"seeded_batches: need at least one example and a batch of at least one, got "
                         f"{n_examples} examples and batch_size {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n_examples)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n_examples, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch

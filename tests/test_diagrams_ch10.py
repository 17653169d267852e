"""Chapter 10's figures: the all-reduce of real gradients, and the sampler's shares of each global batch."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from shared import diagrams
from shared.datasets import ResumableSampler


def test_the_all_reduce_draws_every_rank_and_the_mean():
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, -0.5])]
    fig = diagrams.draw_all_reduce(grads, torch.tensor([2.0, -1.0, 0.0]), ["a", "b", "c"])
    left, right = fig.axes
    heights = [[bar.get_height() for bar in container] for container in left.containers]
    assert heights == [[1.0, -2.0, 0.5], [3.0, 0.0, -0.5]]  # each rank's own gradient
    after = [[bar.get_height() for bar in container] for container in right.containers]
    assert after == [[2.0, -1.0, 0.0]] * 2  # every rank holds the mean
    assert [t.get_text() for t in left.get_xticklabels()] == ["a", "b", "c"]


def test_the_all_reduce_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="at least two 1-D gradients of 2 values"):
        diagrams.draw_all_reduce([torch.zeros(3), torch.zeros(3)], torch.zeros(3), ["a", "b"])


def test_the_shards_show_every_window_of_each_global_batch_once():
    shares = [list(ResumableSampler(40, seed=7, batch_size=8, rank=r, world_size=2)) for r in range(2)]
    fig = diagrams.draw_sampler_shards(shares, batch_size=8, steps=3)
    numbers = [t.get_text() for t in fig.axes[0].texts if t.get_text().isdigit()]
    alone = list(ResumableSampler(40, seed=7, batch_size=8))
    assert sorted(map(int, numbers)) == sorted(alone[:24])
    assert "process 1" in [t.get_text() for t in fig.axes[0].texts]

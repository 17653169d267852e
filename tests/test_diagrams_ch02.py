"""Chapter 2's diagrams: windows and stride read off shared.datasets, and scatter labels that do not
overlap."""

import itertools

import matplotlib
import pytest
import torch
from jaxtyping import install_import_hook

from shared.datasets import NextTokenDataset

with install_import_hook("shared.diagrams", "shared.typechecker"):
    import shared.diagrams as diagrams

matplotlib.use("Agg")

TOKENS = ["First", " Citizen", ":", "\n", "Before", " we", " proceed", " any", " further", ",", " hear", " me",
          " speak", "."]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def text_boxes(fig):
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(matplotlib.text.Text)
            if t.get_text().strip()]


@pytest.mark.parametrize(("context_length", "strides"), [(4, [4, 2]), (3, [1]), (5, [5, 2, 7])])
def test_the_windows_are_the_datasets_and_the_figure_is_legible(context_length, strides):
    fig = diagrams.draw_windows(TOKENS, context_length, strides)
    boxes = text_boxes(fig)
    texts = [t for t, _ in boxes]
    for stride in strides:
        dataset = NextTokenDataset(torch.arange(len(TOKENS)), context_length, stride)
        assert f"stride {stride}: {len(dataset)} windows" in texts
    n_windows = sum(len(NextTokenDataset(torch.arange(len(TOKENS)), context_length, s)) for s in strides)
    assert texts.count("targets") == n_windows + 1  # one row per window, and the legend
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"
    for text, box in boxes:
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, text


def test_draw_windows_refuses_a_string_and_a_bad_stride():
    with pytest.raises(TypeError):
        diagrams.draw_windows("First Citizen", 4, [4])
    with pytest.raises(ValueError, match="stride must be a positive"):
        diagrams.draw_windows(TOKENS, 4, [0])


def test_labels_of_crowded_points_do_not_overlap():
    import matplotlib.pyplot as plt

    generator = torch.Generator().manual_seed(0)
    points = torch.randn(21, 2, generator=generator) * 0.3
    points[:6] = points[:6] * 0.05  # a tight cluster, as word vectors of one group make
    fig, ax = plt.subplots(figsize=(7, 5.5))
    ax.scatter(points[:, 0], points[:, 1])
    ax.margins(0.25)
    fig.canvas.draw()
    labels = [f"word{k}" for k in range(21)]
    placed = diagrams.label_points(ax, points[:, 0].tolist(), points[:, 1].tolist(), labels)
    fig.canvas.draw()  # places the annotations
    renderer = fig.canvas.get_renderer()
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in placed]  # the text, not its leader line
    for a, b in itertools.combinations(range(21), 2):
        assert not boxes[a].overlaps(boxes[b]), f"{labels[a]} overlaps {labels[b]}"

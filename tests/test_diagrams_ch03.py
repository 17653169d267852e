"""Chapter 3's figure: attention as a weighted average draws the weights and the context vector that
shared.attention computes, and it refuses inputs it cannot draw."""

import matplotlib.pyplot as plt
import pytest
import torch

from shared import diagrams
from shared.attention import attend, attention_weights

WORDS = ["now", "is", "the", "winter", "of", "our", "discontent"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def projections(d: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return tuple(torch.randn(len(WORDS), d, generator=g) for _ in range(3))


def test_the_bars_and_the_bottom_row_are_shared_attentions_weights_and_context():
    q, k, v = projections()
    fig = diagrams.draw_attention_average(WORDS, q, k, v, query=3)
    scores_ax, weights_ax, values_ax = fig.axes
    drawn = torch.tensor([bar.get_width() for bar in weights_ax.patches], dtype=torch.float32)
    torch.testing.assert_close(drawn, attention_weights(q[3:4], k)[0])
    table = torch.as_tensor(values_ax.images[0].get_array())
    torch.testing.assert_close(table[-1].float(), attend(q[3:4], k, v)[0])
    torch.testing.assert_close(table[:-1].sum(dim=0).float(), attend(q[3:4], k, v)[0])
    labels = [t.get_text() for t in scores_ax.get_yticklabels()]
    assert labels == [f"{w} ({j})" for j, w in enumerate(WORDS)]
    assert "'winter'" in scores_ax.get_title()


def test_the_labels_do_not_overlap():
    q, k, v = projections()
    fig = diagrams.draw_attention_average(WORDS, q, k, v, query=6)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for ax in fig.axes for t in [*ax.get_yticklabels(), ax.title] if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    width, height = fig.canvas.get_width_height()
    assert all(0 <= b.x0 and b.x1 <= width and 0 <= b.y0 and b.y1 <= height for b in boxes)


def test_inputs_it_cannot_draw_are_refused_with_a_reason():
    q, k, v = projections()
    with pytest.raises(TypeError, match="not one string"):
        diagrams.draw_attention_average("now is the winter", q, k, v, query=3)
    with pytest.raises(ValueError, match="seq = len"):
        diagrams.draw_attention_average(WORDS[:3], q, k, v, query=1)
    with pytest.raises(ValueError, match="query must be"):
        diagrams.draw_attention_average(WORDS, q, k, v, query=7)
    with pytest.raises(ValueError, match="same width"):
        diagrams.draw_attention_average(WORDS, q, k[:, :3], v, query=3)

"""Chapter 1's diagram: BPE merges step by step, read off a real trained tokenizer, and legible."""

import itertools

import matplotlib
import pytest
from jaxtyping import install_import_hook

from shared.exercises.ch01 import SONNET
from shared.tokenizer import BPETokenizer

with install_import_hook("shared.diagrams", "shared.typechecker"):
    import shared.diagrams as diagrams

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(SONNET, vocab_size=256 + 60, special_tokens=())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def text_boxes(fig):
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(matplotlib.text.Text)
            if t.get_text().strip()]


def assert_legible(fig):
    boxes = text_boxes(fig)
    figure = fig.bbox
    for text, box in boxes:
        assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0 and box.y1 <= figure.y1, text
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"


@pytest.mark.parametrize("text", ["Shall I compare thee", "summer's day?", "So long lives this"])
def test_the_merge_steps_end_in_the_tokenizers_own_encoding(tokenizer, text):
    steps = diagrams.bpe_merge_steps(tokenizer, text)
    start = [i for piece in steps[0][2] for i in piece]
    assert start == list(text.encode("utf-8"))
    assert [i for piece in steps[-1][2] for i in piece] == tokenizer.encode(text)
    ids = [new_id for _, new_id, _ in steps[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # earliest-learned merges first, each once
    lengths = [sum(map(len, pieces)) for _, _, pieces in steps]
    assert all(a > b for a, b in itertools.pairwise(lengths))  # every merge shortens the text
    assert all(len(pieces) == len(steps[0][2]) for _, _, pieces in steps)  # no merge crosses a pre-token


def test_the_diagram_draws_one_row_per_merge_and_stays_legible(tokenizer):
    text = "Shall I compare thee"
    steps = diagrams.bpe_merge_steps(tokenizer, text)
    fig = diagrams.draw_bpe_merges(tokenizer, text)
    labels = [t for t, _ in text_boxes(fig) if t.startswith("merge ")]
    assert len(labels) == len(steps) - 1
    assert f"becomes {len(tokenizer.encode(text))} tokens" in " ".join(t for t, _ in text_boxes(fig))
    assert_legible(fig)


def test_the_diagram_refuses_what_it_cannot_draw_readably(tokenizer):
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        diagrams.draw_bpe_merges(tokenizer, SONNET)
    with pytest.raises(ValueError, match="max_steps"):
        diagrams.draw_bpe_merges(tokenizer, "Shall I compare thee", max_steps=1)

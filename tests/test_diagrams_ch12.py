"""Chapter 12's figures: the template's cells follow the mask, the DPO figure plots the numbers it is given,
and the comparison shows each model's mean and seeds."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from shared import diagrams
from shared.chat import Turn, render_chat, with_chat_tokens
from shared.corpus import shakespeare_bpe
from shared.sft import collate_instructions


def test_the_template_colours_every_token_by_its_role():
    tokenizer = with_chat_tokens(shakespeare_bpe())
    examples = [render_chat([Turn("GREMIO", "Good morrow."), Turn("BAPTISTA", "Ay.")], tokenizer),
                render_chat([Turn("KATHARINA", "No."), Turn("PETRUCHIO", "Yes, Kate.")], tokenizer)]
    token_ids, mask = collate_instructions(examples, pad_id=0)
    lengths = [len(p) + len(r) for p, r in examples]
    roles = [["response" if m else ("pad" if t >= n else "prompt") for t, m in enumerate(row)]
             for row, n in zip(mask.tolist(), lengths, strict=True)]
    rows = [[tokenizer.decode([i]) for i in row] for row in token_ids.tolist()]
    fig = diagrams.draw_chat_template(rows, roles)
    faces = [p.get_facecolor()[:3] for p in fig.axes[0].patches]
    expected = [diagrams._ROLE_FACE[role] for row in roles for role in row] + [
        diagrams._ROLE_FACE[r] for r in ("prompt", "response", "pad")]  # the cells, then the legend
    assert [c for face in faces for c in face] == pytest.approx([c for face in expected for c in face])
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert shown.count("TURN") == 4 and shown.count("END") == 4 and "response (counted in the loss)" in shown
    with pytest.raises(ValueError, match="roles must be"):
        diagrams.draw_chat_template([["a"]], [["answer"]])


def test_the_dpo_figure_plots_the_pair_and_every_log_ratio():
    before = (torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -18.0, -6.0]))
    after = (torch.tensor([-9.0, -19.5, -5.5]), torch.tensor([-14.0, -18.5, -7.0]))
    fig = diagrams.draw_dpo_log_ratios(before, after, pair=1)
    left, right = fig.axes[:2]
    heights = [bar.get_height() for bar in left.patches]
    assert heights == [-20.0, -19.5, -18.0, -18.5]  # chosen before/after, rejected before/after
    points = right.collections[0].get_offsets().tolist()
    assert points == [[-2.0, 1.0], [-0.5, 0.5], [-1.0, -0.5]]  # (rejected, chosen) log-ratios
    with pytest.raises(ValueError, match="four 1-D tensors"):
        diagrams.draw_dpo_log_ratios(before, (torch.zeros(2), torch.zeros(2)))


def test_the_comparison_shows_means_and_one_dot_per_seed():
    results = {"base": {"a": [0.1, 0.3], "b": [1.0, 1.0]}, "SFT": {"a": [0.5, 0.7], "b": [2.0, 4.0]}}
    fig = diagrams.plot_tuning_results(results, ["a", "b"])
    first = fig.axes[0]
    assert [bar.get_height() for bar in first.patches] == pytest.approx([0.2, 0.6])
    dots = [c for c in first.collections if type(c).__name__ == "PathCollection"]
    assert sum(len(c.get_offsets()) for c in dots) == 4
    assert [t.get_text() for t in first.get_xticklabels()] == ["base", "SFT"]
    fig = diagrams.plot_tuning_results(results, ["a", "b"], references={"a": {"ceiling": 0.9, "chance": 0.25}})
    levels = {line.get_label(): line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_label()[0] != "_"}
    assert levels == {"ceiling": 0.9, "chance": 0.25} and not fig.axes[1].get_legend()
    with pytest.raises(ValueError, match="at least one value"):
        diagrams.plot_tuning_results({"base": {"a": []}}, ["a"])

"""Chapter 9's figures: the GPT-vs-Llama diagram labels the SwiGLU width by Llama's rule, 8/3 x emb_dim rounded up."""

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

from shared import diagrams
from shared.model import GPT_CPU
from shared.settings import llama_like


def text_of(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_the_swiglu_width_is_labelled_by_llamas_rule_not_as_a_multiple():
    drawn = text_of(diagrams.draw_gpt_vs_llama(GPT_CPU))
    assert "hidden_dim 384 = 8/3 × emb_dim, rounded up" in drawn
    assert "3 × emb_dim" not in drawn.replace("8/3 × emb_dim", "")


def test_a_width_off_the_rule_is_labelled_as_its_multiple():
    drawn = text_of(diagrams.draw_gpt_vs_llama(GPT_CPU, replace(llama_like(GPT_CPU), hidden_dim=512)))
    assert "hidden_dim 512 = 4 × emb_dim" in drawn and "8/3" not in drawn

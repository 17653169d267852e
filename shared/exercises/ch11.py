"""Chapter 11's exercises: the last real token of a padded batch, a LoRA forward pass, how many numbers
LoRA trains, merging and unmerging, and true-or-false on padding, LoRA and this chapter's task.

Every check runs in this process on small seeded tensors or a tiny GPT, in well under a second.
"""

import torch
from torch import Tensor, nn

from shared.classify import SequenceClassifier
from shared.exercises import NotYet, close, describe, exercise, expect, own_work, run_answer, seeded, true_statements
from shared.lora import LoRALinear, apply_lora, count_trainable, merge_lora, unmerge_lora
from shared.model import GPTConfig, GPTModel

__all__ = ["STATEMENTS"]


# -- 11.1 ------------------------------------------------------------------------------------------


def _hidden_and_lengths() -> tuple[Tensor, Tensor]:
    with seeded(111):
        hidden = torch.randn(4, 7, 5)
    return hidden, torch.tensor([7, 2, 4, 1])  # a full row, padded rows, a one-token text


@exercise("11.1", "The last real token of a padded batch", level=1, minutes=10)
def check_last_token_states(answer) -> str:
    own_work(answer, SequenceClassifier)
    hidden, lengths = _hidden_and_lengths()
    got = run_answer(answer, hidden.clone(), lengths.clone())
    right = hidden[torch.arange(4), lengths - 1]
    expect(isinstance(got, Tensor) and got.shape == (4, 5),
           f"Expected one vector per text, shape (4, 5) for hidden states of shape (4, 7, 5); got {describe(got)}.")
    if close(got, right):
        return "one vector per text, read at position lengths - 1 of each row, padding never read"
    if close(got, hidden[:, -1]):
        raise NotYet("You read the last position of every row; for a padded row that is a padding token. "
                     "Use `lengths` to find each row's own last real token.")
    if close(got[1:], hidden[torch.arange(1, 4), lengths[1:]]):
        raise NotYet("You are one position too far: a text of n tokens has them at positions 0 to n - 1.")
    if close(got, hidden.mean(dim=1)) or close(got[0], hidden[0].mean(dim=0)):
        raise NotYet("That is an average over positions (mean pooling); the exercise reads one position per row.")
    wrong = [i for i in range(4) if not close(got[i], right[i])]
    raise NotYet(f"Rows {wrong} are not the hidden state of their last real token. Index rows and positions "
                 "together: one position per row.")


# -- 11.2 ------------------------------------------------------------------------------------------


def _lora_problem() -> tuple[nn.Linear, Tensor, Tensor, Tensor, float]:
    with seeded(112):
        linear = nn.Linear(6, 5)
        a, b, x = torch.randn(3, 6), torch.randn(5, 3), torch.randn(2, 4, 6)
    return linear.requires_grad_(False), a, b, x, 6.0


@exercise("11.2", "A LoRA forward pass", level=2, minutes=10)
def check_lora_layer_output(answer) -> str:
    own_work(answer, LoRALinear, apply_lora)
    linear, a, b, x, alpha = _lora_problem()
    got = run_answer(answer, x.clone(), linear, a.clone(), b.clone(), alpha)
    base, update = linear(x), x @ a.T @ b.T
    right = base + (alpha / 3) * update
    expect(isinstance(got, Tensor) and got.shape == right.shape,
           f"Expected the layer's output, shape {tuple(right.shape)} for x of shape {tuple(x.shape)}; got "
           f"{describe(got)}.")
    if close(got, right):
        return "the frozen layer's output plus (alpha / rank) · B A x"
    if close(got, update) or any(close(got, s * update) for s in (alpha, alpha / 3, 3 / alpha)):
        raise NotYet("Your output is only the low-rank update: the frozen layer's own output is missing.")
    if any(close(got, base + s * update) for s in (1.0, alpha, 3 / alpha)):
        raise NotYet("The update's scale is not right: LoRA multiplies B A x by alpha divided by the rank "
                     "(the rank is A's number of rows).")
    if close(got, x @ linear.weight.T + (alpha / 3) * update):
        raise NotYet("The frozen layer's bias is missing: call the layer itself for its part.")
    raise NotYet("Not the right output. Compute it in two parts: the frozen layer applied to x, then "
                 "x through A (rank numbers per token), then through B, scaled.")


# -- 11.3 ------------------------------------------------------------------------------------------

_COUNT_CASES = [
    (GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2), ["qkv"], 4),
    (GPTConfig(vocab_size=50, context_length=16, emb_dim=24, n_heads=2, n_layers=3), ["qkv", "out_proj"], 2),
    (GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2), ["expand", "project"], 8),
]


def _lora_count(config: GPTConfig, targets: list[str], rank: int) -> int:
    with seeded(113):
        model = apply_lora(GPTModel(config), targets, rank=rank, alpha=1.0)
    return count_trainable(model)[0]


@exercise("11.3", "How many numbers LoRA trains", level=2, minutes=15)
def check_lora_parameter_count(answer) -> str:
    own_work(answer, apply_lora, count_trainable, LoRALinear)
    for config, targets, rank in _COUNT_CASES:
        got = run_answer(answer, config, list(targets), rank)
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"Return a whole number (an int); got {describe(got)}.")
        right = _lora_count(config, targets, rank)
        if got != right:
            where = f"emb_dim={config.emb_dim}, n_layers={config.n_layers}, targets {targets}, rank {rank}"
            if got * config.n_layers == right:
                raise NotYet(f"For {where} your count is right for one block: every block has these layers.")
            per_layer = "a wrapped layer adds rank × (inputs + outputs) numbers: A and B"
            raise NotYet(f"For {where} your count is too {'high' if got > right else 'low'}; {per_layer}. "
                         "Look up each target's input and output sizes in the GPT's blocks.")
    return "rank × (in + out) for every wrapped layer of every block"


# -- 11.4 ------------------------------------------------------------------------------------------


@exercise("11.4", "Merge, then unmerge", level=1, minutes=10)
def check_merge(answer) -> str:
    expect(isinstance(answer, tuple) and len(answer) == 2 and all(callable(f) for f in answer),
           f"Give the two functions as a pair: (merge, unmerge); got {describe(answer)}.")
    merge, unmerge = answer
    own_work(merge, merge_lora, LoRALinear)
    own_work(unmerge, unmerge_lora, LoRALinear)
    linear, a, b, x, alpha = _lora_problem()
    weight = linear.weight.detach().clone()
    merged = run_answer(merge, weight.clone(), a.clone(), b.clone(), alpha)
    expect(isinstance(merged, Tensor) and merged.shape == weight.shape,
           f"merge should return a weight of W's shape {tuple(weight.shape)}; got {describe(merged)}.")
    lora_out = linear(x) + (alpha / 3) * (x @ a.T @ b.T)
    merged_out = x @ merged.T + linear.bias
    if not close(merged_out, lora_out):
        if close(merged, weight + b @ a) or close(merged, weight + alpha * b @ a):
            raise NotYet("merge: the update B A needs LoRA's scale, alpha divided by the rank.")
        raise NotYet("merge: a layer with your merged weight does not compute what the LoRA layer computes "
                     "(W x plus the scaled update). Which matrix product gives a weight of W's shape?")
    back = run_answer(unmerge, merged.clone(), a.clone(), b.clone(), alpha)
    expect(isinstance(back, Tensor) and back.shape == weight.shape,
           f"unmerge should return a weight of W's shape {tuple(weight.shape)}; got {describe(back)}.")
    if not close(back, weight):
        raise NotYet("unmerge(merge(W)) is not W again: unmerging takes out exactly what merging put in.")
    return "the merged layer computes what the LoRA layer does, and unmerging gives W back"


# -- 11.5 ------------------------------------------------------------------------------------------

# Statements about padding, LoRA and this chapter's task; the answer is the set of letters of the true ones.
STATEMENTS = {
    "a": "With right padding, a causal model's hidden state at a text's last real token is the same as when "
         "the text runs alone.",
    "b": "Left padding works as well for chapter 7's GPT, because the causal mask hides the padding tokens.",
    "c": "At the first training step of a freshly wrapped LoRA layer, A's gradient is zero, because B is zero.",
    "d": "On 'does the speech end here?', cropping each text to its first tokens instead of its last would "
         "turn some training pairs into two identical inputs with opposite labels.",
    "e": "On 268 test texts, with mean accuracies near 0.9, a method 0.02 above another, with seed spreads of "
         "0.005, is clearly the better one.",
}
_TRUE = {"a", "c", "d"}
_WHY = {  # what to think about, per statement, without saying which way it goes
    "a": "which positions a real token can attend to under the causal mask, and where the padding sits",
    "b": "where the padding sits relative to the text, and what the causal mask lets each real token see",
    "c": "the chain rule through B A x: what multiplies A's gradient",
    "d": "what a cut shares with its whole speech, and which tokens a crop keeps",
    "e": "the two sources of noise the chapter names, and its rule for calling a gap clear",
}


@exercise("11.5", "True or false: padding, LoRA and the task", level=1, minutes=5)
def check_statements(answer) -> str:
    true_statements(answer, STATEMENTS, _TRUE, _WHY)
    return ("a, c and d are true. b: left padding puts pads before the text, where its tokens attend to them, "
            "and shifts every position; d: a cut is a prefix of its speech, so a cut of at least CROP tokens and "
            "its speech share their first CROP tokens; e: an accuracy near 0.9 on 268 texts has a sampling error "
            "of about 0.018, so a gap of 0.02 is not clear by the chapter's rule.")

"""Chapter 12's exercises: the response mask of a chat batch, the DPO loss, the rows a new token adds,
cutting a reply at end-of-turn, and what beta does.

Every check runs in this process, on small made-up inputs compared with the course's own functions
(``shared.sft.collate_instructions``, ``shared.dpo.dpo_loss``), which the answers may not call.
"""

import torch
from torch import Tensor

from shared.dpo import dpo_loss
from shared.exercises import NotYet, describe, exercise, expect, own_work, run_answer
from shared.sft import collate_instructions

__all__ = ["BETA_STATEMENTS", "GROWN_MODEL"]

# -- 12.1 ------------------------------------------------------------------------------------------

_EXAMPLES = [([5, 6, 7], [8, 9]), ([3], [4, 10, 11, 12, 2]), ([1, 2, 3, 4, 5], [6])]


@exercise("12.1", "The response mask of a chat batch", level=2, minutes=10)
def check_collate(collate) -> str:
    expect(callable(collate), f"Pass your function itself, not {type(collate).__name__}.")
    own_work(collate, collate_instructions)
    for examples, pad_id in [(_EXAMPLES, 0), (_EXAMPLES[::-1], 99), ([([7, 7], [7])], 3)]:
        given = [(list(p), list(r)) for p, r in examples]
        out = run_answer(collate, given, pad_id)
        expect(given == [(list(p), list(r)) for p, r in examples], "Your function changed the examples it was given.")
        expect(isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out),
               f"collate should return two tensors, (token_ids, response_mask); yours returned {describe(out)}.")
        token_ids, mask = out
        want_ids, want_mask = collate_instructions(examples, pad_id)
        expect(token_ids.shape == want_ids.shape and mask.shape == want_mask.shape,
               f"Both tensors should have shape (examples, longest prompt + response) = {tuple(want_ids.shape)}; "
               f"yours are {tuple(token_ids.shape)} and {tuple(mask.shape)}.")
        expect(token_ids.dtype == torch.long,
               f"The token ids should be a torch.long tensor (what an embedding takes); yours is {token_ids.dtype}.")
        expect(mask.dtype == torch.bool, f"The mask should be a bool tensor (True = counted); yours is {mask.dtype}.")
        if not torch.equal(token_ids, want_ids):
            left = torch.full_like(want_ids, pad_id)
            for i, (p, r) in enumerate(examples):
                left[i, left.shape[1] - len(p) - len(r):] = torch.tensor([*p, *r])
            if torch.equal(token_ids, left):
                raise NotYet("The padding is on the left. With absolute positions, left padding moves every real "
                             "token to another position: pad on the right, after the response.")
            raise NotYet("The token ids are not each prompt followed by its response, then pad_id up to the longest "
                         "example.")
        if not torch.equal(mask, want_mask):
            if torch.equal(mask, token_ids.ne(pad_id)) or torch.equal(mask, want_mask | (token_ids.ne(pad_id))):
                raise NotYet("Your mask marks the prompt tokens too: only the response is what the model should "
                             "learn to write.")
            if (mask & ~want_mask).any() and not (want_mask & ~mask).any():
                raise NotYet("Your mask marks some padding (or prompt) positions: mark exactly the response tokens.")
            raise NotYet("Your mask misses some response tokens: mark every token of each response, from its first "
                         "to its last, and nothing else.")
    return "Right padding, and a mask of exactly the response tokens, as shared.sft.collate_instructions makes them."


# -- 12.2 ------------------------------------------------------------------------------------------


@exercise("12.2", "The DPO loss of given log-probabilities", level=2, minutes=10)
def check_dpo(dpo) -> str:
    expect(callable(dpo), f"Pass your function itself, not {type(dpo).__name__}.")
    own_work(dpo, dpo_loss)
    generator = torch.Generator().manual_seed(12)
    logps = [-(torch.rand(6, generator=generator) * 20 + 1) for _ in range(4)]
    for beta in (0.1, 0.5):
        given = [t.clone() for t in logps]
        out = run_answer(dpo, *given, beta)
        expect(isinstance(out, Tensor) and out.shape == (),
               f"dpo should return the mean loss over the pairs, a 0-d tensor; yours returned {describe(out)}.")
        want = dpo_loss(*logps, beta)[0]
        if torch.allclose(out, want, atol=1e-5):
            continue
        pc, pr, rc, rr = logps
        if torch.allclose(out, -torch.nn.functional.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean(), atol=1e-5):
            raise NotYet("The loss goes the wrong way: it should be small when the chosen response's log-ratio is "
                         "above the rejected one's.")
        if torch.allclose(out, -torch.nn.functional.logsigmoid((pc - rc) - (pr - rr)).mean(), atol=1e-5):
            raise NotYet("beta is missing: the implicit rewards are beta times the log-ratios.")
        if torch.allclose(out, -torch.nn.functional.logsigmoid(beta * (pc - pr)).mean(), atol=1e-5):
            raise NotYet("The reference model is missing: each reward is a log-ratio, policy minus reference.")
        if torch.allclose(out, -torch.sigmoid(beta * ((pc - rc) - (pr - rr))).mean(), atol=1e-5):
            raise NotYet("Close: the loss is minus the *log* of the sigmoid of the reward margin.")
        raise NotYet("Not the DPO loss yet. Write each response's reward (beta times its log-ratio), the margin "
                     "chosen minus rejected, then average -log sigmoid(margin) over the pairs.")
    return "Your loss equals shared.dpo.dpo_loss for two values of beta."


# -- 12.3 ------------------------------------------------------------------------------------------

# The model whose vocabulary grows: chapter 7's CPU GPT (untied head), and the two chat tokens.
GROWN_MODEL = {"vocab_size": 1_024, "emb_dim": 128, "tie_weights": False, "new_tokens": 2}


@exercise("12.3", "What two new tokens cost", level=1, minutes=5)
def check_new_parameters(prediction) -> str:
    expect(isinstance(prediction, int) and not isinstance(prediction, bool),
           f"Give one whole number, the parameters grow_vocabulary adds; got {prediction!r}.")
    m = GROWN_MODEL
    per_matrix = m["new_tokens"] * m["emb_dim"]
    right = per_matrix * (1 if m["tie_weights"] else 2)
    if prediction == right:
        return (f"{right} new parameters: {m['new_tokens']} rows of {m['emb_dim']} in the embedding and "
                f"{m['new_tokens']} in the untied output head; every old row stays as it was.")
    if prediction == per_matrix:
        raise NotYet("Too few: the output head is a separate matrix here (the head is not tied), and it needs a "
                     "row for each new token too, or the model could never predict them.")
    if prediction in (m["new_tokens"], 2 * m["new_tokens"]):
        raise NotYet("That counts rows, not parameters: each row holds one number per embedding dimension.")
    if prediction > right:
        raise NotYet("Too many: only the new tokens get rows; the old rows stay as they are, and the blocks do "
                     "not depend on the vocabulary at all.")
    raise NotYet("Too few. Which matrices have one row per token id, and how long is a row?")


# -- 12.4 ------------------------------------------------------------------------------------------

_STOP_CASES = [([5, 6, 9, 7, 9], 9), ([5, 6, 7], 9), ([9, 1, 2], 9), ([], 9), ([4, 4, 4, 8], 8)]


@exercise("12.4", "Stop at end-of-turn", level=1, minutes=5)
def check_cut_reply(cut_reply) -> str:
    expect(callable(cut_reply), f"Pass your function itself, not {type(cut_reply).__name__}.")
    for ids, end_id in _STOP_CASES:
        given = list(ids)
        out = run_answer(cut_reply, given, end_id)
        expect(given == ids, "Your function changed the list it was given; build a new one instead.")
        expect(isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], list) and isinstance(out[1], bool),
               f"cut_reply should return (a list of ids, a bool); yours returned {describe(out)}.")
        reply, ended = out
        want = (ids[: ids.index(end_id)], True) if end_id in ids else (list(ids), False)
        if (reply, ended) == want:
            continue
        if end_id in ids and reply == ids[: ids.index(end_id) + 1]:
            raise NotYet("The reply keeps the end-of-turn token: it is a signal, not part of the text.")
        if end_id in ids and ids.count(end_id) > 1 and reply == ids[: len(ids) - 1 - ids[::-1].index(end_id)]:
            raise NotYet("You cut at the last end-of-turn; the turn is over at the first one.")
        if reply == want[0]:
            raise NotYet("The ids are right, the flag is not: it says whether the model produced end-of-turn "
                         "itself (True) or ran out of tokens (False).")
        raise NotYet("Keep the ids before the first end-of-turn (all of them if there is none), and say whether "
                     "there was one.")
    return "Cut at the first end-of-turn, flagged, and left whole without one: what shared.chat.chat does."


# -- 12.5 ------------------------------------------------------------------------------------------

BETA_STATEMENTS = {
    "a": "A larger beta lets the policy move further from the reference before the loss is satisfied.",
    "b": "A larger beta makes the same log-ratio margin count more, so the loss is satisfied by a smaller "
         "move away from the reference.",
    "c": "beta only rescales the learning rate: the policy DPO converges to is the same for every beta.",
    "d": "With beta close to 0, DPO becomes supervised fine-tuning on the chosen responses.",
}


@exercise("12.5", "What beta does", level=1, minutes=5)
def check_beta(answer) -> str:
    expect(isinstance(answer, str) and answer.strip().lower() in BETA_STATEMENTS,
           f"Answer with one of the letters {sorted(BETA_STATEMENTS)} as a string; got {answer!r}.")
    letter = answer.strip().lower()
    hints = {
        "a": "Look at the loss: it reads beta x (log-ratio margin). If beta is larger, does the margin need to be "
             "larger or smaller for the same loss?",
        "c": "The rewards are beta x log-ratio and the loss saturates: the margin the loss asks for depends on "
             "beta, so the point where training settles does too, not only how fast it gets there.",
        "d": "With beta near 0 every reward is near 0 and the loss stays near log 2, whatever the policy does: "
             "each pair keeps the same weight and keeps pushing the rejected response down as hard as the chosen "
             "one up. SFT never looks at a rejected response.",
    }
    if letter in hints:
        raise NotYet(hints[letter])
    return ("beta sets the exchange rate between a log-ratio and the loss: the larger it is, the smaller the move "
            "from the reference that satisfies the loss, so beta keeps the policy close to the reference.")

"""Chapter 2's exercises: windows, embeddings and positions, checked against ``shared.datasets`` and
``shared.embeddings``.

Every tensor a checker makes comes from its own seeded ``torch.Generator``, so checking an answer
never moves the notebook's global random state.
"""

import torch
import torch.nn.functional as F
from torch import nn

from shared.datasets import NextTokenDataset, create_dataloader
from shared.embeddings import TokenPositionEmbedding, sinusoidal_positions
from shared.exercises import NotYet, _code_names, exercise, expect, own_work, run_answer

# -- 2.1 -------------------------------------------------------------------------------------------

# (tokens, context_length, stride): strides below, equal to and above the context, and a text
# that holds exactly one window.
WINDOW_CASES = [(40, 8, 8), (40, 8, 3), (40, 8, 11), (9, 8, 1), (100, 16, 5)]


@exercise("2.1", "windows from an index matrix", level=2, minutes=15)
def _check_windows(answer):
    own_work(answer, NextTokenDataset, create_dataloader)
    generator = torch.Generator().manual_seed(0)
    for n_tokens, context_length, stride in WINDOW_CASES:
        ids = torch.randint(0, 1000, (n_tokens,), generator=generator)
        reference = NextTokenDataset(ids, context_length, stride)
        setting = f"for {n_tokens} tokens, context_length {context_length}, stride {stride}"
        out = run_answer(answer, ids, context_length, stride)
        expect(isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out),
               f"return a tuple of two tensors (inputs, targets), got {type(out).__name__}")
        inputs, targets = out
        want = tuple(reference.inputs.shape)
        if tuple(inputs.shape) != want:
            if inputs.ndim == 2 and inputs.shape[1] == want[1]:
                many = "many" if inputs.shape[0] > want[0] else "few"
                raise NotYet(f"{setting}: you made {inputs.shape[0]} windows, too {many}. Window k starts at "
                             "k x stride, and the last one must still hold context_length + 1 ids.")
            raise NotYet(f"{setting}: inputs have shape {tuple(inputs.shape)}, not (n_windows, context_length).")
        expect(tuple(targets.shape) == want,
               f"{setting}: targets have shape {tuple(targets.shape)}, not the shape of the inputs")
        if not torch.equal(inputs, reference.inputs):
            k = int((inputs != reference.inputs).any(dim=1).nonzero()[0])
            raise NotYet(f"{setting}: window {k}'s inputs are wrong: window k holds the context_length ids that "
                         "start at k x stride.")
        if not torch.equal(targets, reference.targets):
            k = int((targets != reference.targets).any(dim=1).nonzero()[0])
            raise NotYet(f"{setting}: window {k}'s targets are wrong: the targets are the inputs shifted by one id.")
    return f"the same windows as shared.datasets.NextTokenDataset in {len(WINDOW_CASES)} settings."


# -- 2.2 -------------------------------------------------------------------------------------------

PREDICT_TOKENS, PREDICT_CONTEXT, PREDICT_TOKEN = 1_000, 64, 500


@exercise("2.2", "predict the number of windows", level=1, minutes=10)
def _check_window_counts(prediction):
    expect(isinstance(prediction, tuple) and len(prediction) == 3 and all(isinstance(n, int) for n in prediction),
           f"write your prediction as a tuple of three ints, got {prediction!r}")
    positions = torch.arange(PREDICT_TOKENS)
    full = NextTokenDataset(positions, PREDICT_CONTEXT, stride=PREDICT_CONTEXT)
    half = NextTokenDataset(positions, PREDICT_CONTEXT, stride=PREDICT_CONTEXT // 2)
    as_target = int((half.targets == PREDICT_TOKEN).sum())
    truth = (len(full), len(half), as_target)
    # A wrong count gets a direction and what to think about, never the count or a sum that gives it.
    why = [
        "(a) windows with stride 64: they start at 0, 64, 128, ..., and the last one must still leave "
        "context_length + 1 ids, the inputs plus the one shifted target",
        "(b) windows with stride 32: the same rule, with starts twice as close together",
        "(c) token 500 is a target of each window whose start lies from 64 to 1 tokens before it: count "
        "the starts in that range that the stride reaches",
    ]
    wrong = [k for k in range(3) if prediction[k] != truth[k]]
    if wrong:
        said = [f"{why[k]}; your count is too {'high' if prediction[k] > truth[k] else 'low'}" for k in wrong]
        raise NotYet(("Not all three yet. " if len(wrong) < 3 else "") + ". ".join(said) + ".")
    return (f"{truth}: halving the stride doubles the windows, and a token away from the ends is then a target "
            "twice per epoch.")


# -- 2.3 -------------------------------------------------------------------------------------------


@exercise("2.3", "an embedding lookup as a one-hot product", level=2, minutes=15)
def _check_one_hot(answer):
    own_work(answer, TokenPositionEmbedding)
    expect(not {"embedding", "Embedding"} & _code_names(answer),
           "That hands the work to PyTorch's own lookup (F.embedding or nn.Embedding): build the one-hot tensor "
           "and multiply, as the exercise asks, so that you see the lookup as a product.")
    generator = torch.Generator().manual_seed(1)
    vocab_size, emb_dim = 11, 4
    idx = torch.randint(0, vocab_size, (2, 5), generator=generator)
    weight = torch.randn(vocab_size, emb_dim, generator=generator).requires_grad_()
    out = run_answer(answer, idx, weight)
    expect(isinstance(out, torch.Tensor), f"return a tensor, got {type(out).__name__}")
    expect(tuple(out.shape) == (2, 5, emb_dim),
           f"for ids of shape (2, 5) and a weight of shape ({vocab_size}, {emb_dim}), the output has shape "
           f"{tuple(out.shape)}, expected (2, 5, {emb_dim}) = (batch, seq, emb_dim)")
    reference = F.embedding(idx, weight)
    if not torch.allclose(out, reference, atol=1e-6):
        b, t = (~torch.isclose(out, reference, atol=1e-6)).any(dim=-1).nonzero()[0].tolist()
        i = int(idx[b, t])
        hint = f"position ({b}, {t}) holds id {i}; its vector should be row {i} of the weight"
        matches = [r for r in range(vocab_size) if torch.allclose(out[b, t], weight[r], atol=1e-6)]
        hint += f", but it is row {matches[0]}." if matches else ", but it is no row of the weight."
        raise NotYet(hint + " Compare idx[..., None] with torch.arange(vocab) to get a 1 exactly at each id.")
    expect(out.requires_grad, "the output does not depend on the weight (no gradient can reach it): "
                              "multiply by the weight itself, without .detach() or torch.no_grad()")
    (grad,) = torch.autograd.grad(out.sum(), weight)
    (reference_grad,) = torch.autograd.grad(reference.sum(), weight)
    expect(torch.allclose(grad, reference_grad), "the values are right but the gradient that reaches the weight "
                                                 "differs from a lookup's: each id's row should get one unit per use.")
    return "equal to a lookup (F.embedding), values and gradient."


# -- 2.4 -------------------------------------------------------------------------------------------


@exercise("2.4", "bug hunt: positions added along the wrong axis", level=2, minutes=10)
def _check_embed(answer):
    own_work(answer, TokenPositionEmbedding)
    generator = torch.Generator().manual_seed(2)
    vocab_size, context_length, emb_dim = 50, 16, 8
    tok_weight = torch.randn(vocab_size, emb_dim, generator=generator)
    pos_weight = torch.randn(context_length, emb_dim, generator=generator)
    with torch.random.fork_rng(devices=[]):  # building the modules draws random weights: not from the notebook's RNG
        reference = TokenPositionEmbedding(vocab_size, context_length, emb_dim)
    reference.load_state_dict({"tok.weight": tok_weight, "pos.weight": pos_weight})
    tok = nn.Embedding.from_pretrained(tok_weight)
    pos = nn.Embedding.from_pretrained(pos_weight)
    for batch, seq in [(4, 4), (2, 6), (3, 1), (1, 16)]:
        idx = torch.randint(0, vocab_size, (batch, seq), generator=generator)
        with torch.no_grad():
            want = reference(idx)
            try:
                got = run_answer(answer, idx, tok, pos)
            except NotImplementedError:  # a RuntimeError too, but it means "not attempted"
                raise
            except RuntimeError as e:
                raise NotYet(f"for a batch of shape ({batch}, {seq}) your code raised RuntimeError: "
                             f"{str(e).splitlines()[0]}. Which dimension of the position vectors lines up with "
                             "which dimension of the token vectors?") from None
        expect(tuple(got.shape) == tuple(want.shape),
               f"for ids of shape ({batch}, {seq}) the output has shape {tuple(got.shape)}, "
               f"expected {tuple(want.shape)}")
        if not torch.allclose(got, want, atol=1e-6):
            hint = f"for ids of shape ({batch}, {seq}) the output differs from TokenPositionEmbedding's."
            if torch.allclose(got, tok_weight[idx], atol=1e-6):
                hint += " It equals the token vectors alone: no position vectors were added."
            elif seq > 1 and torch.allclose(got[1, 0] - tok_weight[idx[1, 0]], pos_weight[1], atol=1e-6):
                hint += (" Sequence 1 received position 1's vector at every position: the position vectors were "
                         "added along the batch axis. With batch == seq, broadcasting cannot tell.")
            raise NotYet(hint)
    return "equal to shared.embeddings.TokenPositionEmbedding for square and non-square batches."


# -- 2.5 -------------------------------------------------------------------------------------------


@exercise("2.5", "bug hunt: sinusoidal frequencies", level=2, minutes=10)
def _check_sinusoidal(answer):
    own_work(answer, sinusoidal_positions)
    for n_positions, emb_dim in [(16, 8), (50, 64), (3, 2)]:
        got = run_answer(answer, n_positions, emb_dim)
        want = sinusoidal_positions(n_positions, emb_dim)
        expect(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(want.shape),
               f"sinusoidal({n_positions}, {emb_dim}) should have shape {tuple(want.shape)}, got "
               f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        if not torch.allclose(got, want, atol=1e-5):
            pair = 1 if emb_dim > 2 else 0
            raise NotYet(
                f"sinusoidal({n_positions}, {emb_dim}) differs from section 2.4's encodings at position 1, "
                f"pair {pair} (dimensions {2 * pair} and {2 * pair + 1}), which should hold the sine (even dimension) "
                f"and the cosine (odd dimension) of pair {pair}'s angle. Check each pair's frequency, "
                "and which of sine and cosine comes first.")
    return "equal to shared.embeddings.sinusoidal_positions."

"""Chapter 2's exercises: each checker accepts a correct answer and rejects the common mistakes.

``WRONG_ANSWERS`` is read by ``tests/test_exercises.py``, which asserts that every one gets "not yet".
"""

import re

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from shared.datasets import NextTokenDataset
from shared.embeddings import TokenPositionEmbedding, sinusoidal_positions
from shared.exercises import check
from shared.shapes import strict_matmul

# -- 2.1: windows from an index matrix -------------------------------------------------------------


def windows_by_index(ids, context_length, stride):
    starts = torch.arange(0, len(ids) - context_length, stride)
    windows = ids[starts[:, None] + torch.arange(context_length + 1)[None, :]]
    return windows[:, :-1], windows[:, 1:]


def one_window_short(ids, context_length, stride):  # stops one start too early
    starts = torch.arange(0, len(ids) - context_length - 1, stride)
    windows = ids[starts[:, None] + torch.arange(context_length + 1)[None, :]]
    return windows[:, :-1], windows[:, 1:]


def targets_not_shifted(ids, context_length, stride):
    starts = torch.arange(0, len(ids) - context_length, stride)
    windows = ids[starts[:, None] + torch.arange(context_length)[None, :]]
    return windows, windows


def windows_every_token(ids, context_length, stride):  # ignores the stride
    return windows_by_index(ids, context_length, 1)


# -- 2.3: an embedding lookup as a one-hot product -------------------------------------------------


def one_hot_product(idx, weight):
    one_hot = (idx[..., None] == torch.arange(weight.shape[0])).float()
    rows = strict_matmul(rearrange(one_hot, "batch seq vocab -> (batch seq) vocab"), weight)
    return rearrange(rows, "(batch seq) emb_dim -> batch seq emb_dim", batch=idx.shape[0])


def ids_counted_from_one(idx, weight):
    one_hot = (idx[..., None] == torch.arange(1, weight.shape[0] + 1)).float()
    return one_hot @ weight


def batched_strict_matmul(idx, weight):  # strict_matmul refuses to broadcast the weight over the batch
    return strict_matmul((idx[..., None] == torch.arange(weight.shape[0])).float(), weight)


def detached_weight(idx, weight):
    return (idx[..., None] == torch.arange(weight.shape[0])).float() @ weight.detach()


# -- 2.4: positions along the wrong axis -----------------------------------------------------------


def embed(idx, tok, pos):
    return tok(idx) + pos(torch.arange(idx.shape[1]))


def positions_on_the_batch_axis(idx, tok, pos):  # the notebook's planted bug
    return tok(idx) + pos(torch.arange(idx.shape[1])).unsqueeze(1)


def positions_counted_by_batch(idx, tok, pos):
    return tok(idx) + pos(torch.arange(idx.shape[0]))


def no_positions(idx, tok, pos):
    return tok(idx)


# -- 2.5: sinusoidal frequencies -------------------------------------------------------------------


def _interleave(angles):
    return rearrange([angles.sin(), angles.cos()], "two seq half -> seq (half two)")


def sinusoidal(n_positions, emb_dim, base=10_000.0):
    dims = torch.arange(0, emb_dim, 2, dtype=torch.float32)  # 2i for pair i
    return _interleave(torch.outer(torch.arange(n_positions, dtype=torch.float32), base ** (-dims / emb_dim)))


def doubled_exponent(n_positions, emb_dim, base=10_000.0):  # the notebook's planted bug
    dims = torch.arange(0, emb_dim, 2, dtype=torch.float32)
    return _interleave(torch.outer(torch.arange(n_positions, dtype=torch.float32), base ** (-2 * dims / emb_dim)))


def cosine_first(n_positions, emb_dim, base=10_000.0):
    return torch.roll(sinusoidal(n_positions, emb_dim, base).reshape(n_positions, -1, 2), 1, dims=-1).reshape(
        n_positions, emb_dim)


def halves_not_pairs(n_positions, emb_dim, base=10_000.0):  # sines then cosines, not interleaved
    dims = torch.arange(0, emb_dim, 2, dtype=torch.float32)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float32), base ** (-dims / emb_dim))
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def the_courses_windows(ids, context_length, stride):  # right windows, not own work
    dataset = NextTokenDataset(ids, context_length, stride)
    return dataset.inputs, dataset.targets


def a_lookup(idx, weight):  # right values, but not the one-hot product the exercise asks for
    return F.embedding(idx, weight)


class CourseEmbedding(TokenPositionEmbedding):  # a subclass of the course's own module
    pass


def the_courses_embedding(idx, tok, pos):
    module = TokenPositionEmbedding(tok.num_embeddings, pos.num_embeddings, tok.embedding_dim)
    module.load_state_dict({"tok.weight": tok.weight, "pos.weight": pos.weight})
    return module(idx)


COURSE_VERSIONS = {
    "2.1": [the_courses_windows],
    "2.3": [a_lookup],
    "2.4": [the_courses_embedding],
    "2.5": [sinusoidal_positions, lambda n_positions, emb_dim: sinusoidal_positions(n_positions, emb_dim)],
}

WRONG_ANSWERS: dict[str, list] = {
    "2.1": [one_window_short, targets_not_shifted, windows_every_token],
    "2.2": [(15, 31, 2), (15, 30, 1), (14, 29, 2), (16, 31, 2)],
    "2.3": [ids_counted_from_one, batched_strict_matmul, detached_weight],
    "2.4": [positions_on_the_batch_axis, positions_counted_by_batch, no_positions],
    "2.5": [doubled_exponent, cosine_first, halves_not_pairs],
}
for _number, _answers in COURSE_VERSIONS.items():
    WRONG_ANSWERS[_number] = WRONG_ANSWERS[_number] + _answers

RIGHT_ANSWERS = {
    "2.1": windows_by_index,
    "2.2": (15, 30, 2),
    "2.3": one_hot_product,
    "2.4": embed,
    "2.5": sinusoidal,
}


@pytest.mark.parametrize("number", sorted(RIGHT_ANSWERS))
def test_a_correct_answer_passes(number):
    result = check(number, RIGHT_ANSWERS[number], quiet=True)
    assert result.passed, result


def test_the_planted_bugs_get_hints_that_name_the_symptom():
    positions = check("2.4", positions_on_the_batch_axis, quiet=True)
    assert "added along the batch axis" in positions.message
    frequencies = check("2.5", doubled_exponent, quiet=True)
    assert "frequency" in frequencies.message


def test_checking_an_answer_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for number, answer in RIGHT_ANSWERS.items():
        check(number, answer, quiet=True)
    assert torch.equal(torch.rand(3), expected)


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("number", ["2.1", "2.3", "2.4", "2.5"])
def test_a_stub_is_not_attempted(number):
    assert check(number, stub, quiet=True).status == "not attempted"


@pytest.mark.parametrize("prediction", [(15, 31, 2), (15, 30, 1), (14, 29, 2), (16, 31, 3), (0, 0, 0), (99, 99, 99)])
def test_a_wrong_prediction_is_told_which_way_it_is_off_but_never_the_counts(prediction):
    result = check("2.2", prediction, quiet=True)
    assert result.status == "not yet"
    numbers = set(re.findall(r"\d+", result.message))
    assert numbers <= {"64", "32", "128", "500", "1", "0"}, result.message  # the exercise's own numbers only
    truth = (15, 30, 2)
    for k, label in enumerate(["(a)", "(b)", "(c)"]):
        assert (label in result.message) == (prediction[k] != truth[k])
    assert ("too high" in result.message) == any(p > t for p, t in zip(prediction, truth, strict=True))
    assert ("too low" in result.message) == any(p < t for p, t in zip(prediction, truth, strict=True))


@pytest.mark.parametrize("number", sorted(COURSE_VERSIONS))
def test_the_courses_own_versions_are_refused(number):
    for answer in COURSE_VERSIONS[number]:
        result = check(number, answer, quiet=True)
        assert result.status == "not yet" and ("yourself" in result.message or "PyTorch's own" in result.message)
    assert check("2.4", CourseEmbedding, quiet=True).status == "not yet"


def test_hints_of_the_implement_exercises_never_show_expected_values():
    for number, answer in [("2.1", one_window_short), ("2.1", targets_not_shifted), ("2.3", ids_counted_from_one),
                           ("2.5", doubled_exponent), ("2.5", cosine_first)]:
        message = check(number, answer, quiet=True).message
        assert "expected" not in message and not re.search(r"\[\s*-?\d", message), message  # no list of values

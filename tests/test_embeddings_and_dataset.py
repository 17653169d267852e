import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shared.datasets import NextTokenDataset, ResumableSampler, create_dataloader
from shared.embeddings import TokenPositionEmbedding, sinusoidal_positions

# -- sinusoidal positions ----------------------------------------------------------------------


def test_sinusoidal_positions_follow_the_paper_formula():
    pe = sinusoidal_positions(20, 6)
    for pos in range(20):
        for i in range(3):
            angle = pos / 10_000 ** (2 * i / 6)
            assert math.isclose(pe[pos, 2 * i], math.sin(angle), abs_tol=1e-5)
            assert math.isclose(pe[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-5)


def test_sinusoidal_dot_products_depend_only_on_the_offset():
    pe = sinusoidal_positions(64, 16)
    for offset in [1, 5, 20]:
        dots = (pe[:-offset] * pe[offset:]).sum(-1)
        torch.testing.assert_close(dots, torch.full_like(dots, dots[0].item()), atol=1e-4, rtol=0)


def test_token_position_embedding_is_a_lookup_plus_position_rows():
    torch.manual_seed(0)
    emb = TokenPositionEmbedding(10, 8, 4)
    idx = torch.tensor([[1, 2, 3], [3, 3, 9]])
    out = emb(idx)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[1, 2], emb.tok.weight[9] + emb.pos.weight[2])
    torch.testing.assert_close(emb(idx[:, 2:], start=2), out[:, 2:])
    with pytest.raises(ValueError, match=r"token ids must be in 0\.\.9"):
        emb(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="after 6 cached positions exceed the context length of 8"):
        emb(idx, start=6)


# -- next-token dataset ------------------------------------------------------------------------


@given(n=st.integers(2, 200), context=st.integers(1, 40), stride=st.integers(1, 40))
def test_windows_are_shifted_by_one_and_counted_by_the_formula(n, context, stride):
    ids = torch.arange(1000, 1000 + n)
    if n < context + 1:
        with pytest.raises(ValueError, match="too short for one window"):
            NextTokenDataset(ids, context, stride)
        return
    ds = NextTokenDataset(ids, context, stride)
    assert len(ds) == (n - context - 1) // stride + 1
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == list(range(1000 + i * stride, 1000 + i * stride + context))
        assert y.tolist() == (x + 1).tolist()


def test_windows_are_views_into_the_one_token_tensor():
    ids = torch.randint(0, 50_000, (338_025,))
    ds = NextTokenDataset(ids, context_length=256, stride=1)  # 337,769 windows, no copies
    assert ds.inputs.untyped_storage().data_ptr() == ids.untyped_storage().data_ptr()
    assert ds.targets.untyped_storage().data_ptr() == ids.untyped_storage().data_ptr()
    assert ds.inputs.untyped_storage().nbytes() == ids.untyped_storage().nbytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context_length": 4, "stride": 0}, "stride must be a positive"),
        ({"context_length": 4, "stride": -2}, "stride must be a positive"),
        ({"context_length": 64}, "too short for one window"),
        ({"context_length": 8, "max_context_length": 4}, "longer than the model's context of 4"),
    ],
)
def test_bad_dataset_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NextTokenDataset(torch.arange(20), **kwargs)


def test_dataloader_batches_and_refuses_a_text_too_short_for_one_batch():
    loader = create_dataloader(torch.arange(100), batch_size=4, context_length=8)
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (4, 8) for x, _ in batches)  # 12 windows / 4
    with pytest.raises(ValueError, match="too short for one batch"):
        create_dataloader(torch.arange(30), batch_size=4, context_length=8)
    assert len(list(create_dataloader(torch.arange(30), batch_size=4, context_length=8, drop_last=False))) == 1


def test_dataloader_is_seeded_and_its_order_depends_only_on_seed_and_epoch():
    def first_batch(seed):
        return next(iter(create_dataloader(torch.arange(500), batch_size=4, context_length=8, seed=seed)))[0]

    torch.manual_seed(0)
    a = first_batch(7)
    torch.manual_seed(1)  # the global generator does not matter
    assert torch.equal(a, first_batch(7)) and not torch.equal(a, first_batch(8))

    sampler = ResumableSampler(50, seed=3)
    epoch1 = list(sampler)
    sampler.set_position(epoch=1)
    epoch2 = list(sampler)
    assert sorted(epoch1) == sorted(epoch2) == list(range(50)) and epoch1 != epoch2
    sampler.set_position(epoch=1, start=20)
    assert list(sampler) == epoch2[20:]

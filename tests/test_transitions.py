import pytest
import torch

from vqcausal.data.transitions import (
    TransitionConfig,
    TransitionSampler,
    TransitionStream,
    geometric_weights,
)
from vqcausal.errors import DataError


def test_geometric_weights_span_the_ratio():
    w = geometric_weights(12, 100.0)
    assert w.sum().item() == pytest.approx(1.0)
    assert (w[0] / w[-1]).item() == pytest.approx(100.0)
    ratios = w[:-1] / w[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert torch.allclose(geometric_weights(5, 1.0), torch.full((5,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("rho", [1.0, 10.0, 100.0])
def test_measured_action_frequencies_follow_the_imbalance(toy, rho):
    sampler = TransitionSampler(toy, TransitionConfig(imbalance=rho, seed=3))
    n = 40_000
    t = sampler.sample(n)
    measured = torch.bincount(t.actions, minlength=4).double() / n
    expected = geometric_weights(4, rho)
    # binomial standard error; 5 sigma keeps the test deterministic-in-practice and strict
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((measured - expected).abs() < 5 * sigma + 1e-4).all(), (measured, expected)


def test_action_order_permutes_which_action_is_rare(toy):
    sampler = TransitionSampler(toy, TransitionConfig(imbalance=100.0, action_order=[3, 2, 1, 0]))
    assert sampler.action_probs.argmax().item() == 3
    assert sampler.action_probs.argmin().item() == 0
    with pytest.raises(DataError, match="permutation"):
        TransitionSampler(toy, TransitionConfig(action_order=[0, 0, 1, 2]))


def test_value_imbalance_skews_factor_values(toy):
    sampler = TransitionSampler(toy, TransitionConfig(value_imbalance=20.0, seed=1))
    t = sampler.sample(20_000)
    hue = torch.bincount(t.values[:, 1], minlength=12).double()
    uniform = TransitionSampler(toy, TransitionConfig(seed=1)).sample(20_000)
    hue_u = torch.bincount(uniform.values[:, 1], minlength=12).double()
    # relative to the same split drawn uniformly, value 0 is ~20x as frequent as value 11
    skew = (hue[0] / hue[11]) / (hue_u[0] / hue_u[11])
    assert 12 < skew < 32, skew


def test_pairs_are_atomic_and_images_match_the_renderer(toy):
    sampler = TransitionSampler(toy, TransitionConfig(seed=0))
    batch = sampler.batch(256)
    diff = batch["values_next"] - batch["values"]
    assert ((diff != 0).sum(1) == 1).all()
    assert torch.equal((diff != 0).long().argmax(1), batch["action"] // 2)
    assert torch.equal(batch["x"], toy.render(batch["values"]))
    assert torch.equal(batch["x_next"], toy.render(batch["values_next"]))
    assert batch["x"].dtype == torch.uint8 and batch["x"].shape == (256, 3, 16, 16)


def test_split_has_no_shared_source_image(toy):
    sampler = TransitionSampler(toy, TransitionConfig(test_fraction=0.25, seed=5))
    train = sampler.sample(5000, "train", torch.Generator().manual_seed(0))
    test = sampler.sample(2000, "test", torch.Generator().manual_seed(1))
    space = toy.space
    train_sources = set(space.ravel(train.values).tolist())
    train_seen = train_sources | set(space.ravel(train.values_next).tolist())
    test_sources = set(space.ravel(test.values).tolist())
    assert test_sources and train_sources
    assert not test_sources & train_seen  # a test source image is never seen in training
    held_out = sampler.split_of(space.unravel(torch.arange(96))).sum().item()
    assert 12 <= held_out <= 36  # about a quarter of 96 grid points


def test_sampling_is_reproducible(toy):
    a = TransitionSampler(toy, TransitionConfig(imbalance=10, seed=7)).sample(300)
    b = TransitionSampler(toy, TransitionConfig(imbalance=10, seed=7)).sample(300)
    c = TransitionSampler(toy, TransitionConfig(imbalance=10, seed=8)).sample(300)
    assert torch.equal(a.values, b.values) and torch.equal(a.actions, b.actions)
    assert not torch.equal(a.values, c.values)


def test_sparse_source_only_pairs_stored_images(sparse_toy):
    sampler = TransitionSampler(sparse_toy, TransitionConfig(seed=2))
    for split in ("train", "test"):
        t = sampler.sample(1000, split, torch.Generator().manual_seed(0))
        assert (sparse_toy.rows_of(t.values) >= 0).all()
        assert (sparse_toy.rows_of(t.values_next) >= 0).all()
        assert (sampler.split_of(t.values) == ("train", "test").index(split)).all()


def test_sparse_source_uses_the_split_it_came_with(sparse_toy):
    n = sparse_toy.row_values.shape[0]
    split = torch.zeros(n, dtype=torch.long)
    split[sparse_toy.row_values[:, 0] >= 6] = 1  # positions 6, 7 are the test images
    sparse_toy.split = split
    sampler = TransitionSampler(sparse_toy)
    test = sampler.sample(500, "test")
    assert (test.values[:, 0] >= 6).all()
    train = sampler.sample(500, "train")
    assert (train.values[:, 0] < 6).all() and (train.values_next[:, 0] < 6).all()


def test_impossible_requests_are_clear_errors(sparse_toy, toy):
    with pytest.raises(DataError, match="unknown split"):
        TransitionSampler(toy).sample(4, "valid")
    with pytest.raises(DataError, match=">= 1"):
        TransitionConfig(imbalance=0.5)
    only = sparse_toy.row_values[:, 0] == 0  # keep position 0 only: position- never valid
    sparse_toy.row_values = sparse_toy.row_values[only]
    flat, order = torch.sort(sparse_toy.space.ravel(sparse_toy.row_values))
    sparse_toy._sorted_flat, sparse_toy._order = flat, order
    sampler = TransitionSampler(sparse_toy)
    with pytest.raises(DataError, match="position-"):
        sampler.sample(50, actions=torch.ones(50, dtype=torch.long))


def test_stream_yields_batches_per_worker(toy):
    stream = TransitionStream(TransitionSampler(toy), batch_size=8, seed=1)
    first = next(iter(stream))
    again = next(iter(stream))
    assert torch.equal(first["values"], again["values"])
    assert first["x"].shape == (8, 3, 16, 16)

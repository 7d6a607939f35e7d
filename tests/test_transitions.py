import pytest
import torch

from vqcausal.data.transitions import (
    TransitionConfig,
    TransitionSampler,
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


# ---- one action held at k training pairs ---------------------------------------------------
def _pairs_of(t, action: int) -> set[tuple[int, ...]]:
    rows = t.actions == action
    return {tuple(v) for v in t.values[rows].tolist()}


@pytest.mark.parametrize("k", [1, 5])
def test_rare_action_uses_exactly_k_distinct_training_pairs(toy, k):
    config = TransitionConfig(rare_action="hue+", rare_examples=k, seed=4)
    sampler = TransitionSampler(toy, config)
    rare = toy.space.action_names.index("hue+")
    seen: set[tuple[int, ...]] = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # many batches: the set never grows beyond k
        t = sampler.sample(2000, "train", generator)
        seen |= _pairs_of(t, rare)
        diff = t.values_next - t.values
        assert ((diff != 0).sum(1) == 1).all()  # still atomic moves
    assert len(seen) == k
    assert seen == {tuple(v) for v in sampler.rare_values.tolist()}
    # the rare pairs are training pairs: source and target both in the train split
    fixed = sampler.rare_values
    moved, valid = toy.space.apply(fixed, torch.full((k,), rare))
    assert valid.all()
    assert (sampler.split_of(fixed) == 0).all() and (sampler.split_of(moved) == 0).all()
    # its frequency is unchanged (uniform here), other actions keep their many sources
    freq = torch.bincount(t.actions, minlength=4).double() / len(t)
    assert (freq - 0.25).abs().max() < 0.05
    assert len(_pairs_of(t, toy.space.action_names.index("position+"))) > 10


def test_rare_action_set_is_deterministic_per_seed(toy):
    def rare_set(seed: int) -> torch.Tensor:
        config = TransitionConfig(rare_action="position-", rare_examples=6, seed=seed)
        return TransitionSampler(toy, config).rare_values

    assert torch.equal(rare_set(1), rare_set(1))
    assert not torch.equal(rare_set(1), rare_set(2))
    a = TransitionSampler(toy, TransitionConfig(rare_action="position-", rare_examples=6, seed=1))
    b = TransitionSampler(toy, TransitionConfig(rare_action="position-", rare_examples=6, seed=1))
    ta, tb = a.sample(500), b.sample(500)
    assert torch.equal(ta.values, tb.values) and torch.equal(ta.actions, tb.actions)


def test_rare_action_leaves_test_pairs_untouched(toy):
    plain = TransitionSampler(toy, TransitionConfig(seed=3))
    rare = TransitionSampler(toy, TransitionConfig(rare_action="hue+", rare_examples=2, seed=3))
    a = plain.sample(800, "test", torch.Generator().manual_seed(9))
    b = rare.sample(800, "test", torch.Generator().manual_seed(9))
    assert torch.equal(a.values, b.values) and torch.equal(a.actions, b.actions)
    assert len(_pairs_of(b, toy.space.action_names.index("hue+"))) > 2
    assert torch.equal(plain.action_probs, rare.action_probs)


def test_rare_action_with_imbalance_and_a_sparse_source(sparse_toy):
    config = TransitionConfig(imbalance=10.0, rare_action="position+", rare_examples=3, seed=1)
    sampler = TransitionSampler(sparse_toy, config)
    t = sampler.sample(3000)
    assert len(_pairs_of(t, 0)) == 3
    assert (sparse_toy.rows_of(t.values_next) >= 0).all()
    assert sampler.action_probs[0] == sampler.action_probs.max()  # frequency as configured


def test_rare_action_bad_settings_are_one_line_errors(toy):
    with pytest.raises(DataError, match="unknown rare_action 'hue\\*'; choose from position+"):
        TransitionSampler(toy, TransitionConfig(rare_action="hue*", rare_examples=2))
    with pytest.raises(DataError, match="go together"):
        TransitionConfig(rare_action="hue+")
    with pytest.raises(DataError, match="go together"):
        TransitionConfig(rare_examples=3)
    with pytest.raises(DataError, match=">= 0"):
        TransitionConfig(rare_action="hue+", rare_examples=-1)
    with pytest.raises(DataError, match="only \\d+ distinct training pairs"):
        TransitionSampler(toy, TransitionConfig(rare_action="position+", rare_examples=500))


def test_test_split_is_balanced_over_actions_whatever_the_imbalance(toy):
    sampler = TransitionSampler(toy, TransitionConfig(imbalance=100))
    generator = torch.Generator().manual_seed(0)
    train = torch.bincount(sampler.sample(4000, "train", generator).actions, minlength=4)
    test = torch.bincount(sampler.sample(4000, "test", generator).actions, minlength=4)
    assert train.max() > 20 * train.min()  # training keeps the 1:100 skew
    assert test.min() > 800 and test.max() < 1200  # held-out pairs: ~1000 per action
    mirrored = TransitionSampler(toy, TransitionConfig(imbalance=100, balanced_test=False))
    test = torch.bincount(mirrored.sample(4000, "test", generator).actions, minlength=4)
    assert test.max() > 20 * test.min()

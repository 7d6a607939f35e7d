"""MIC/TIC: known relations, invariances, minepy's published example and per-concept reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vqcausal.eval.mic import characteristic_matrix, mic, mic_per_concept, tic

N = 1000


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, N)


@pytest.mark.parametrize(
    "relation",
    [lambda x: x, lambda x: np.sin(4 * np.pi * x), lambda x: (x - 0.5) ** 2],
    ids=["identity", "sine", "parabola"],
)
def test_noiseless_functions_score_one(x: np.ndarray, relation) -> None:
    # measured: 1.0 for all three at n = 1000
    assert mic(x, relation(x)) >= 0.95


def test_independent_noise_scores_low(x: np.ndarray) -> None:
    noise = np.random.default_rng(1).uniform(0.0, 1.0, N)
    # measured: 0.12 at n = 1000 (MIC of independent data shrinks with n)
    assert mic(x, noise) <= 0.25
    assert tic(x, noise, norm=True) <= 0.1  # measured 0.05


def test_noisy_parabola_sits_between(x: np.ndarray) -> None:
    y = (x - 0.5) ** 2 + np.random.default_rng(2).normal(0.0, 0.05, N)
    value = mic(x, y)  # measured 0.55
    assert 0.3 < value < 0.9


def test_symmetric_and_invariant_to_monotone_maps(x: np.ndarray) -> None:
    y = np.sin(4 * np.pi * x) + np.random.default_rng(3).normal(0.0, 0.5, N)
    base = mic(x, y)
    assert mic(y, x) == pytest.approx(base, abs=1e-9)  # both axes are searched, so exact
    assert mic(np.exp(3 * x), y) == pytest.approx(base, abs=1e-9)  # MIC only sees ranks
    assert mic(x, -(y**3)) == pytest.approx(base, abs=1e-9)


def test_constant_gives_zero_not_nan() -> None:
    y = np.random.default_rng(4).uniform(size=200)
    for a, b in ((np.ones(200), y), (y, np.full(200, 3.0))):
        assert mic(a, b) == 0.0
        assert tic(a, b) == 0.0
        assert not math.isnan(tic(a, b, norm=True))


def test_matches_minepy_documented_example() -> None:
    """minepy's python_example.py output (alpha=0.6, c=15, est="mic_approx")."""
    x = np.linspace(0, 1, 1000)
    y = np.sin(10 * np.pi * x) + x
    assert mic(x, y) == pytest.approx(1.0)
    assert tic(x, y) == pytest.approx(67.6612295532, abs=1e-8)
    y = y + np.random.RandomState(0).uniform(-1, 1, x.shape[0])
    matrix = characteristic_matrix(x, y)
    assert np.nanmax(matrix) == pytest.approx(0.505716693417, abs=1e-10)
    assert np.nansum(matrix) == pytest.approx(28.7498326953, abs=1e-8)
    assert np.nanmax(np.abs(matrix - matrix.T)) == pytest.approx(0.365399904262, abs=1e-10)  # MAS


def test_characteristic_matrix_domain(x: np.ndarray) -> None:
    matrix = characteristic_matrix(x, x**2)
    bound = N**0.6  # B(n) = 63.1: grids up to 31 bins on one axis
    assert matrix.shape == (30, 30)
    cols, rows = np.meshgrid(np.arange(2, 32), np.arange(2, 32), indexing="ij")
    assert np.array_equal(~np.isnan(matrix), cols * rows <= bound)
    inside = matrix[~np.isnan(matrix)]
    assert inside.min() >= 0.0 and inside.max() <= 1.0
    assert tic(x, x**2, norm=True) == pytest.approx(inside.mean())


def test_discrete_labels_with_ties() -> None:
    labels = np.repeat(np.arange(5.0), 60)
    latent = labels + np.random.default_rng(5).normal(0.0, 0.05, labels.size)
    assert mic(latent, labels) == pytest.approx(1.0)


def test_mic_per_concept_blocks_and_scalars() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.rand(400, 3, generator=gen)
    blocks = torch.randn(400, 3, 4, generator=gen) * 0.01
    blocks[:, 0] += labels[:, 0, None]  # concept 0 encodes its label in every dim
    blocks[:, 1] += torch.cos(3 * labels[:, 1, None])  # concept 1: non-linear but exact
    # concept 2: noise only
    report = mic_per_concept(blocks, labels, names=["pendulum", "light", "shadow"])
    assert report["names"] == ["pendulum", "light", "shadow"]
    assert report["mic"][0] >= 0.95 and report["mic"][1] >= 0.95
    assert report["mic"][2] < 0.4
    assert report["mic_mean"] == pytest.approx(np.mean(report["mic"]))
    assert report["tic_mean"] == pytest.approx(np.mean(report["tic"]))
    assert all(0.0 <= t <= 1.0 for t in report["tic"])  # normalised TIC by default
    json.dumps(report)

    scalar = mic_per_concept(blocks.mean(-1), labels)
    assert scalar["mic"] == pytest.approx(report["mic"])
    assert scalar["names"] == ["0", "1", "2"]


def test_mic_per_concept_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mic_per_concept(torch.zeros(10, 3, 2), torch.zeros(10, 4))
    with pytest.raises(ValueError):
        mic(np.arange(5.0), np.arange(6.0))
    with pytest.raises(ValueError):
        mic(np.array([0.0, np.nan, 1.0]), np.arange(3.0))

"""Disentanglement metrics: known answers on identity, random, mixed and hand-made cases."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch

from vqcausal.eval.disentanglement import (
    DisentanglementSettings,
    beta_vae_score,
    dci,
    dci_from_importance,
    disentanglement_scores,
    explicitness,
    factor_vae_score,
    mig,
    modularity,
    modularity_from_mi,
    mutual_information_matrix,
    sample_factors,
    sap,
    sap_balanced,
)

SIZES = (3, 4, 5)
FAST = DisentanglementSettings.fast()
KEYS = {
    "beta_vae",
    "factor_vae",
    "mig",
    "sap",
    "sap_balanced",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "modularity",
    "explicitness",
}


def noisy_identity(scale: float = 0.01, seed: int = 0):
    """Latent dim k = factor k (as float) plus a little noise."""
    rng = np.random.default_rng(seed)

    def represent(f: torch.Tensor) -> np.ndarray:
        return f.double().numpy() + scale * rng.standard_normal(tuple(f.shape))

    return represent


def pure_noise(dim: int = 3, seed: int = 0):
    """Latents independent of the factors."""
    rng = np.random.default_rng(seed)

    def represent(f: torch.Tensor) -> np.ndarray:
        return rng.standard_normal((len(f), dim))

    return represent


def grid(sizes: tuple[int, ...], repeat: int = 1) -> np.ndarray:
    """Every factor combination ``repeat`` times: factors exactly independent and uniform."""
    return np.array(list(product(*(range(s) for s in sizes))) * repeat, dtype=np.int64)


def test_settings_defaults_follow_literature() -> None:
    default = DisentanglementSettings()
    assert (default.num_train, default.bins, default.batch_size) == (10_000, 20, 64)
    assert default.dci_model == "gradient_boosting"
    fast = DisentanglementSettings.fast()
    assert fast.num_train < default.num_train and fast.num_votes < default.num_votes


def test_identity_representation_scores_high() -> None:
    scores = disentanglement_scores(noisy_identity(), SIZES, FAST, seed=0)
    assert set(scores) == KEYS
    for key in ("mig", "dci_disentanglement", "dci_completeness", "factor_vae", "beta_vae"):
        assert scores[key] >= 0.9, (key, scores)
    assert scores["modularity"] >= 0.9
    assert scores["explicitness"] >= 0.95
    assert scores["dci_informativeness"] >= 0.95
    # SAP's runner-up is a chance-level classifier (1/n balanced accuracy): ~mean(1 - 1/n)
    expected_sap = np.mean([1 - 1 / s for s in SIZES])
    assert scores["sap_balanced"] == pytest.approx(expected_sap, abs=0.05)
    assert 0 < scores["sap"] < scores["sap_balanced"]  # the standard's linear classifier


def test_random_representation_scores_low() -> None:
    scores = disentanglement_scores(pure_noise(), SIZES, FAST, seed=0)
    assert scores["mig"] < 0.1
    assert scores["sap"] < 0.1 and scores["sap_balanced"] < 0.1
    assert scores["dci_disentanglement"] < 0.3
    assert scores["dci_completeness"] < 0.3
    chance = 1 / len(SIZES)
    assert scores["factor_vae"] < chance + 0.15
    assert scores["beta_vae"] < chance + 0.15
    assert scores["explicitness"] < 0.6
    assert scores["dci_informativeness"] < 0.4


def test_mixed_representation_is_worse_than_identity() -> None:
    rng = np.random.default_rng(1)
    f_train, f_test = sample_factors(SIZES, 1_000, rng), sample_factors(SIZES, 500, rng)
    ident = f_train + 0.01 * rng.standard_normal(f_train.shape)
    pairs = np.stack([f_train[:, 0] + f_train[:, 1], f_train[:, 1] + f_train[:, 2]], 1)
    mixed = np.concatenate([pairs, f_train[:, :1] + f_train[:, 2:]], 1).astype(float)
    angle = math.pi / 4
    rot = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]])
    rot = np.vstack([rot, [0, 0, 1]])
    rotated = (f_train / np.array(SIZES)) @ rot.T
    m_ident, m_mixed, m_rot = mig(ident, f_train), mig(mixed, f_train), mig(rotated, f_train)
    assert m_ident > 0.9
    assert m_mixed < 0.4 < m_ident
    assert m_rot < m_ident - 0.2
    # DCI sees the entanglement too, while the mixture stays informative
    mixed_test = np.stack(
        [f_test[:, 0] + f_test[:, 1], f_test[:, 1] + f_test[:, 2], f_test[:, 2] + f_test[:, 0]],
        1,
    ).astype(float)
    scores = dci(mixed, f_train, mixed_test, f_test, n_estimators=20, seed=0)
    assert scores["disentanglement"] < 0.5
    assert scores["informativeness"] > 0.8


def test_mig_hand_computed_cases() -> None:
    two_binary = grid((2, 2), repeat=25)
    f1, f2 = two_binary[:, 0], two_binary[:, 1]
    # latents equal to the factors: each factor fully in one dim, nothing in the other
    assert mig(two_binary, two_binary) == pytest.approx(1.0)
    assert mig(two_binary.astype(float), two_binary, bins=20) == pytest.approx(1.0)
    # (f1, f1 xor f2): f1 gap = H(f1)/H(f1) = 1; xor carries no MI with f2 alone -> gap 0
    xor = np.stack([f1, f1 ^ f2], 1)
    assert mig(xor, two_binary) == pytest.approx(0.5)
    mi = mutual_information_matrix(xor, two_binary)
    np.testing.assert_allclose(mi, [[math.log(2), 0.0], [0.0, 0.0]], atol=1e-12)
    # four-valued g and a coarse copy g // 2: gap (log 4 - log 2) / log 4 = 1/2; b unseen: 0
    four = grid((4, 2), repeat=10)
    g = four[:, 0]
    assert mig(np.stack([g, g // 2], 1), four) == pytest.approx(0.25)
    # duplicated dim: no gap for either factor
    assert mig(np.stack([f1, f1], 1), two_binary) == pytest.approx(0.0)


def test_dci_entropy_formula_on_hand_written_importance() -> None:
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    # one code uses both factors equally, the other is unused: D = 0, each factor complete
    assert dci_from_importance(np.array([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx((0.0, 1.0))
    # code 0: p = (3/4, 1/4), weight 0.8; code 1: p = (0, 1), weight 0.2
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    expected_d = 0.8 * (1 - h) + 0.2 * 1.0
    # factor 0 only in code 0 (weight 0.6), factor 1 split evenly (weight 0.4)
    expected_c = 0.6 * 1.0 + 0.4 * 0.0
    d, c = dci_from_importance(np.array([[0.6, 0.2], [0.0, 0.2]]))
    assert d == pytest.approx(expected_d, abs=1e-8)
    assert c == pytest.approx(expected_c, abs=1e-8)
    assert dci_from_importance(np.zeros((2, 2))) == (0.0, 0.0)
    assert dci_from_importance(np.array([[0.5], [0.5]])) == pytest.approx((1.0, 0.0))


def test_modularity_template_on_hand_written_mi() -> None:
    assert modularity_from_mi(np.eye(3)) == pytest.approx(1.0)
    # code 0 depends equally on both factors (delta 1); code 1 carries nothing (scored 0)
    assert modularity_from_mi(np.array([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.0)
    # one code, three factors, MI (2, 1, 0): 1 - (1 + 0) / (2 * 4)
    assert modularity_from_mi(np.array([[2.0, 1.0, 0.0]])) == pytest.approx(1 - 1 / 8)


def test_sap_balanced_full_grid_matches_chance_gap() -> None:
    # on the full grid an independent dim gives exactly 1/n balanced accuracy
    factors = grid((2, 4), repeat=20)
    as_float = factors.astype(float)
    assert sap_balanced(as_float, factors, as_float, factors) == pytest.approx(
        np.mean([1 - 1 / 2, 1 - 1 / 4])
    )
    assert sap_balanced(factors, factors, factors, factors) == pytest.approx(0.625)


def _reference_sap(mus, ys, mus_test, ys_test) -> float:
    """disentanglement_lib's sap_score.compute_sap for discrete factors, as written there
    (latents and factors as (dims, N) rows), for the known-answer test."""
    from sklearn import svm

    score_matrix = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
            classifier.fit(mus[i, :][:, np.newaxis], ys[j, :])
            pred = classifier.predict(mus_test[i, :][:, np.newaxis])
            score_matrix[i, j] = np.mean(pred == ys_test[j, :])
    sorted_matrix = np.sort(score_matrix, axis=0)
    return float(np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :]))


def test_sap_is_the_standard_computation() -> None:
    rng = np.random.default_rng(0)
    factors = grid((2, 3, 10), repeat=8)
    latents = np.concatenate(
        [factors + rng.normal(0, 0.3, factors.shape), rng.normal(size=(len(factors), 2))], 1
    )
    order = rng.permutation(len(factors))
    tr, te = order[:300], order[300:]
    ours = sap(latents[tr], factors[tr], latents[te], factors[te])
    reference = _reference_sap(latents[tr].T, factors[tr].T, latents[te].T, factors[te].T)
    assert ours == pytest.approx(reference, abs=1e-9)
    # known answers: a perfect code of the 2 x 2 grid reads each factor exactly (1) against
    # an independent runner-up at chance (1/2)
    square = grid((2, 2), repeat=10)
    assert sap(square.astype(float), square, square.astype(float), square) == pytest.approx(0.5)
    # a perfect code of a 10-valued factor: one line per class cannot pick out the middle
    # values, so the standard scores it low (as published SAP values of good codes are)
    ten = grid((10, 2), repeat=5)
    perfect = ten.astype(float)
    assert sap(perfect, ten, perfect, ten) < 0.5 < sap_balanced(perfect, ten, perfect, ten)


def test_discrete_codes_score_high_and_ignore_code_order() -> None:
    # VQ-like indices: each factor value gets an arbitrary, non-monotonic code
    tables = [torch.tensor(t) for t in ([7, 2, 5], [3, 9, 0, 4], [1, 8, 6, 0, 11])]

    def codes(f: torch.Tensor) -> torch.Tensor:
        return torch.stack([tables[k][f[:, k]] for k in range(f.shape[1])], 1)

    scores = disentanglement_scores(codes, SIZES, FAST, seed=3)  # int dtype -> discrete
    for key in ("mig", "dci_disentanglement", "dci_completeness", "factor_vae", "beta_vae"):
        assert scores[key] >= 0.95, (key, scores)
    assert scores["modularity"] >= 0.95
    assert scores["explicitness"] >= 0.99
    assert scores["dci_informativeness"] >= 0.99
    # codes are labels: relabelling them leaves the discrete-path metrics unchanged
    factors = sample_factors(SIZES, 600, 0)
    latents = codes(torch.as_tensor(factors)).numpy()
    relabel = np.random.default_rng(0).permutation(20)[latents]
    tr, te = slice(0, 400), slice(400, None)
    for metric in (mig, modularity):
        assert metric(relabel, factors) == pytest.approx(metric(latents, factors))
    split = (factors[tr], latents[te], factors[te])
    assert sap_balanced(relabel[tr], factors[tr], relabel[te], factors[te]) == pytest.approx(
        sap_balanced(latents[tr], *split)
    )
    assert explicitness(relabel[tr], factors[tr], relabel[te], factors[te]) == pytest.approx(
        explicitness(latents[tr], *split), abs=1e-4
    )


def test_collapsed_dims_and_single_valued_factors_do_not_give_nan() -> None:
    sizes = (3, 1, 4)
    ident = noisy_identity(seed=5)

    def with_dead_dims(f: torch.Tensor) -> np.ndarray:
        z = ident(f)
        return np.concatenate([z[:, [0, 2]], np.zeros((len(f), 2))], 1)

    scores = disentanglement_scores(with_dead_dims, sizes, FAST, seed=0)
    assert all(np.isfinite(v) for v in scores.values()), scores
    assert scores["mig"] > 0.9 and scores["factor_vae"] > 0.9 and scores["beta_vae"] > 0.9
    assert scores["dci_disentanglement"] > 0.9 and scores["dci_completeness"] > 0.9

    def dead(f: torch.Tensor) -> np.ndarray:
        return np.ones((len(f), 3))

    dead_scores = disentanglement_scores(dead, sizes, FAST, seed=0)
    assert all(np.isfinite(v) for v in dead_scores.values()), dead_scores
    assert dead_scores["mig"] == 0.0 and dead_scores["factor_vae"] == 0.0
    assert dead_scores["dci_disentanglement"] == 0.0 and dead_scores["modularity"] == 0.0
    # nothing varies at all: every metric is defined (0) rather than NaN
    flat = np.zeros((50, 2), dtype=np.int64)
    assert mig(flat.astype(float), flat) == 0.0
    assert modularity(flat.astype(float), flat) == 0.0
    assert sap_balanced(flat.astype(float), flat, flat.astype(float), flat) == 0.0
    assert sap(flat.astype(float), flat, flat.astype(float), flat) == 0.0


def test_generated_scores_are_seeded_and_accept_tensors() -> None:
    def identity(f: torch.Tensor) -> torch.Tensor:
        return f.float()

    first = factor_vae_score(identity, SIZES, FAST, seed=7)
    assert first == factor_vae_score(identity, SIZES, FAST, seed=7) == 1.0
    noise_a = beta_vae_score(pure_noise(seed=1), SIZES, FAST, seed=7)
    noise_b = beta_vae_score(pure_noise(seed=1), SIZES, FAST, seed=7)
    assert noise_a == noise_b
    assert beta_vae_score(identity, (1, 5), FAST, seed=0) == 1.0  # one varying factor


@pytest.mark.parametrize("model", ["random_forest", "extra_trees"])
def test_dci_forest_models_agree_on_identity(model: str) -> None:
    factors = sample_factors(SIZES, 900, 2)
    latents = factors + 0.01 * np.random.default_rng(2).standard_normal(factors.shape)
    scores = dci(latents[:600], factors[:600], latents[600:], factors[600:], model, 10, seed=0)
    assert scores["disentanglement"] > 0.95 and scores["completeness"] > 0.95
    assert scores["informativeness"] > 0.95

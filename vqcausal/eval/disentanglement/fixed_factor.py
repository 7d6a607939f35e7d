"""Scores from batches that hold one factor fixed: the beta-VAE and FactorVAE scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vqcausal.eval.disentanglement.common import (
    DisentanglementSettings,
    Represent,
    as_rng,
    represent_factors,
    sample_factors,
    treat_as_discrete,
)

# ----------------------------------------------------------------------------- beta-VAE


def _batched_represent(represent: Represent, factors: np.ndarray, chunk: int) -> np.ndarray:
    """Represent ``(num_batches, rows, K)`` factor batches, returning ``(num_batches, rows, d)``."""
    nb, rows, k = factors.shape
    flat = represent_factors(represent, factors.reshape(nb * rows, k), chunk)
    return flat.reshape(nb, rows, -1)


def _beta_vae_features(
    represent: Represent,
    sizes: Sequence[int],
    choices: np.ndarray,
    num: int,
    settings: DisentanglementSettings,
    rng: np.random.Generator,
    discrete: bool | None,
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.choice(choices, size=num)
    per_call = max(1, settings.represent_chunk // (2 * settings.batch_size))
    features = []
    is_discrete = discrete
    for start in range(0, num, per_call):
        idx = labels[start : start + per_call]
        b = settings.batch_size
        first = sample_factors(sizes, len(idx) * b, rng).reshape(len(idx), b, -1)
        second = sample_factors(sizes, len(idx) * b, rng).reshape(len(idx), b, -1)
        rows = np.arange(len(idx))
        second[rows, :, idx] = first[rows, :, idx]
        z = _batched_represent(represent, np.concatenate([first, second], axis=1), 2 * b * per_call)
        z1, z2 = z[:, :b], z[:, b:]
        if is_discrete is None:
            is_discrete = treat_as_discrete(z1.reshape(-1, z1.shape[-1]), None)
        if is_discrete:
            features.append(np.mean(z1 != z2, axis=1))
        else:
            features.append(np.mean(np.abs(z1.astype(np.float64) - z2), axis=1))
    return np.concatenate(features), labels


def beta_vae_score(
    represent: Represent,
    sizes: Sequence[int],
    settings: DisentanglementSettings | None = None,
    seed: int | np.random.Generator = 0,
    discrete: bool | None = None,
) -> float:
    """beta-VAE score: held-out accuracy of a linear classifier naming the fixed factor.

    Each sample is a batch of ``batch_size`` pairs that share one uniformly chosen factor;
    its feature is the mean ``|z1 - z2|`` per dim (the fraction of differing codes for
    discrete latents). Features are standardised before the logistic regression.
    """
    settings = settings or DisentanglementSettings()
    rng = as_rng(seed)
    choices = np.flatnonzero(np.asarray(sizes) > 1)
    if choices.size == 0:
        return 0.0
    if choices.size == 1:
        return 1.0  # a single varying factor: the answer is always that factor
    x_train, y_train = _beta_vae_features(
        represent, sizes, choices, settings.num_batches, settings, rng, discrete
    )
    x_test, y_test = _beta_vae_features(
        represent, sizes, choices, settings.num_eval_batches, settings, rng, discrete
    )
    if np.unique(y_train).size < 2:
        return float(np.mean(y_test == y_train[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


# ----------------------------------------------------------------------------- FactorVAE


def _spread(z: np.ndarray, discrete: bool, axis: int) -> np.ndarray:
    """Variance per dim (Gini impurity for codes: the summed variance of their one-hot)."""
    if not discrete:
        return np.var(z.astype(np.float64), axis=axis, ddof=1)
    # batches (nb, B, d): unbiased Gini from pairs of distinct points
    b = z.shape[axis]
    same = (np.expand_dims(z, axis) == np.expand_dims(z, axis + 1)).sum(axis=(axis, axis + 1))
    return 1.0 - (same - b) / (b * (b - 1))


def _global_gini(z: np.ndarray) -> np.ndarray:
    out = np.empty(z.shape[1])
    for j in range(z.shape[1]):
        p = np.unique(z[:, j], return_counts=True)[1] / len(z)
        out[j] = 1.0 - np.sum(p**2)
    return out


def _factor_vae_votes(
    represent: Represent,
    sizes: Sequence[int],
    choices: np.ndarray,
    num: int,
    scale: np.ndarray,
    active: np.ndarray,
    settings: DisentanglementSettings,
    rng: np.random.Generator,
    discrete: bool,
) -> np.ndarray:
    votes = np.zeros((len(sizes), len(scale)), dtype=np.int64)
    labels = rng.choice(choices, size=num)
    b = settings.batch_size
    per_call = max(1, settings.represent_chunk // b)
    active_idx = np.flatnonzero(active)
    for start in range(0, num, per_call):
        idx = labels[start : start + per_call]
        batch = sample_factors(sizes, len(idx) * b, rng).reshape(len(idx), b, -1)
        rows = np.arange(len(idx))
        batch[rows, :, idx] = batch[rows, :1, idx]
        z = _batched_represent(represent, batch, b * per_call)
        local = _spread(z, discrete, axis=1)
        dims = active_idx[np.argmin(local[:, active] / scale[active], axis=1)]
        np.add.at(votes, (idx, dims), 1)
    return votes


def factor_vae_score(
    represent: Represent,
    sizes: Sequence[int],
    settings: DisentanglementSettings | None = None,
    seed: int | np.random.Generator = 0,
    discrete: bool | None = None,
) -> float:
    """FactorVAE score: held-out accuracy of a majority vote ``argmin dim -> fixed factor``.

    Dims are scaled by their variance over the data (dims with std below
    ``prune_threshold`` are dropped); in each batch of ``batch_size`` points sharing one
    factor value the dim of least scaled variance votes for that factor.
    """
    settings = settings or DisentanglementSettings()
    rng = as_rng(seed)
    choices = np.flatnonzero(np.asarray(sizes) > 1)
    if choices.size == 0:
        return 0.0
    z = represent_factors(
        represent,
        sample_factors(sizes, settings.num_variance_estimate, rng),
        settings.represent_chunk,
    )
    is_discrete = treat_as_discrete(z, discrete)
    scale = _global_gini(z) if is_discrete else _spread(z, False, axis=0)
    active = np.sqrt(scale) >= settings.prune_threshold
    if not active.any():
        return 0.0
    train, test = (
        _factor_vae_votes(represent, sizes, choices, num, scale, active, settings, rng, is_discrete)
        for num in (settings.num_votes, settings.num_eval_votes)
    )
    classifier = np.argmax(train, axis=0)  # dim -> factor it votes for most
    return float(test[classifier, np.arange(test.shape[1])].sum() / max(1, test.sum()))

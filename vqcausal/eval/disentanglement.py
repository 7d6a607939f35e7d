"""Disentanglement metrics of a learned representation against ground-truth factors.

Implements the standard scores so that a representation (continuous encoder means or
discrete VQ code indices) can be compared with published numbers:

* beta-VAE score (Higgins et al. 2017)
* FactorVAE score (Kim & Mnih 2018)
* MIG, mutual information gap (Chen et al. 2018)
* SAP, separated attribute predictability (Kumar et al. 2018): ``sap`` exactly as
  disentanglement_lib computes it (``LinearSVC(C=0.01)`` per latent dim and factor, plain
  accuracy), comparable with published values; ``sap_balanced`` is our variant (see there)
* DCI disentanglement / completeness / informativeness (Eastwood & Williams 2018)
* modularity and explicitness (Ridgeway & Mozer 2018)

The definitions follow ``disentanglement_lib`` (Locatello et al. 2019) unless stated; every
classifier / regressor / information measure comes from scikit-learn.

Conventions
-----------
* ``latents``: ``(N, d)``; float means continuous, an integer dtype means discrete codes
  (override with ``discrete=True/False``).
* ``factors``: ``(N, K)`` integer class indices of the ground-truth factors.
* Factors that take a single value in the data carry no information (entropy 0): they are
  skipped by every metric. When no factor varies, a metric returns ``0.0`` (never NaN).
* Collapsed latent dims (constant) get zero mutual information / importance and never crash.
  As in disentanglement_lib, modularity scores such an uninformative code 0 (so unused dims
  lower it), and SAP never reaches 1: the runner-up dim still has chance-level accuracy, so
  a perfect code of an ``n``-valued factor gets a gap of ``1 - 1/n`` (``sap_balanced``); the
  standard ``sap`` is lower still, since a linear classifier on one dim cannot pick out the
  middle values of a factor (a perfect code of a 10-valued factor scores ~0.2).
* DCI uses ``GradientBoostingClassifier`` by default (the reference choice, slow on large
  samples: ~25 s for the default 10k/5k samples and four factors); random forests / extra
  trees are available through ``DisentanglementSettings.dci_model``.

Discrete codes
--------------
Code indices are categorical labels, so their numeric order is never used:

* MIG / modularity: codes are used as-is as the discrete variable (no histogram).
* ``sap_balanced``: the single-dim classifier is a categorical naive Bayes (the per-code
  lookup table); the standard ``sap`` reads code indices as numbers, as any published value
  of it on discrete codes would have.
* DCI / explicitness: each code dim is one-hot encoded; DCI sums the tree importances of a
  dim's one-hot block back into one importance per code dim.
* beta-VAE: ``|z1 - z2|`` on one-hot codes summed over a dim's block is ``2 * [z1 != z2]``;
  the feature is the fraction of pairs whose codes differ.
* FactorVAE: the summed variance of a dim's one-hot block is its Gini impurity
  ``1 - sum_v p_v**2``; it replaces the variance (and ``sqrt`` of it the std for pruning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from scipy.stats import entropy
from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import balanced_accuracy_score, mutual_info_score, r2_score, roc_auc_score
from sklearn.naive_bayes import CategoricalNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

__all__ = [
    "DisentanglementSettings",
    "Represent",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "dci_importance",
    "discretize",
    "disentanglement_scores",
    "explicitness",
    "factor_vae_score",
    "mig",
    "modularity",
    "modularity_from_mi",
    "mutual_information_matrix",
    "represent_factors",
    "sample_factors",
    "sap",
    "sap_balanced",
]

Represent = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]
"""Maps factor values ``LongTensor (B, K)`` to a representation ``(B, d)``."""

DciModel = Literal["gradient_boosting", "random_forest", "extra_trees"]


@dataclass(frozen=True)
class DisentanglementSettings:
    """Sample sizes and knobs; defaults follow the literature (disentanglement_lib)."""

    num_train: int = 10_000  # observational training sample (MIG, SAP, DCI, modularity, ...)
    num_test: int = 5_000  # held-out observational sample (SAP, DCI, explicitness)
    bins: int = 20  # histogram bins per continuous latent dim (MIG, modularity)
    batch_size: int = 64  # pairs per beta-VAE batch / points per FactorVAE batch
    num_batches: int = 10_000  # beta-VAE training batches
    num_eval_batches: int = 5_000  # beta-VAE held-out batches
    num_votes: int = 10_000  # FactorVAE training votes
    num_eval_votes: int = 5_000  # FactorVAE held-out votes
    num_variance_estimate: int = 10_000  # FactorVAE sample for the global std
    prune_threshold: float = 0.05  # FactorVAE: dims with std below this are collapsed
    dci_model: DciModel = "gradient_boosting"
    dci_n_estimators: int = 100
    represent_chunk: int = 4_096  # rows per call of ``represent``

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (FactorVAE needs a within-batch variance)")
        if min(self.num_train, self.num_test, self.num_batches, self.num_votes) < 1:
            raise ValueError("sample sizes must be positive")

    @classmethod
    def fast(cls) -> DisentanglementSettings:
        """Small samples for smoke tests and CI (seconds on a laptop CPU)."""
        return cls(
            num_train=1_000,
            num_test=500,
            batch_size=32,
            num_batches=300,
            num_eval_batches=150,
            num_votes=300,
            num_eval_votes=150,
            num_variance_estimate=1_000,
            dci_model="gradient_boosting",
            dci_n_estimators=20,
        )


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _sk_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _as_2d(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.reshape(len(x), -1)


def _is_discrete(latents: np.ndarray, discrete: bool | None) -> bool:
    if discrete is not None:
        return discrete
    return bool(np.issubdtype(latents.dtype, np.integer) or latents.dtype == np.bool_)


def _varying(factors: np.ndarray) -> np.ndarray:
    """Indices of the factor columns that take more than one value."""
    return np.array(
        [k for k in range(factors.shape[1]) if np.unique(factors[:, k]).size > 1], dtype=int
    )


def _codes(latents: np.ndarray) -> np.ndarray:
    """Relabel each discrete dim to ``0..V-1`` (labels only, the order means nothing)."""
    out = np.empty(latents.shape, dtype=np.int64)
    for j in range(latents.shape[1]):
        out[:, j] = np.unique(latents[:, j], return_inverse=True)[1].reshape(-1)
    return out


def _gap_top_two(scores: np.ndarray) -> np.ndarray:
    """Per column, best minus second best (second is 0 when there is a single row)."""
    if scores.shape[0] == 1:
        return scores[0]
    ordered = np.sort(scores, axis=0)
    return ordered[-1] - ordered[-2]


def _one_hot(
    train: np.ndarray, test: np.ndarray
) -> tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray]:
    """One-hot codes of train/test plus the block size of each original dim."""
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=True)
    x_train = encoder.fit_transform(train).tocsr()
    x_test = encoder.transform(test).tocsr()
    blocks = np.array([len(c) for c in encoder.categories_])
    return x_train, x_test, blocks


def sample_factors(sizes: Sequence[int], n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Uniform i.i.d. factor values ``(n, K)``: the observational distribution on the grid."""
    rng = _rng(seed)
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"every factor needs at least one value, got sizes={list(sizes)}")
    return np.stack([rng.integers(0, int(s), size=n) for s in sizes], axis=1).astype(np.int64)


def represent_factors(represent: Represent, factors: np.ndarray, chunk: int = 4_096) -> np.ndarray:
    """Apply ``represent`` in chunks (bounded memory) and return ``(N, d)`` as numpy."""
    parts = []
    for start in range(0, len(factors), max(1, chunk)):
        batch = torch.as_tensor(factors[start : start + chunk], dtype=torch.long)
        with torch.no_grad():
            parts.append(_as_2d(represent(batch)))
    return np.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------- MIG


def discretize(latents: np.ndarray, bins: int = 20) -> np.ndarray:
    """Equal-width histogram bins per dim (as in MIG); constant dims map to bin 0."""
    latents = _as_2d(latents).astype(np.float64)
    out = np.zeros(latents.shape, dtype=np.int64)
    live = np.ptp(latents, axis=0) > 0
    if live.any():
        binner = KBinsDiscretizer(n_bins=bins, encode="ordinal", strategy="uniform")
        out[:, live] = binner.fit_transform(latents[:, live]).astype(np.int64)
    return out


def mutual_information_matrix(
    latents: np.ndarray, factors: np.ndarray, bins: int = 20, discrete: bool | None = None
) -> np.ndarray:
    """``(d, K)`` mutual information (nats) between each (binned) latent dim and factor."""
    latents, factors = _as_2d(latents), _as_2d(factors)
    codes = latents if _is_discrete(latents, discrete) else discretize(latents, bins)
    mi = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for k in range(factors.shape[1]):
            mi[i, k] = mutual_info_score(factors[:, k], codes[:, i])
    return mi


def mig(
    latents: np.ndarray, factors: np.ndarray, bins: int = 20, discrete: bool | None = None
) -> float:
    """Mutual information gap: per factor, (top MI - second MI) / H(factor), averaged.

    High only when each factor is captured by exactly one latent dim (axis alignment).
    """
    latents, factors = _as_2d(latents), _as_2d(factors)
    keep = _varying(factors)
    if keep.size == 0:
        return 0.0
    factors = factors[:, keep]
    mi = mutual_information_matrix(latents, factors, bins, discrete)
    ent = np.array([mutual_info_score(f, f) for f in factors.T])
    return float(np.mean(_gap_top_two(mi) / ent))


# ----------------------------------------------------------------------------- SAP


def sap(
    latents_train: np.ndarray,
    factors_train: np.ndarray,
    latents_test: np.ndarray,
    factors_test: np.ndarray,
    continuous_factors: bool = False,
) -> float:
    """SAP as disentanglement_lib defines it: per factor, the gap between the two most
    predictive single latent dims, averaged over factors.

    Score of (dim, factor) = held-out plain accuracy of ``LinearSVC(C=0.01,
    class_weight="balanced")`` on that one dim, or, for ``continuous_factors``, the squared
    correlation of dim and factor. Factors that take one value are skipped (no information).
    """
    x_train, y_train = _as_2d(latents_train).astype(float), _as_2d(factors_train)
    x_test, y_test = _as_2d(latents_test).astype(float), _as_2d(factors_test)
    keep = _varying(y_train)
    if keep.size == 0:
        return 0.0
    scores = np.zeros((x_train.shape[1], keep.size))
    for col, k in enumerate(keep):
        for i in range(x_train.shape[1]):
            if continuous_factors:
                cov = np.cov(x_train[:, i], y_train[:, k], ddof=1)
                if cov[0, 0] > 1e-12:
                    scores[i, col] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
                continue
            clf = LinearSVC(C=0.01, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # liblinear's convergence notes
                clf.fit(x_train[:, i : i + 1], y_train[:, k])
            scores[i, col] = float(np.mean(clf.predict(x_test[:, i : i + 1]) == y_test[:, k]))
    return float(np.mean(_gap_top_two(scores)))


def sap_balanced(
    latents_train: np.ndarray,
    factors_train: np.ndarray,
    latents_test: np.ndarray,
    factors_test: np.ndarray,
    discrete: bool | None = None,
    continuous_factors: bool = False,
    seed: int | np.random.Generator = 0,
) -> float:
    """SAP with single-dim classifiers that can use every value of a dim (not the standard:
    compare published numbers with :func:`sap`).

    Score of (dim, factor) = held-out balanced accuracy of a classifier on that one dim
    (a class-balanced decision tree, i.e. thresholds on the dim: a one-vs-rest linear model
    cannot carve out the middle values of a 1-D latent; categorical naive Bayes for codes),
    or held-out R^2 of a linear regression when ``continuous_factors``.
    """
    rng = _rng(seed)
    x_train, y_train = _as_2d(latents_train), _as_2d(factors_train)
    x_test, y_test = _as_2d(latents_test), _as_2d(factors_test)
    is_discrete = _is_discrete(x_train, discrete)
    keep = _varying(y_train)
    if keep.size == 0:
        return 0.0
    if is_discrete:
        joint = _codes(np.concatenate([x_train, x_test]))
        x_train, x_test = joint[: len(x_train)], joint[len(x_train) :]
    scores = np.zeros((x_train.shape[1], keep.size))
    for col, k in enumerate(keep):
        num_values = np.unique(y_train[:, k]).size
        for i in range(x_train.shape[1]):
            a_train, a_test = x_train[:, i : i + 1], x_test[:, i : i + 1]
            if continuous_factors:
                reg = LinearRegression().fit(a_train, y_train[:, k])
                scores[i, col] = max(0.0, r2_score(y_test[:, k], reg.predict(a_test)))
                continue
            if is_discrete:
                n_cat = int(max(a_train.max(), a_test.max())) + 1
                clf = CategoricalNB(fit_prior=False, min_categories=n_cat)
            else:
                clf = DecisionTreeClassifier(
                    class_weight="balanced",
                    max_leaf_nodes=2 * num_values,
                    random_state=_sk_seed(rng),
                )
            clf.fit(a_train, y_train[:, k])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class absent from the test split
                scores[i, col] = balanced_accuracy_score(y_test[:, k], clf.predict(a_test))
    return float(np.mean(_gap_top_two(scores)))


# ----------------------------------------------------------------------------- DCI


def _tree_model(name: DciModel, n_estimators: int, seed: int) -> ClassifierMixin:
    if name == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
    # every split sees every dim: a random feature subset would push importance onto
    # irrelevant dims by construction and bias disentanglement down
    forest = {"max_features": None, "min_samples_leaf": 5, "n_jobs": 1}
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=n_estimators, **forest, random_state=seed)
    if name == "extra_trees":
        return ExtraTreesClassifier(n_estimators=n_estimators, **forest, random_state=seed)
    raise ValueError(f"unknown DCI model {name!r}")


def dci_importance(
    latents_train: np.ndarray,
    factors_train: np.ndarray,
    latents_test: np.ndarray,
    factors_test: np.ndarray,
    model: DciModel = "gradient_boosting",
    n_estimators: int = 100,
    discrete: bool | None = None,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, float]:
    """Importance matrix ``(d, K')`` and mean held-out accuracy, one tree model per factor.

    ``K'`` counts only the factors that vary in the training data (the others are skipped).
    Discrete codes are one-hot encoded and each dim's block importances are summed.
    """
    rng = _rng(seed)
    x_train, y_train = _as_2d(latents_train), _as_2d(factors_train)
    x_test, y_test = _as_2d(latents_test), _as_2d(factors_test)
    d = x_train.shape[1]
    keep = _varying(y_train)
    if _is_discrete(x_train, discrete):
        f_train, f_test, blocks = _one_hot(x_train, x_test)
    else:
        f_train, f_test, blocks = x_train, x_test, np.ones(d, dtype=int)
    offsets = np.concatenate([[0], np.cumsum(blocks)[:-1]])
    importance = np.zeros((d, keep.size))
    accuracy = []
    for col, k in enumerate(keep):
        clf = _tree_model(model, n_estimators, _sk_seed(rng)).fit(f_train, y_train[:, k])
        importance[:, col] = np.add.reduceat(np.abs(clf.feature_importances_), offsets)
        accuracy.append(float(np.mean(clf.predict(f_test) == y_test[:, k])))
    importance = np.nan_to_num(importance)  # a tree with no split has undefined importances
    return importance, float(np.mean(accuracy)) if accuracy else 0.0


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix ``R`` of shape ``(d, K)``.

    Disentanglement: ``sum_i rho_i (1 - H_K(P_i.))`` with ``P_ij = R_ij / sum_k R_ik`` and
    ``rho_i`` the share of code ``i`` in the total importance. Completeness:
    ``sum_j rho_j (1 - H_d(P~_.j))`` with ``P~_ij = R_ij / sum_i R_ij``. Entropies use the
    number of factors / codes as log base (``H`` in [0, 1]); a single factor (code) makes
    every code (factor) trivially disentangled (complete).
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))
    d, k = r.shape
    total = r.sum()
    if d == 0 or k == 0 or total == 0:
        return 0.0, 0.0  # no code explains any factor
    code_w = r.sum(axis=1) / total
    factor_w = r.sum(axis=0) / total
    per_code = 1.0 - entropy(r.T + 1e-11, base=k) if k > 1 else np.ones(d)
    per_factor = 1.0 - entropy(r + 1e-11, base=d) if d > 1 else np.ones(k)
    return float(np.sum(per_code * code_w)), float(np.sum(per_factor * factor_w))


def dci(
    latents_train: np.ndarray,
    factors_train: np.ndarray,
    latents_test: np.ndarray,
    factors_test: np.ndarray,
    model: DciModel = "gradient_boosting",
    n_estimators: int = 100,
    discrete: bool | None = None,
    seed: int | np.random.Generator = 0,
) -> dict[str, float]:
    """DCI: disentanglement, completeness, informativeness (held-out accuracy)."""
    importance, accuracy = dci_importance(
        latents_train,
        factors_train,
        latents_test,
        factors_test,
        model,
        n_estimators,
        discrete,
        seed,
    )
    dis, comp = dci_from_importance(importance)
    return {"disentanglement": dis, "completeness": comp, "informativeness": accuracy}


# ----------------------------------------------------------------------------- modularity


def modularity_from_mi(mi: np.ndarray) -> float:
    """Ridgeway & Mozer modularity of a ``(d, K)`` MI matrix, averaged over codes.

    Per code: ``1 - sum_{j != j*} m_j^2 / ((K - 1) m_{j*}^2)`` (deviation from the ideal
    template that keeps only the best factor); codes with no information score 0.
    """
    sq = np.square(np.asarray(mi, dtype=np.float64))
    if sq.size == 0:
        return 0.0
    top = sq.max(axis=1)
    if sq.shape[1] == 1:
        return float(np.mean(top > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1))
    score = np.where(top > 0, 1.0 - delta, 0.0)
    return float(np.mean(score))


def modularity(
    latents: np.ndarray, factors: np.ndarray, bins: int = 20, discrete: bool | None = None
) -> float:
    """Modularity: does each latent dim depend on at most one factor (from binned MI)."""
    factors = _as_2d(factors)
    keep = _varying(factors)
    if keep.size == 0:
        return 0.0
    return modularity_from_mi(mutual_information_matrix(latents, factors[:, keep], bins, discrete))


def explicitness(
    latents_train: np.ndarray,
    factors_train: np.ndarray,
    latents_test: np.ndarray,
    factors_test: np.ndarray,
    discrete: bool | None = None,
) -> float:
    """Explicitness: held-out one-vs-rest ROC-AUC of a logistic regression, per factor.

    Averaged over each factor's values (macro) and then over factors. Continuous latents are
    standardised on the training split; discrete codes are one-hot encoded.
    """
    x_train, y_train = _as_2d(latents_train), _as_2d(factors_train)
    x_test, y_test = _as_2d(latents_test), _as_2d(factors_test)
    if _is_discrete(x_train, discrete):
        x_train, x_test, _ = _one_hot(x_train, x_test)
    else:
        scaler = StandardScaler().fit(x_train.astype(np.float64))
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    aucs = []
    for k in _varying(y_train):
        clf = LogisticRegression(max_iter=1_000).fit(x_train, y_train[:, k])
        proba = clf.predict_proba(x_test)
        truth = y_test[:, k, None] == clf.classes_[None, :]
        valid = truth.any(axis=0) & ~truth.all(axis=0)  # AUC needs positives and negatives
        if valid.any():
            aucs.append(roc_auc_score(truth[:, valid], proba[:, valid], average="macro"))
    return float(np.mean(aucs)) if aucs else 0.0


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
            is_discrete = _is_discrete(z1.reshape(-1, z1.shape[-1]), None)
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
    rng = _rng(seed)
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
    rng = _rng(seed)
    choices = np.flatnonzero(np.asarray(sizes) > 1)
    if choices.size == 0:
        return 0.0
    z = represent_factors(
        represent,
        sample_factors(sizes, settings.num_variance_estimate, rng),
        settings.represent_chunk,
    )
    is_discrete = _is_discrete(z, discrete)
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


# ----------------------------------------------------------------------------- all


def disentanglement_scores(
    represent: Represent,
    sizes: Sequence[int],
    settings: DisentanglementSettings | None = None,
    seed: int | np.random.Generator = 0,
    discrete: bool | None = None,
) -> dict[str, float]:
    """Every score for one representation, from uniform samples of the factor grid.

    ``discrete=None`` detects code indices from an integer output dtype.
    """
    settings = settings or DisentanglementSettings()
    rng = _rng(seed)
    f_train = sample_factors(sizes, settings.num_train, rng)
    f_test = sample_factors(sizes, settings.num_test, rng)
    z_train = represent_factors(represent, f_train, settings.represent_chunk)
    z_test = represent_factors(represent, f_test, settings.represent_chunk)
    is_discrete = _is_discrete(z_train, discrete)
    dci_scores = dci(
        z_train,
        f_train,
        z_test,
        f_test,
        settings.dci_model,
        settings.dci_n_estimators,
        is_discrete,
        rng,
    )
    return {
        "beta_vae": beta_vae_score(represent, sizes, settings, rng, is_discrete),
        "factor_vae": factor_vae_score(represent, sizes, settings, rng, is_discrete),
        "mig": mig(z_train, f_train, settings.bins, is_discrete),
        "sap": sap(z_train, f_train, z_test, f_test),
        "sap_balanced": sap_balanced(z_train, f_train, z_test, f_test, is_discrete, seed=rng),
        "dci_disentanglement": dci_scores["disentanglement"],
        "dci_completeness": dci_scores["completeness"],
        "dci_informativeness": dci_scores["informativeness"],
        "modularity": modularity(z_train, f_train, settings.bins, is_discrete),
        "explicitness": explicitness(z_train, f_train, z_test, f_test, is_discrete),
    }

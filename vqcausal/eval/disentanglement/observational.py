"""Scores of one observational sample (uniform over the factor grid): MIG, SAP, DCI,
modularity and explicitness."""

from __future__ import annotations

import warnings

import numpy as np
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
from sklearn.preprocessing import KBinsDiscretizer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from vqcausal.eval.disentanglement.common import (
    DciModel,
    as_2d,
    as_rng,
    gap_top_two,
    one_hot_blocks,
    relabel_codes,
    sklearn_seed,
    treat_as_discrete,
    varying_factors,
)

# ----------------------------------------------------------------------------- MIG


def discretize(latents: np.ndarray, bins: int = 20) -> np.ndarray:
    """Equal-width histogram bins per dim (as in MIG); constant dims map to bin 0."""
    latents = as_2d(latents).astype(np.float64)
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
    latents, factors = as_2d(latents), as_2d(factors)
    codes = latents if treat_as_discrete(latents, discrete) else discretize(latents, bins)
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
    latents, factors = as_2d(latents), as_2d(factors)
    keep = varying_factors(factors)
    if keep.size == 0:
        return 0.0
    factors = factors[:, keep]
    mi = mutual_information_matrix(latents, factors, bins, discrete)
    ent = np.array([mutual_info_score(f, f) for f in factors.T])
    return float(np.mean(gap_top_two(mi) / ent))


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
    x_train, y_train = as_2d(latents_train).astype(float), as_2d(factors_train)
    x_test, y_test = as_2d(latents_test).astype(float), as_2d(factors_test)
    keep = varying_factors(y_train)
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
    return float(np.mean(gap_top_two(scores)))


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
    rng = as_rng(seed)
    x_train, y_train = as_2d(latents_train), as_2d(factors_train)
    x_test, y_test = as_2d(latents_test), as_2d(factors_test)
    is_discrete = treat_as_discrete(x_train, discrete)
    keep = varying_factors(y_train)
    if keep.size == 0:
        return 0.0
    if is_discrete:
        joint = relabel_codes(np.concatenate([x_train, x_test]))
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
                    random_state=sklearn_seed(rng),
                )
            clf.fit(a_train, y_train[:, k])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class absent from the test split
                scores[i, col] = balanced_accuracy_score(y_test[:, k], clf.predict(a_test))
    return float(np.mean(gap_top_two(scores)))


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
    rng = as_rng(seed)
    x_train, y_train = as_2d(latents_train), as_2d(factors_train)
    x_test, y_test = as_2d(latents_test), as_2d(factors_test)
    d = x_train.shape[1]
    keep = varying_factors(y_train)
    if treat_as_discrete(x_train, discrete):
        f_train, f_test, blocks = one_hot_blocks(x_train, x_test)
    else:
        f_train, f_test, blocks = x_train, x_test, np.ones(d, dtype=int)
    offsets = np.concatenate([[0], np.cumsum(blocks)[:-1]])
    importance = np.zeros((d, keep.size))
    accuracy = []
    for col, k in enumerate(keep):
        clf = _tree_model(model, n_estimators, sklearn_seed(rng)).fit(f_train, y_train[:, k])
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
    factors = as_2d(factors)
    keep = varying_factors(factors)
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
    x_train, y_train = as_2d(latents_train), as_2d(factors_train)
    x_test, y_test = as_2d(latents_test), as_2d(factors_test)
    if treat_as_discrete(x_train, discrete):
        x_train, x_test, _ = one_hot_blocks(x_train, x_test)
    else:
        scaler = StandardScaler().fit(x_train.astype(np.float64))
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    aucs = []
    for k in varying_factors(y_train):
        clf = LogisticRegression(max_iter=1_000).fit(x_train, y_train[:, k])
        proba = clf.predict_proba(x_test)
        truth = y_test[:, k, None] == clf.classes_[None, :]
        valid = truth.any(axis=0) & ~truth.all(axis=0)  # AUC needs positives and negatives
        if valid.any():
            aucs.append(roc_auc_score(truth[:, valid], proba[:, valid], average="macro"))
    return float(np.mean(aucs)) if aucs else 0.0

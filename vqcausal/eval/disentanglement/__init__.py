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

Layout: :mod:`.common` (settings, sampling, helpers), :mod:`.observational` (MIG, SAP,
DCI, modularity, explicitness), :mod:`.fixed_factor` (beta-VAE, FactorVAE); this module
runs them all (:func:`disentanglement_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vqcausal.eval.disentanglement.common import (
    DisentanglementSettings,
    Represent,
    as_rng,
    represent_factors,
    sample_factors,
    treat_as_discrete,
)
from vqcausal.eval.disentanglement.fixed_factor import beta_vae_score, factor_vae_score
from vqcausal.eval.disentanglement.observational import (
    dci,
    dci_from_importance,
    dci_importance,
    discretize,
    explicitness,
    mig,
    modularity,
    modularity_from_mi,
    mutual_information_matrix,
    sap,
    sap_balanced,
)

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
    rng = as_rng(seed)
    f_train = sample_factors(sizes, settings.num_train, rng)
    f_test = sample_factors(sizes, settings.num_test, rng)
    z_train = represent_factors(represent, f_train, settings.represent_chunk)
    z_test = represent_factors(represent, f_test, settings.represent_chunk)
    is_discrete = treat_as_discrete(z_train, discrete)
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

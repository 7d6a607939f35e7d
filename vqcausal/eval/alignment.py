"""Post-hoc alignment of a latent with concepts, for latents without one block per concept.

MIC/TIC compare concept ``i`` with latent block ``i``; a beta-VAE, a Ladder VAE or a grid of VQ
codes has no such correspondence, so each concept is scored against the latent dim that
matches it best (:func:`align_latents`). Choosing that dim on a separate sample keeps the
reported MIC from being the maximum of several noisy estimates on the same points.
"""

from __future__ import annotations

import numpy as np

MIC_CANDIDATES = 8  # latent dims per concept pre-selected by correlation ratio for alignment


def _groups(column: np.ndarray, discrete: bool, bins: int = 20) -> np.ndarray:
    """Group labels of one latent dim: its codes, or equal-frequency bins of its values."""
    if discrete:
        return np.unique(column, return_inverse=True)[1].reshape(-1)
    ranks = np.argsort(np.argsort(column, kind="stable"), kind="stable")
    return (ranks * bins) // max(len(column), 1)


def correlation_ratio(latents: np.ndarray, label: np.ndarray, discrete: bool) -> np.ndarray:
    """eta^2 per latent dim: the fraction of the label's variance explained by the dim's groups."""
    centred = label - label.mean()
    total = float((centred**2).sum())
    scores = np.zeros(latents.shape[1])
    if total <= 0:
        return scores
    for i in range(latents.shape[1]):
        groups = _groups(latents[:, i], discrete)
        counts = np.bincount(groups)
        sums = np.bincount(groups, weights=centred)
        used = counts > 0
        scores[i] = float((sums[used] ** 2 / counts[used]).sum()) / total
    return scores


class _CodeMeans:
    """A discrete dim relabelled by the mean label of each code (unseen codes: the mean)."""

    def __init__(self, codes: np.ndarray, label: np.ndarray) -> None:
        self.default = float(label.mean())
        keys, inverse = np.unique(codes, return_inverse=True)
        inverse = inverse.reshape(-1)
        means = np.bincount(inverse, weights=label) / np.bincount(inverse)
        self.table = dict(zip(keys.tolist(), means.tolist(), strict=True))

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return np.array([self.table.get(c, self.default) for c in codes.tolist()], dtype=float)


def align_latents(
    z_fit: np.ndarray,
    labels_fit: np.ndarray,
    z_eval: np.ndarray,
    discrete: bool,
    candidates: int = MIC_CANDIDATES,
) -> tuple[np.ndarray, list[int]]:
    """Post-hoc alignment for latents without one block per concept.

    For each concept, the ``candidates`` latent dims with the highest correlation ratio are
    scored by MIC on the *fit* sample and the best one is kept; the returned ``(N, L)`` array
    holds that dim on the *eval* sample, so the reported MIC is not the maximum of several
    noisy estimates on the same points (unless both samples are the same points, as when a
    grid has fewer images than the sample size). Code indices (vq) have no order, so a code dim is
    first relabelled by the mean concept value of each code (fitted on the fit sample; MIC is
    invariant to monotone relabelling, so continuous dims are used as they are).
    """
    from vqcausal.eval.mic import mic

    z_fit, z_eval = np.asarray(z_fit), np.asarray(z_eval)
    aligned = np.zeros((z_eval.shape[0], labels_fit.shape[1]))
    chosen = []
    for j in range(labels_fit.shape[1]):
        label = labels_fit[:, j].astype(float)
        ratio = correlation_ratio(z_fit, label, discrete)
        shortlist = np.argsort(-ratio, kind="stable")[:candidates]
        best, best_score, best_map = int(shortlist[0]), -1.0, None
        for i in shortlist.tolist():
            relabel = _CodeMeans(z_fit[:, i], label) if discrete else None
            column = relabel(z_fit[:, i]) if relabel else z_fit[:, i].astype(float)
            score = mic(column, label) if np.ptp(column) > 0 and np.ptp(label) > 0 else 0.0
            if score > best_score:
                best, best_score, best_map = i, score, relabel
        column = z_eval[:, best]
        aligned[:, j] = best_map(column) if best_map else column.astype(float)
        chosen.append(best)
    return aligned, chosen

"""MIC and TIC (Reshef et al. 2011), as CausalVAE reports them for each concept against its label.

The maintained ``minepy`` package does not install here, so this is a numpy port of its default
estimator ("mic_approx"): the characteristic matrix is filled by ApproxMaxMI, which equipartitions
one axis into ``y`` rows, merges the points into clumps (then at most ``c * x`` superclumps) along
the other axis and runs the dynamic programme OptimizeXAxis over those clumps; this is done with
either axis as the equipartitioned one and the larger score is kept. Grids are limited to
``x * y <= B(n) = max(n ** alpha, 4)``. The dynamic programme is vectorised over clump pairs, so
it costs ``O(x * p**2)`` numpy work per row count instead of Python loops.

``MIC`` is the largest entry of the characteristic matrix and ``TIC`` the sum of its entries
(``norm=True``: their mean, which lies in [0, 1] like MIC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["characteristic_matrix", "mic", "mic_per_concept", "tic"]


def _as_vector(values: Any, name: str) -> np.ndarray:
    """1-D float64 array from a tensor or array-like; rejects NaN/inf, which have no rank."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _xlogx(counts: np.ndarray) -> np.ndarray:
    """``c * log(c)`` with ``0 log 0 = 0``, elementwise."""
    out = np.zeros_like(counts, dtype=np.float64)
    positive = counts > 0
    out[positive] = counts[positive] * np.log(counts[positive])
    return out


def _equipartition(sorted_values: np.ndarray, bins: int) -> np.ndarray:
    """minepy's EquipartitionYAxis: bin labels for values sorted ascending, ties kept together.

    The greedy rule adds the next tie group to the current bin unless that moves the bin size
    further from the target ``rowsize`` than stopping, i.e. it closes the bin before a group of
    size ``s`` when ``h + s / 2 >= rowsize`` (``h`` = points already in the bin). Because the
    group midpoints increase, each bin boundary is found with one ``searchsorted``, so the loop
    runs once per bin rather than once per point.
    """
    n = len(sorted_values)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    sizes = np.diff(np.r_[starts, n])
    twice_mid = 2.0 * starts + sizes  # 2 * (start + s/2), exact in float64
    group_label = np.empty(len(starts), dtype=np.int64)
    g, start, curr = 0, 0, 0
    while g < len(starts):
        remaining_bins = bins - curr
        if remaining_bins <= 0:
            end = len(starts)
        else:
            rowsize = (n - start) / remaining_bins
            # first group (after the bin's first one) whose midpoint reaches rowsize
            end = int(np.searchsorted(twice_mid, 2.0 * (start + rowsize), side="left"))
            end = max(end, g + 1)
        group_label[g:end] = curr
        g = end
        if g < len(starts):
            curr += 1
            start = int(starts[g])
    return np.repeat(group_label, sizes)


def _superclumps(sorted_x: np.ndarray, rows: np.ndarray, max_clumps: int) -> np.ndarray:
    """minepy's GetSuperclumpsPartition for points sorted by x, with ``rows`` their y-bins.

    Clumps are maximal runs of consecutive points in the same row; a run of tied x values whose
    rows differ becomes one clump of its own (no grid line can separate tied points). If there
    are more than ``max_clumps`` clumps they are equipartitioned into ``max_clumps`` superclumps.
    """
    n = len(sorted_x)
    new_tie = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    tie_starts = np.flatnonzero(new_tie)
    mixed = np.minimum.reduceat(rows, tie_starts) != np.maximum.reduceat(rows, tie_starts)
    label = rows.astype(np.int64).copy()
    if mixed.any():
        tie_id = np.cumsum(new_tie) - 1
        in_mixed = mixed[tie_id]
        label[in_mixed] = -1 - tie_id[in_mixed]  # a distinct negative label per mixed tie run
    clumps = np.cumsum(np.r_[False, label[1:] != label[:-1]]) if n else np.zeros(0, np.int64)
    if n == 0 or clumps[-1] + 1 <= max_clumps:
        return clumps
    return _equipartition(clumps.astype(np.float64), max_clumps)


def _optimize_x_axis(rows: np.ndarray, q: int, cols: np.ndarray, p: int, x_max: int) -> np.ndarray:
    """minepy's ApproxOptimizeXAxis: normalised MI of the best x-partition into 2..x_max columns.

    ``rows`` (0..q-1) are the fixed y-bins and ``cols`` (0..p-1, non-decreasing) the clumps of
    the points sorted by x; columns may only be cut at clump boundaries. ``IM[t, l]`` is the best
    (approximate) mutual information using the first ``t`` clumps in ``l`` columns; following
    minepy, ``H(Q)`` is always that of all points. Returns ``I[x - 2] = IM[p, x] / log(min(x, q))``.
    """
    if p <= 1 or q <= 1:
        return np.zeros(x_max - 1)
    n = len(rows)
    hist = np.zeros((q, p + 1), dtype=np.float64)  # column 0: "no clumps", all zero
    np.add.at(hist, (rows, cols + 1), 1.0)
    cum = np.cumsum(hist, axis=1)  # cum[i, t] = points of row i in the first t clumps
    c = cum.sum(axis=0)  # c[t] = points in the first t clumps (c[0] = 0)
    hq = -float(np.sum(_xlogx(cum[:, p] / n)))

    # E[s, t] = sum_i D log D with D = cum[i, t] - cum[i, s]: the only O(q p^2) quantity.
    e = np.zeros((p + 1, p + 1))
    for row in cum:
        e += _xlogx(np.maximum(row[None, :] - row[:, None], 0.0))
    cs, ct = c[:, None], c[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = cs / ct  # c_s / c_t
        hp3 = -(_xlogx(ratio) + _xlogx(1.0 - ratio))  # H(<c_0, c_s, c_t>)
        hpq3 = -(e[0][:, None] + e - _xlogx(ct)) / ct  # H(<c_0, c_s, c_t>, Q)
        total = ct - cs
        hpq2 = np.log(total) - e / total  # H(<c_s, c_t>, Q)
        # weight of the last column's conditional entropy; s == t contributes nothing
        penalty = (1.0 - ratio) * hpq2

    s_idx = np.arange(p + 1)[:, None]
    t_idx = np.arange(p + 1)[None, :]
    valid = (s_idx >= 1) & (s_idx <= t_idx)

    im = np.full((x_max + 1, p + 1), -np.inf)  # im[l, t] = IM[t][l]
    with np.errstate(invalid="ignore"):
        f2 = np.where(valid, hp3 - hpq3, -np.inf)
    im[2, 2:] = hq + f2[:, 2:].max(axis=0)

    penalty = np.where(s_idx < t_idx, penalty, 0.0)
    penalty[~valid] = np.inf
    for l in range(3, min(x_max, p) + 1):
        prev = im[l - 1].copy()
        prev[: l - 1] = -np.inf  # IM[s][l-1] only exists for s >= l-1
        lo = l - 1
        f = ratio[lo:, l:] * (prev[lo:, None] - hq) - penalty[lo:, l:]
        im[l, l:] = hq + f.max(axis=0)

    scores = im[2:, p].copy()
    if x_max > p:  # more columns than clumps cannot help: reuse the p-column optimum
        scores[p - 1 :] = im[p, p]
    xs = np.arange(2, x_max + 1)
    # MI <= log(min(x, q)) exactly; clip the last-ulp excess so a perfect relation gives 1.0
    return np.minimum(scores / np.log(np.minimum(xs, q)), 1.0)


def _grid_bound(n: int, alpha: float) -> float:
    """``B(n) = max(n ** alpha, 4)``; an ``alpha >= 4`` is taken as B itself (capped at n)."""
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if alpha >= 4:
        return float(min(alpha, n))
    return max(n**alpha, 4.0)


def characteristic_matrix(x: Any, y: Any, alpha: float = 0.6, c: float = 15) -> np.ndarray:
    """Approximate characteristic matrix of ``(x, y)``, as minepy's default estimator.

    Entry ``M[i, j]`` is the normalised mutual information of the best grid with ``i + 2``
    columns (bins of ``x``) and ``j + 2`` rows (bins of ``y``); cells with
    ``(i + 2) * (j + 2) > B(n) = n ** alpha`` lie outside the searched domain and are NaN.
    ``c`` bounds the clumps to ``c`` times the number of columns, trading speed for accuracy.
    A constant ``x`` or ``y`` gives an all-zero matrix (no grid carries information).
    """
    xv, yv = _as_vector(x, "x"), _as_vector(y, "y")
    if len(xv) != len(yv):
        raise ValueError(f"x and y differ in length: {len(xv)} vs {len(yv)}")
    n = len(xv)
    if n < 2:
        raise ValueError("MIC needs at least 2 points")
    bound = _grid_bound(n, alpha)
    size = max(int(math.floor(bound / 2)), 2) - 1  # bins 2 .. floor(B/2) on either axis
    matrix = np.full((size, size), np.nan)
    for fixed, free, transpose in ((yv, xv, False), (xv, yv, True)):
        order_fixed = np.argsort(fixed, kind="stable")
        order_free = np.argsort(free, kind="stable")
        sorted_free = free[order_free]
        rank_bins = np.empty(n, dtype=np.int64)
        for i in range(size):
            bins = i + 2
            x_max = int(math.floor(bound / bins))
            k_hat = max(int(c * x_max), 1)
            rank_bins[order_fixed] = _equipartition(fixed[order_fixed], bins)
            rows = rank_bins[order_free]
            q = int(rows.max()) + 1
            cols = _superclumps(sorted_free, rows, k_hat)
            p = int(cols[-1]) + 1
            scores = _optimize_x_axis(rows, q, cols, p, x_max)
            # scores[j]: free axis in j + 2 bins, fixed axis in `bins` bins
            if transpose:  # fixed = x (columns), free = y (rows)
                current = matrix[i, : x_max - 1]
                matrix[i, : x_max - 1] = np.fmax(current, scores)
            else:  # fixed = y (rows), free = x (columns)
                current = matrix[: x_max - 1, i]
                matrix[: x_max - 1, i] = np.fmax(current, scores)
    return matrix


def mic(x: Any, y: Any, alpha: float = 0.6, c: float = 15) -> float:
    """Maximal information coefficient: the largest characteristic-matrix entry, in [0, 1]."""
    return float(np.nanmax(characteristic_matrix(x, y, alpha=alpha, c=c)))


def tic(x: Any, y: Any, alpha: float = 0.6, c: float = 15, norm: bool = False) -> float:
    """Total information coefficient: sum of the characteristic matrix (``norm``: its mean).

    TIC rewards signal anywhere in the grid, so it has more power than MIC against independence;
    the normalised form is comparable across sample sizes.
    """
    matrix = characteristic_matrix(x, y, alpha=alpha, c=c)
    values = matrix[~np.isnan(matrix)]
    return float(values.mean() if norm else values.sum())


def _mic_tic(
    x: np.ndarray, y: np.ndarray, alpha: float, c: float, norm: bool
) -> tuple[float, float]:
    matrix = characteristic_matrix(x, y, alpha=alpha, c=c)
    values = matrix[~np.isnan(matrix)]
    return float(values.max()), float(values.mean() if norm else values.sum())


def mic_per_concept(
    latents: Any,
    labels: Any,
    alpha: float = 0.6,
    c: float = 15,
    tic_norm: bool = True,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MIC and TIC of each concept's latent against its ground-truth label (CausalVAE style).

    ``latents`` is ``(N, n)`` (one scalar per concept) or ``(N, n, k)`` (a k-dim block per
    concept); a block is reduced to its mean over the ``k`` dims, so MIC measures how well that
    one summary tracks the label. ``labels`` is ``(N, n)``. TIC is normalised by default
    (``tic_norm``) so both numbers lie in [0, 1], as in CausalVAE's tables. Returns JSON-safe
    ``{"mic": [...], "tic": [...], "mic_mean": .., "tic_mean": .., "names": [...]}``.
    """
    z = torch.as_tensor(latents).detach().cpu().double()
    u = torch.as_tensor(labels).detach().cpu().double()
    if z.ndim == 3:
        z = z.mean(dim=-1)
    if z.ndim != 2 or u.ndim != 2 or z.shape != u.shape:
        raise ValueError(
            f"expected latents (N, n) or (N, n, k) and labels (N, n); got "
            f"{tuple(torch.as_tensor(latents).shape)} and {tuple(u.shape)}"
        )
    concepts = z.shape[1]
    if names is None:
        names = [str(j) for j in range(concepts)]
    if len(names) != concepts:
        raise ValueError(f"{len(names)} names for {concepts} concepts")
    mics, tics = [], []
    for j in range(concepts):
        m, t = _mic_tic(z[:, j].numpy(), u[:, j].numpy(), alpha, c, tic_norm)
        mics.append(m)
        tics.append(t)
    return {
        "names": list(names),
        "mic": mics,
        "tic": tics,
        "mic_mean": float(np.mean(mics)),
        "tic_mean": float(np.mean(tics)),
    }

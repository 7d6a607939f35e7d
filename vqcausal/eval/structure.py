"""Graph metrics: compare a learned causal graph with the true one.

Adjacency convention throughout: ``A[i, j] = 1`` means an edge ``i -> j``. Any nonzero entry
counts as an edge, and the diagonal (self-loops) is ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["edge_counts", "shd", "threshold_graph"]


def _adjacency(graph: Any, name: str) -> torch.Tensor:
    """Boolean square adjacency with a cleared diagonal, from a tensor or an array."""
    if isinstance(graph, np.ndarray):
        graph = torch.from_numpy(graph)
    adj = torch.as_tensor(graph).detach().cpu()
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"{name} must be a square adjacency matrix, got shape {tuple(adj.shape)}")
    adj = adj != 0
    adj.fill_diagonal_(False)
    return adj


def _pair(learned: Any, true: Any) -> tuple[torch.Tensor, torch.Tensor]:
    l_adj, t_adj = _adjacency(learned, "learned"), _adjacency(true, "true")
    if l_adj.shape != t_adj.shape:
        raise ValueError(f"graphs differ in size: {tuple(l_adj.shape)} vs {tuple(t_adj.shape)}")
    return l_adj, t_adj


def shd(learned: Any, true: Any) -> int:
    """Structural Hamming distance: node pairs whose edge status differs.

    Each unordered pair ``{i, j}`` costs at most one: a missing edge, an extra edge and a
    reversed edge are one error each (the usual convention, e.g. CDT's SHD with
    ``double_for_anticausal=False``), so a reversal is not punished twice as a deletion plus an
    insertion. For graphs without 2-cycles this equals ``reversed + missing + extra`` of
    :func:`edge_counts`.
    """
    l_adj, t_adj = _pair(learned, true)
    differs = l_adj != t_adj
    differs = differs | differs.T  # a pair is wrong if either direction disagrees
    return int(differs.triu(diagonal=1).sum())


def edge_counts(learned: Any, true: Any) -> dict[str, int]:
    """Break the learned-vs-true differences down by kind, to see *how* a graph is wrong.

    - ``true_positive``: true edges learned with the right direction;
    - ``reversed``: true edges learned only in the opposite direction;
    - ``missing``: true edges absent in both directions;
    - ``extra``: learned edges that are neither true nor the reversal of a true edge
      (including the second direction of a learned 2-cycle).

    Learned edges = true_positive + reversed + extra; true edges = true_positive + reversed +
    missing.
    """
    l_adj, t_adj = _pair(learned, true)
    reversed_ = t_adj & ~l_adj & l_adj.T  # counted on the true edge i -> j
    reversed_learned = reversed_.T  # the same errors, seen as learned edges j -> i
    return {
        "true_positive": int((l_adj & t_adj).sum()),
        "reversed": int(reversed_.sum()),
        "missing": int((t_adj & ~l_adj & ~l_adj.T).sum()),
        "extra": int((l_adj & ~t_adj & ~reversed_learned).sum()),
    }


def threshold_graph(weights: Any, threshold: float) -> torch.LongTensor:
    """0/1 adjacency of the entries with ``|w| > threshold`` (diagonal cleared).

    Learned SCMs give real-valued weights; SHD needs a discrete graph, and the magnitude (not
    the sign) says whether a parent is used.
    """
    if isinstance(weights, np.ndarray):
        weights = torch.from_numpy(weights)
    w = torch.as_tensor(weights).detach().cpu()
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weights must be a square matrix, got shape {tuple(w.shape)}")
    adj = (w.abs() > threshold).long()
    adj.fill_diagonal_(0)
    return adj

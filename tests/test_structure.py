"""SHD and edge breakdowns on small hand-worked graphs ([i, j] = 1 means i -> j)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqcausal.eval.structure import edge_counts, shd, threshold_graph


def pendulum() -> torch.Tensor:
    """{pendulum angle 0, light 1} -> {shadow length 2, shadow position 3}."""
    adj = torch.zeros(4, 4, dtype=torch.long)
    adj[0, 2] = adj[0, 3] = adj[1, 2] = adj[1, 3] = 1
    return adj


def test_identical_graphs() -> None:
    g = pendulum()
    assert shd(g, g) == 0
    assert edge_counts(g, g) == {"true_positive": 4, "reversed": 0, "missing": 0, "extra": 0}


def test_one_reversed_edge_is_one_error() -> None:
    learned = pendulum()
    learned[0, 2], learned[2, 0] = 0, 1
    assert shd(learned, pendulum()) == 1
    assert edge_counts(learned, pendulum()) == {
        "true_positive": 3,
        "reversed": 1,
        "missing": 0,
        "extra": 0,
    }


def test_one_missing_and_one_extra_edge() -> None:
    missing = pendulum()
    missing[1, 3] = 0
    assert shd(missing, pendulum()) == 1
    assert edge_counts(missing, pendulum())["missing"] == 1

    extra = pendulum()
    extra[2, 3] = 1
    assert shd(extra, pendulum()) == 1
    counts = edge_counts(extra, pendulum())
    assert counts["extra"] == 1 and counts["true_positive"] == 4


def test_empty_and_fully_reversed_pendulum() -> None:
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert shd(empty, pendulum()) == 4
    assert edge_counts(empty, pendulum())["missing"] == 4

    reversed_ = pendulum().T.contiguous()
    assert shd(reversed_, pendulum()) == 4
    assert edge_counts(reversed_, pendulum()) == {
        "true_positive": 0,
        "reversed": 4,
        "missing": 0,
        "extra": 0,
    }


def test_two_cycle_and_diagonal() -> None:
    both = pendulum()
    both[2, 0] = 1  # 0 <-> 2 where the truth is 0 -> 2: one wrong pair
    assert shd(both, pendulum()) == 1
    assert edge_counts(both, pendulum())["extra"] == 1

    loops = pendulum() + torch.eye(4, dtype=torch.long)
    assert shd(loops, pendulum()) == 0  # self-loops are ignored


def test_numpy_inputs_and_symmetry() -> None:
    learned = pendulum().numpy().copy()
    learned[1, 3] = 0
    learned[3, 2] = 1
    assert shd(learned, pendulum().numpy()) == 2
    assert shd(pendulum(), torch.from_numpy(learned)) == 2


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        shd(torch.zeros(3, 3), torch.zeros(4, 4))
    with pytest.raises(ValueError):
        shd(torch.zeros(3, 4), torch.zeros(3, 4))


def test_threshold_graph() -> None:
    weights = np.array([[0.9, 0.2, -0.7], [0.05, 0.0, 0.31], [0.3, -0.29, 1.0]])
    adj = threshold_graph(weights, 0.3)
    assert adj.dtype == torch.long
    assert adj.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]
    assert torch.equal(threshold_graph(torch.from_numpy(weights), 0.3), adj)

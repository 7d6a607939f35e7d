"""Directed graphs as weighted adjacency matrices (``A[i, j]``: edge i -> j).

Two smooth acyclicity penalties, each zero exactly on a DAG: NOTEARS's matrix exponential for
the transition's graph over many code variables, DAG-GNN's polynomial for the SCM's few
concepts (the form CausalVAE trains with); and two exact checks of a 0/1 graph, a topological
order and reachability, which ``do()`` needs to propagate an intervention to descendants.
"""

from __future__ import annotations

import torch
from torch import Tensor


def notears(adjacency: Tensor) -> Tensor:
    """NOTEARS acyclicity h(G) = tr(exp(G o G)) - N: zero iff the weighted graph is a DAG."""
    trace = torch.linalg.matrix_exp(adjacency * adjacency).diagonal(dim1=-2, dim2=-1).sum(-1)
    return trace - adjacency.shape[-1]


def acyclicity(adjacency: Tensor) -> Tensor:
    """DAG-GNN's H(A) = tr((I + A o A / n)^n) - n: zero iff the weighted graph has no cycle."""
    n = adjacency.shape[-1]
    eye = torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)
    poly = torch.linalg.matrix_power(eye + adjacency * adjacency / n, n)
    return poly.diagonal(dim1=-2, dim2=-1).sum(-1) - n


def topological_order(graph: Tensor) -> list[int] | None:
    """Kahn's order of a 0/1 graph (``graph[i, j]`` = edge i -> j), or None if it has a cycle."""
    edges = graph.bool().tolist()
    n = len(edges)
    indegree = [sum(edges[i][j] for i in range(n)) for j in range(n)]
    ready = [j for j in range(n) if indegree[j] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in range(n):
            if edges[i][j]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    ready.append(j)
    return order if len(order) == n else None


def reachability(graph: Tensor) -> Tensor:
    """Bool (n, n): ``[i, j]`` is True when j is reachable from i by one or more edges."""
    step = graph.bool()
    reach = step.clone()
    for _ in range(graph.shape[-1]):
        reach = reach | ((reach.float() @ step.float()) > 0)
    return reach

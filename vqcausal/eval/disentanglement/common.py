"""What every disentanglement score shares: settings, the representation callable, sampling
and the small array helpers (see the package docstring for the conventions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from sklearn.preprocessing import OneHotEncoder

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


def as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A generator as given, or a new one from an integer seed."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sklearn_seed(rng: np.random.Generator) -> int:
    """An integer ``random_state`` for scikit-learn drawn from ``rng``."""
    return int(rng.integers(0, 2**31 - 1))


def as_2d(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A NumPy array of shape ``(rows, features)``; extra dims are flattened."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.reshape(len(x), -1)


def treat_as_discrete(latents: np.ndarray, discrete: bool | None) -> bool:
    """``discrete`` when given, else whether the latents have an integer or boolean dtype."""
    if discrete is not None:
        return discrete
    return bool(np.issubdtype(latents.dtype, np.integer) or latents.dtype == np.bool_)


def varying_factors(factors: np.ndarray) -> np.ndarray:
    """Indices of the factor columns that take more than one value."""
    return np.array(
        [k for k in range(factors.shape[1]) if np.unique(factors[:, k]).size > 1], dtype=int
    )


def relabel_codes(latents: np.ndarray) -> np.ndarray:
    """Relabel each discrete dim to ``0..V-1`` (labels only, the order means nothing)."""
    out = np.empty(latents.shape, dtype=np.int64)
    for j in range(latents.shape[1]):
        out[:, j] = np.unique(latents[:, j], return_inverse=True)[1].reshape(-1)
    return out


def gap_top_two(scores: np.ndarray) -> np.ndarray:
    """Per column, best minus second best (second is 0 when there is a single row)."""
    if scores.shape[0] == 1:
        return scores[0]
    ordered = np.sort(scores, axis=0)
    return ordered[-1] - ordered[-2]


def one_hot_blocks(
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
    rng = as_rng(seed)
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"every factor needs at least one value, got sizes={list(sizes)}")
    return np.stack([rng.integers(0, int(s), size=n) for s in sizes], axis=1).astype(np.int64)


def represent_factors(represent: Represent, factors: np.ndarray, chunk: int = 4_096) -> np.ndarray:
    """Apply ``represent`` in chunks (bounded memory) and return ``(N, d)`` as numpy."""
    parts = []
    for start in range(0, len(factors), max(1, chunk)):
        batch = torch.as_tensor(factors[start : start + chunk], dtype=torch.long)
        with torch.no_grad():
            parts.append(as_2d(represent(batch)))
    return np.concatenate(parts, axis=0)

"""Shared fixtures: tiny sources so tests never need a real dataset."""

from __future__ import annotations

import pytest
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import IndexedSource
from vqcausal.data.toy import ToyRenderer


class SparseToy(IndexedSource):
    """The toy scene with only some grid points stored, like a partial dataset file."""

    name = "sparse-toy"
    image_shape = (3, 16, 16)

    def __init__(self, keep: torch.Tensor, split: torch.Tensor | None = None) -> None:
        self.renderer = ToyRenderer()
        super().__init__(self.renderer.space, self.renderer.space.unravel(keep))
        self.split = split

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.renderer.render(self.row_values[rows])

    def stored_split(self) -> torch.Tensor | None:
        return self.split


@pytest.fixture
def toy() -> ToyRenderer:
    return ToyRenderer()


@pytest.fixture
def sparse_toy() -> SparseToy:
    keep = torch.tensor([i for i in range(96) if i % 5 != 0])
    return SparseToy(keep)


@pytest.fixture
def mixed_space() -> FactorSpace:
    return FactorSpace([Factor("hue", 4, cyclic=True), Factor("scale", 3), Factor("pos", 5)])


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread and never stall on an oversubscribed CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

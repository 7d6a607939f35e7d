"""The ground-truth data interface every dataset implements.

A *source* maps factor vectors to images. Procedural renderers draw any point of the factor
grid; on-disk sources hold a subset of grid points (often all of them) and look images up.
Transition sampling, previews, exports and metrics only talk to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import FactorSpace
from vqcausal.errors import DataError


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Source images uint8 (B, C, H, W) -> float in [0, 1], what models take."""
    return images.float() / 255.0


class GroundTruthSource(ABC):
    """Images indexed by discrete factors of variation.

    Subclasses set ``name``, ``space`` and ``image_shape`` (C, H, W) and implement
    :meth:`render`. Images are uint8 tensors (B, C, H, W) in 0..255 so that every source,
    export shard and PNG agrees bit for bit.
    """

    name: str
    space: FactorSpace
    image_shape: tuple[int, int, int]
    # one image per factor vector, so render is a function of the values (False for photo
    # collections, :mod:`vqcausal.data.photos`: many photos per vector, x' another person)
    unique_images: bool = True

    @abstractmethod
    def render(self, values: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) uint8 for factor values (B, K); deterministic."""

    # ---- which grid points exist -----------------------------------------------------
    def stored_values(self) -> torch.Tensor | None:
        """Factor vectors of the stored images, or None when every grid point renders."""
        return None

    def stored_split(self) -> torch.Tensor | None:
        """Optional per-stored-image split (0 = train, 1 = test) that the data came with."""
        return None

    # ---- concepts (continuous labels; the causal variables of the pendulum) ---------
    @property
    def concept_names(self) -> list[str]:
        return self.space.names

    def concepts(self, values: torch.Tensor) -> torch.Tensor:
        """Continuous labels (B, L) for factor values; by default the values themselves."""
        return values.float()

    @property
    def true_dag(self) -> torch.Tensor | None:
        """(L, L) 0/1 adjacency over concepts, entry [i, j] = 1 for edge i -> j, if known."""
        return None

    # ---- conveniences ----------------------------------------------------------------
    def describe(self) -> dict:
        stored = self.stored_values()
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "grid_points": self.space.num_values,
            "stored_images": None if stored is None else int(stored.shape[0]),
            **self.space.to_dict(),
        }


class IndexedSource(GroundTruthSource):
    """A source that stores a subset of grid points; subclasses fetch images by row."""

    def __init__(
        self, space: FactorSpace, row_values: torch.Tensor, origin: Path | None = None
    ) -> None:
        """``origin``: the file the rows were read from, named in any error about them."""
        try:
            self.space = space
            self.row_values = space.check_values(row_values)
            flat = space.ravel(self.row_values)
            self._sorted_flat, self._order = torch.sort(flat)
            if (self._sorted_flat[1:] == self._sorted_flat[:-1]).any():
                raise DataError(f"{self.name}: two stored images share the same factor values")
        except DataError as err:
            if origin is None:
                raise
            raise DataError(f"{origin}: {err}") from None

    @abstractmethod
    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) uint8 of stored rows (any order, repeats allowed)."""

    def rows_of(self, values: torch.Tensor) -> torch.Tensor:
        """Stored row of each factor vector, -1 where the grid point is not stored."""
        flat = self.space.ravel(values)
        pos = torch.searchsorted(self._sorted_flat, flat).clamp(max=len(self._sorted_flat) - 1)
        found = self._sorted_flat[pos] == flat
        return torch.where(found, self._order[pos], torch.full_like(flat, -1))

    def render(self, values: torch.Tensor) -> torch.Tensor:
        rows = self.rows_of(self.space.check_values(values))
        if (rows < 0).any():
            missing = values[rows < 0][0].tolist()
            raise DataError(f"{self.name}: no stored image has factor values {missing}")
        return self.load_rows(rows)

    def stored_values(self) -> torch.Tensor:
        return self.row_values


class ConceptScaler:
    """Standardises a source's concept labels (mean 0, std 1), with statistics of a sample.

    Label-supervised latents (CausalVAE's prior p(z_i | u_i) = N(u_i, 1)) want labels on a
    common scale whatever their units (degrees, pixels, factor indices).
    """

    def __init__(self, source: GroundTruthSource, n: int = 4096, seed: int = 0) -> None:
        self.source = source
        stored = source.stored_values()
        generator = torch.Generator().manual_seed(seed)
        if stored is None:
            values = source.space.sample_values(n, generator)
        else:
            values = stored[torch.randint(stored.shape[0], (n,), generator=generator)]
        concepts = source.concepts(values).double()
        self.mean = concepts.mean(0)
        self.std = concepts.std(0).clamp(min=1e-6)

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """Standardised concepts (B, L) float32 for factor values (B, K)."""
        return ((self.source.concepts(values).double() - self.mean) / self.std).float()


def resized(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 images (B, C, H, W) resized to size x size (bilinear, antialiased), as uint8;
    ``None`` or the images' own size leaves them as they are."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def unique_rows(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique rows and the inverse map: readers want increasing, repeat-free indices."""
    return np.unique(rows.detach().cpu().numpy().astype(np.int64), return_inverse=True)

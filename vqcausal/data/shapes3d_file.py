"""DeepMind's ``3dshapes.h5`` (HDF5, images read lazily) on the procedural renderer's factor
space, so a model trained on one is evaluated on the other. A bad file is a one-line
:class:`DataError` naming it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqcausal.data.factors import FactorSpace
from vqcausal.data.shapes3d import SHAPES3D_SPACE
from vqcausal.data.source import IndexedSource, unique_rows
from vqcausal.errors import DataError

SHAPES3D_FACTORS = SHAPES3D_SPACE.factors

#: Label values of the real 3dshapes grid, one array per column of ``labels``.
SHAPES3D_LABEL_GRIDS = (
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.75, 1.25, 8),
    np.arange(4, dtype=np.float64),
    np.linspace(-30.0, 30.0, 15),
)


def _shapes3d_indices(column: np.ndarray, grid: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Map one column of real-valued labels to factor indices.

    Values are matched to the known 3dshapes grid, so a file holding only part of the grid
    still gets the right indices. A column on some other scale is accepted only when it has
    exactly one distinct value per grid point, and then indexed by rank.
    """
    if not np.isfinite(column).all():
        raise DataError(f"{path}: labels column '{name}' holds NaN or infinite values")
    uniq, inverse = np.unique(column, return_inverse=True)
    if len(uniq) > len(grid):
        raise DataError(
            f"{path}: labels column '{name}' has {len(uniq)} distinct values, "
            f"but the factor has only {len(grid)}"
        )
    nearest = np.abs(uniq[:, None] - grid[None, :]).argmin(axis=1)
    tol = 1e-3 * float(np.diff(grid).min())
    off_grid = np.abs(uniq - grid[nearest]) > tol
    if not off_grid.any():
        return nearest[inverse.reshape(-1)]
    if len(uniq) == len(grid):
        return inverse.reshape(-1)
    raise DataError(
        f"{path}: labels column '{name}' value {uniq[off_grid][0]:g} is not on the 3dshapes "
        f"grid ({grid[0]:g}..{grid[-1]:g} in {len(grid)} steps)"
    )


class Shapes3DFile(IndexedSource):
    """DeepMind's ``3dshapes.h5``: ``images`` (N, H, W, 3) uint8 and ``labels`` (N, 6) floats.

    Labels are loaded at once (small); images stay on disk and are read per batch, so the
    4 GB file never has to fit in memory. The HDF5 handle is reopened after a fork or
    unpickling, because h5py handles must not be shared between processes.
    """

    name = "shapes3d"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(path)
        self._file: Any = None
        self._pid = -1
        try:
            handle = h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err})") from None
        with handle:
            images = self._dataset(handle, "images")
            labels = self._dataset(handle, "labels")
            if images.ndim != 4 or images.shape[3] != 3 or 0 in images.shape[1:]:
                raise DataError(
                    f"{self.path}: 'images' must have shape (N, H, W, 3), got {images.shape}"
                )
            if images.dtype != np.uint8:
                raise DataError(f"{self.path}: 'images' must be uint8, got {images.dtype}")
            if labels.ndim != 2 or labels.shape[1] != len(SHAPES3D_FACTORS):
                raise DataError(f"{self.path}: 'labels' must have shape (N, 6), got {labels.shape}")
            if labels.dtype.kind not in "fiu":
                raise DataError(f"{self.path}: 'labels' must be numeric, got {labels.dtype}")
            if images.shape[0] != labels.shape[0]:
                raise DataError(
                    f"{self.path}: 'images' has {images.shape[0]} rows but 'labels' has "
                    f"{labels.shape[0]}"
                )
            if images.shape[0] == 0:
                raise DataError(f"{self.path}: the file holds no images")
            label_values = np.asarray(labels[()], dtype=np.float64)
            self.image_shape = (3, int(images.shape[1]), int(images.shape[2]))
        columns = [
            _shapes3d_indices(label_values[:, k], grid, factor.name, self.path)
            for k, (factor, grid) in enumerate(
                zip(SHAPES3D_FACTORS, SHAPES3D_LABEL_GRIDS, strict=True)
            )
        ]
        values = torch.from_numpy(np.stack(columns, axis=1).astype(np.int64))
        super().__init__(FactorSpace(SHAPES3D_FACTORS), values, origin=self.path)

    def _dataset(self, handle: Any, key: str) -> Any:
        import h5py

        obj = handle.get(key)
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{self.path}: missing HDF5 dataset '{key}'")
        return obj

    def _images(self) -> Any:
        import h5py

        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DataError(f"{self.path}: cannot reopen HDF5 file ({err})") from None
            self._pid = os.getpid()
        return self._file["images"]

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        uniq, inverse = unique_rows(rows)
        if len(uniq) == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        try:
            block = self._images()[uniq]  # h5py wants increasing, unique indices
        except OSError as err:
            raise DataError(f"{self.path}: cannot read images ({err})") from None
        batch = np.ascontiguousarray(block[inverse.reshape(-1)].transpose(0, 3, 1, 2))
        return torch.from_numpy(batch)

    def close(self) -> None:
        """Release the HDF5 handle; it is reopened on the next read."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

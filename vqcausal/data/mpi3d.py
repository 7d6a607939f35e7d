"""MPI3D (Gondal et al. 2019): a robot arm's object photographed on a 7-factor grid.

The files as distributed (``mpi3d_toy.npz``, ``mpi3d_realistic.npz``, ``mpi3d_real.npz``) hold
one array, ``images``: 1,036,800 x 64 x 64 x 3 uint8 in the C order of the factor grid below,
so the order alone gives the labels and the size must be exact. 12.7 GB decoded: the array is
never read whole, whether it sits in the ``.npz`` (its members are stored uncompressed) or in
a ``.npy`` of its own; a batch reads its rows with one ``pread`` each (12 KB), so memory holds
the batch and nothing else. (A memory map read the same rows 50x slower on random access and
its fault-around mapped ~100 KB per row into the process.)

The *real* variant is photographs of a real arm with true single-factor neighbours: an action
moves one factor one step and every other pixel comes from the camera, not a renderer.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.npy import npy_data, npz_member_offset
from vqcausal.data.source import GroundTruthSource
from vqcausal.errors import DataError

#: the factors in the order of the file's grid, sizes from the dataset's documentation
MPI3D_FACTORS = (
    Factor("object_color", 6),  # white, green, red, blue, brown, olive
    Factor("object_shape", 6),  # cone, cube, cylinder, hexagonal, pyramid, sphere
    Factor("object_size", 2),  # small, large
    Factor("camera_height", 3),  # top, centre, bottom
    Factor("background_color", 3),  # purple, sea green, salmon
    Factor("horizontal_axis", 40),  # the arm's first degree of freedom
    Factor("vertical_axis", 40),  # its second
)
MPI3D_SPACE = FactorSpace(MPI3D_FACTORS)
IMAGE_SHAPE = (64, 64, 3)


class MPI3DFile(GroundTruthSource):
    """One of the MPI3D files: the whole 7-factor grid, images read by row from a memory map."""

    name = "mpi3d"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd: int | None = None
        self.path = Path(path)
        self.space = MPI3D_SPACE
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        if zipfile.is_zipfile(self.path):
            start, shape = self._find_npz_member()
        else:
            with open(self.path, "rb") as fh:
                start, shape = npy_data(self.path, fh, 0, "the file")
        expected = (self.space.num_values, *IMAGE_SHAPE)
        if shape != expected:
            raise DataError(
                f"{self.path}: 'images' must be {expected} (the MPI3D grid in order: "
                f"{' x '.join(str(s) for s in self.space.sizes)} x 64 x 64 x 3), got {shape}"
            )
        self.start = start
        self.image_shape = (3, 64, 64)

    def _find_npz_member(self) -> tuple[int, tuple[int, ...]]:
        try:
            with zipfile.ZipFile(self.path) as archive:
                info = archive.getinfo("images.npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(
                        f"{self.path}: 'images' is compressed, so it cannot be read by rows "
                        "without decoding 12.7 GB; save it uncompressed (np.savez) or as a .npy"
                    )
                with archive.open(info) as member:
                    offset = npz_member_offset(self.path, info)
                    return npy_data(self.path, member, offset, "'images'")
        except KeyError:
            raise DataError(f"{self.path}: no array 'images' in the archive") from None
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"{self.path}: not a readable .npz archive ({err})") from None

    def render(self, values: torch.Tensor) -> torch.Tensor:
        rows = self.space.ravel(self.space.check_values(values)).tolist()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = int(np.prod(IMAGE_SHAPE))
        out = np.empty((len(rows), size), np.uint8)
        for i, row in enumerate(rows):
            data = os.pread(self._fd, size, self.start + row * size)
            if len(data) != size:
                raise DataError(f"{self.path}: image {row} is cut short (the file shrank?)")
            out[i] = np.frombuffer(data, np.uint8)
        return torch.from_numpy(out).view(-1, *IMAGE_SHAPE).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        """Data workers get the path and open the file themselves (a descriptor does not
        pickle, and one shared across fork would share its offset)."""
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

"""SmallNORB (LeCun et al. 2004): 50 toys photographed under 6 lightings from 9 x 18 viewpoints.

Read from the six files as distributed, in a folder::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat

each a binary matrix: a little-endian int32 magic (``0x1E3D4C55`` uint8, ``0x1E3D4C54`` int32),
the number of dimensions, max(3, ndim) int32 sizes, then the data. ``dat`` is N x 2 x 96 x 96
(a stereo pair; the left image is used), ``cat`` N categories, ``info`` N x 4: instance,
elevation, azimuth (stored as 0, 2, ..., 34), lighting. Every image is labelled, so a subset
(a filtered copy, one file pair only) loads and pairs are drawn among the images present; the
training file is split 0 and the testing file split 1, the official split (by instance: 4, 6,
7, 8, 9 train, 0, 1, 2, 3, 5 test). Images are read by row with ``pread``, never whole;
``data.image_size`` resizes them (64 is the usual size in the disentanglement literature).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import IndexedSource, resized
from vqcausal.errors import DataError

SMALLNORB_FACTORS = (
    Factor("category", 5),  # four-legged animal, human figure, airplane, truck, car
    Factor("instance", 10),
    Factor("elevation", 9),  # 30 to 70 degrees, every 5
    Factor("azimuth", 18, cyclic=True),  # 0 to 340 degrees, every 20
    Factor("lighting", 6),
)
SMALLNORB_SPACE = FactorSpace(SMALLNORB_FACTORS)
SPLITS = {
    "training": ("smallnorb-5x46789x9x18x6x2x96x96-training", 0),
    "testing": ("smallnorb-5x01235x9x18x6x2x96x96-testing", 1),
}
MAGIC = {0x1E3D4C55: np.dtype("<u1"), 0x1E3D4C54: np.dtype("<i4")}
SIDE = 96


def read_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of a SmallNORB binary matrix; checks the size it implies."""
    try:
        with open(path, "rb") as fh:
            head = np.frombuffer(fh.read(8), "<i4")
            if len(head) != 2 or int(head[0]) not in MAGIC:
                raise DataError(f"{path}: not a SmallNORB matrix (bad magic number)")
            ndim = int(head[1])
            if not 1 <= ndim <= 4:
                raise DataError(f"{path}: a SmallNORB matrix has 1 to 4 dimensions, got {ndim}")
            dims = np.frombuffer(fh.read(4 * max(3, ndim)), "<i4")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(dims) != max(3, ndim) or (dims[:ndim] < 1).any():
        raise DataError(f"{path}: truncated or damaged header")
    dtype, shape = MAGIC[int(head[0])], tuple(int(d) for d in dims[:ndim])
    offset = 8 + 4 * max(3, ndim)
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < need:
        raise DataError(
            f"{path}: truncated: its header says {shape} {dtype.name}, which needs {need:,} "
            f"bytes, the file has {os.path.getsize(path):,}"
        )
    return dtype, shape, offset


def read_labels(path: Path, expect: tuple[int, ...]) -> np.ndarray:
    """A small int32 matrix (``cat`` or ``info``), its shape checked against ``expect``
    (-1 = any size there)."""
    dtype, shape, offset = read_header(path)
    if (
        dtype != np.dtype("<i4")
        or len(shape) != len(expect)
        or any(e not in (-1, s) for e, s in zip(expect, shape, strict=True))
    ):
        want = " x ".join("N" if e == -1 else str(e) for e in expect)
        raise DataError(f"{path}: must be an int32 matrix of {want}, got {shape} {dtype.name}")
    with open(path, "rb") as fh:
        fh.seek(offset)
        return np.frombuffer(fh.read(4 * int(np.prod(shape))), "<i4").reshape(shape)


class SmallNORBFolder(IndexedSource):
    """The SmallNORB files of a folder (both splits or one); images 1 x 96 x 96 uint8."""

    name = "smallnorb"

    def __init__(self, root: str | os.PathLike[str], image_size: int | None = None) -> None:
        self._fds: dict[Path, int] = {}
        if image_size is not None and not 8 <= image_size <= 1024:
            raise DataError(f"smallnorb: image_size must be 8 to 1024, got {image_size}")
        self.image_size = image_size
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder (SmallNORB is six .mat files in one)")
        values, files, rows, splits = [], [], [], []
        for stem, split in SPLITS.values():
            paths = {k: self.root / f"{stem}-{k}.mat" for k in ("dat", "cat", "info")}
            present = [p.exists() for p in paths.values()]
            if not any(present):
                continue
            if not all(present):
                missing = [str(p.name) for p in paths.values() if not p.exists()]
                raise DataError(f"{self.root}: {stem}: missing {', '.join(missing)}")
            dtype, shape, offset = read_header(paths["dat"])
            if dtype != np.dtype("<u1") or len(shape) != 4 or shape[1:] != (2, SIDE, SIDE):
                raise DataError(
                    f"{paths['dat']}: must be a uint8 matrix of N x 2 x 96 x 96, got {shape}"
                )
            count = shape[0]
            category = read_labels(paths["cat"], (count,))
            info = read_labels(paths["info"], (count, 4))
            value = np.column_stack([category, info]).astype(np.int64)
            value[:, 3] //= 2  # azimuth is stored as 0, 2, ..., 34
            self._check(paths["info"], value, info)
            values.append(value)
            files += [(paths["dat"], offset)] * count
            rows.append(np.arange(count))
            splits.append(np.full(count, split))
        if not values:
            names = ", ".join(f"{stem}-dat.mat" for stem, _ in SPLITS.values())
            raise DataError(f"{self.root}: no SmallNORB files (expected {names} and friends)")
        self._files = files
        self._rows = np.concatenate(rows)
        self._split = torch.from_numpy(np.concatenate(splits))
        self.image_shape = (1, image_size or SIDE, image_size or SIDE)
        try:
            super().__init__(SMALLNORB_SPACE, torch.from_numpy(np.concatenate(values)))
        except DataError as err:
            raise DataError(f"{self.root}: {err}") from None

    @staticmethod
    def _check(path: Path, value: np.ndarray, info: np.ndarray) -> None:
        if (info[:, 2] % 2 != 0).any():
            raise DataError(f"{path}: azimuth must be stored as 0, 2, ..., 34")
        for k, factor in enumerate(SMALLNORB_FACTORS):
            column = value[:, k]
            if (column < 0).any() or (column >= factor.size).any():
                raise DataError(
                    f"{path}: {factor.name} must lie in 0..{factor.size - 1}, found "
                    f"{int(column.min())}..{int(column.max())}"
                )

    def stored_split(self) -> torch.Tensor:
        """0 for the training file, 1 for the testing file, the official split."""
        return self._split

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        size = SIDE * SIDE
        out = np.empty((len(rows), size), np.uint8)
        for i, row in enumerate(rows.tolist()):
            path, offset = self._files[row]
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            # the left image of the stereo pair of row r starts at r * 2 * 96 * 96
            data = os.pread(fd, size, offset + int(self._rows[row]) * 2 * size)
            if len(data) != size:
                raise DataError(f"{path}: image {self._rows[row]} is cut short (file shrank?)")
            out[i] = np.frombuffer(data, np.uint8)
        return resized(torch.from_numpy(out).view(-1, 1, SIDE, SIDE), self.image_size)

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        """Data workers reopen the files themselves (descriptors do not pickle)."""
        return {"root": self.root, "image_size": self.image_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["image_size"])

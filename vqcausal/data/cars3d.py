"""Cars3D (Reed et al. 2015): 183 car models rendered at 4 elevations x 24 azimuths.

Read from the per-car MATLAB files as distributed, ``cars/car_XXX_mesh.mat``: each holds
``im``, 128 x 128 x 3 x 24 x 4 uint8 (height, width, colour, azimuth, elevation). The car
factor is the file's rank among the car files present, in name order (what the reference
loaders do), so a folder with some cars loads, pairs drawn among them. A file is read whole
when one of its images is asked for (4.7 MB; ``scipy.io.loadmat``, which never unpickles) and
the last few cars stay in memory. ``data.image_size`` resizes (64 is the usual size).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import IndexedSource, resized
from vqcausal.errors import DataError

CARS = 183
ELEVATIONS, AZIMUTHS, SIDE = 4, 24, 128
CARS3D_FACTORS = (
    Factor("elevation", ELEVATIONS),
    Factor("azimuth", AZIMUTHS, cyclic=True),  # 15 degrees a step, all the way round
    Factor("car", CARS),
)
CARS3D_SPACE = FactorSpace(CARS3D_FACTORS)
FILE_NAME = re.compile(r"car_(\d+)_mesh\.mat")
CACHED_CARS = 16  # ~75 MB of decoded cars kept


class Cars3DFolder(IndexedSource):
    """The ``car_XXX_mesh.mat`` files of a folder (``cars/`` itself or the folder holding it)."""

    name = "cars3d"

    def __init__(self, root: str | os.PathLike[str], image_size: int | None = None) -> None:
        if image_size is not None and not 8 <= image_size <= 1024:
            raise DataError(f"cars3d: image_size must be 8 to 1024, got {image_size}")
        self.image_size = image_size
        root = Path(root)
        if (root / "cars").is_dir():
            root = root / "cars"
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (Cars3D is a folder of car_XXX_mesh.mat)")
        self.root = root
        self.files = sorted(p for p in root.iterdir() if FILE_NAME.fullmatch(p.name))
        if not self.files:
            raise DataError(f"{root}: no car_XXX_mesh.mat files")
        if len(self.files) > CARS:
            raise DataError(f"{root}: {len(self.files)} car files; Cars3D has {CARS}")
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._load(0)  # the first file is checked now, the others when first read
        grid = torch.cartesian_prod(
            torch.arange(ELEVATIONS), torch.arange(AZIMUTHS), torch.arange(len(self.files))
        )
        self.image_shape = (3, image_size or SIDE, image_size or SIDE)
        super().__init__(CARS3D_SPACE, grid)

    def _load(self, car: int) -> np.ndarray:
        """Car ``car``'s images as (elevation, azimuth, H, W, 3), cached."""
        if car in self._cache:
            self._cache.move_to_end(car)
            return self._cache[car]
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        path = self.files[car]
        try:
            data = loadmat(path, variable_names=["im"])
        except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as err:
            raise DataError(f"{path}: not a readable MATLAB file ({err})") from None
        im = data.get("im")
        want = (SIDE, SIDE, 3, AZIMUTHS, ELEVATIONS)
        if im is None:
            raise DataError(f"{path}: no variable 'im'")
        if im.shape != want or im.dtype != np.uint8:
            raise DataError(f"{path}: 'im' must be uint8 {want}, got {im.dtype} {im.shape}")
        images = np.ascontiguousarray(np.transpose(im, (4, 3, 0, 1, 2)))
        self._cache[car] = images
        if len(self._cache) > CACHED_CARS:
            self._cache.popitem(last=False)
        return images

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        values = self.row_values[rows]
        out = np.empty((len(rows), SIDE, SIDE, 3), np.uint8)
        order = torch.argsort(values[:, 2], stable=True).tolist()  # one file read per car
        for i in order:
            elevation, azimuth, car = values[i].tolist()
            out[i] = self._load(car)[elevation, azimuth]
        return resized(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), self.image_size)

    def __getstate__(self) -> dict:
        """Data workers reread what they need (the cache is per process)."""
        return {"root": self.root, "image_size": self.image_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["image_size"])

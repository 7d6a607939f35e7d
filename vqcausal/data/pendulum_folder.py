"""CausalVAE's pendulum PNGs on disk, as a ground-truth source.

The published dataset is a folder with ``train/`` and ``test/`` subfolders of 96x96 RGBA PNGs
named ``a_<i>_<j>_<shade>_<mid>.png``: pendulum index i, light index j (the same grid as
:mod:`vqcausal.data.pendulum` at stride 1) and the shadow's length and centre truncated to
integers. Files are opened lazily, row by row, so the folder never has to fit in memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.pendulum import (
    CONCEPT_NAMES,
    LIGHT_INDICES,
    PENDULUM_INDICES,
    grid_sizes,
    index_concepts,
    pendulum_dag,
    values_to_indices,
)
from vqcausal.data.source import IndexedSource
from vqcausal.errors import DataError

SPLIT_FOLDERS = ("train", "test")  # stored_split 0 and 1
FILE_NAME = re.compile(r"a_(-?\d+)_(-?\d+)_(-?\d+)_(-?\d+)\.png")


def parse_name(path: Path) -> tuple[int, int, int, int]:
    """(i, j, shade, mid) from a CausalVAE file name; a DataError naming the file otherwise."""
    match = FILE_NAME.fullmatch(path.name)
    if match is None:
        raise DataError(f"pendulum: {path}: file name is not a_<i>_<j>_<shade>_<mid>.png")
    i, j, shade, mid = (int(g) for g in match.groups())
    if i not in PENDULUM_INDICES or j not in LIGHT_INDICES:
        raise DataError(
            f"pendulum: {path}: indices i={i}, j={j} are off the CausalVAE grid "
            "(i in -40..43, j in 60..147 without 100)"
        )
    return i, j, shade, mid


def to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3), composited over white.

    The published PNGs are fully opaque, so this equals dropping alpha there; compositing
    keeps transparent pixels white (matplotlib's background) in re-saved copies too.
    """
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
    alpha = rgba[..., 3:]
    rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return rgb.astype(np.uint8)


class PendulumFolder(IndexedSource):
    """A CausalVAE pendulum folder; factors are the stride-1 grid of the renderer.

    ``pendulum_angle`` is i + 40 and ``light_angle`` is the rank of j among 60..147 without
    100, so a stored image and ``PendulumRenderer(stride=1)`` agree on every factor vector.
    ``image_size`` resizes (bilinear, antialiased) to a square; None keeps the files' size.
    """

    name = "pendulum"

    def __init__(self, root: str | Path, image_size: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"pendulum: folder not found: {self.root}")
        found = [(s, self.root / sub) for s, sub in enumerate(SPLIT_FOLDERS)]
        found = [(s, folder) for s, folder in found if folder.is_dir()]
        if not found:
            raise DataError(f"pendulum: {self.root}: no train/ or test/ subfolder")
        entries = []
        for split, folder in found:
            for path in sorted(folder.glob("*.png")):
                entries.append((*parse_name(path), split, path))
        if not entries:
            raise DataError(f"pendulum: {self.root}: no PNG files in train/ or test/")
        entries.sort(key=lambda e: (e[4], e[0], e[1]))
        seen: dict[tuple[int, int], Path] = {}
        for i, j, _, _, _, path in entries:
            if (i, j) in seen:
                raise DataError(f"pendulum: {path}: same i={i}, j={j} as {seen[i, j]}")
            seen[i, j] = path

        self.paths = [e[5] for e in entries]
        self.file_indices = torch.tensor([(e[0], e[1]) for e in entries], dtype=torch.long)
        self.file_shadow = torch.tensor([(e[2], e[3]) for e in entries], dtype=torch.float32)
        self._split = torch.tensor([e[4] for e in entries], dtype=torch.long)
        n_i, n_j = grid_sizes(1)
        space = FactorSpace([Factor("pendulum_angle", n_i), Factor("light_angle", n_j)])
        light_rank = {j: r for r, j in enumerate(LIGHT_INDICES)}
        values = torch.tensor(
            [(i - PENDULUM_INDICES[0], light_rank[j]) for i, j, *_ in entries], dtype=torch.long
        )
        super().__init__(space, values)

        if image_size is not None and image_size < 1:
            raise DataError(f"pendulum: image_size must be positive, got {image_size}")
        self.image_size = image_size
        if image_size is None:
            width, height = self._open(self.paths[0]).size
            self._native = (height, width)
            self.image_shape = (3, height, width)
        else:
            self._native = None
            self.image_shape = (3, image_size, image_size)

    # ---- pixels -----------------------------------------------------------------------------
    @staticmethod
    def _open(path: Path) -> Image.Image:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DataError(f"pendulum: {path}: unreadable PNG ({err})") from None
        return image

    def _load(self, path: Path) -> np.ndarray:
        image = self._open(path)
        if self.image_size is not None:
            if image.size != (self.image_size, self.image_size):
                image = image.convert("RGBA").resize(
                    (self.image_size, self.image_size), Image.Resampling.BILINEAR
                )
        elif (image.height, image.width) != self._native:
            raise DataError(
                f"pendulum: {path}: image is {image.width}x{image.height}, the others are "
                f"{self._native[1]}x{self._native[0]} (set image_size to resize)"
            )
        return to_rgb(image)

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        arrays = [self._load(self.paths[int(r)]) for r in rows.reshape(-1).tolist()]
        if not arrays:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def stored_split(self) -> torch.Tensor:
        """0 for files under train/, 1 for files under test/, as the dataset ships them."""
        return self._split

    # ---- concepts -----------------------------------------------------------------------------
    @property
    def concept_names(self) -> list[str]:
        return list(CONCEPT_NAMES)

    def concepts(self, values: torch.Tensor) -> torch.Tensor:
        """(B, 4): angles in degrees from i and j; shade and mid from the file name (integers).

        Grid points without a file get the generator's value truncated the same way, int().
        """
        device = values.device
        values = self.space.check_values(values).cpu()
        i, j = values_to_indices(values, 1)
        out = index_concepts(i, j)
        out[:, 2:] = out[:, 2:].trunc()
        rows = self.rows_of(values)
        stored = rows >= 0
        out[stored, 2:] = self.file_shadow[rows[stored]]
        return out.to(device)

    @property
    def true_dag(self) -> torch.Tensor:
        return pendulum_dag()

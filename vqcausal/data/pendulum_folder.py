"""CausalVAE's pendulum PNGs on disk, as a ground-truth source.

The published dataset is a folder with ``train/`` and ``test/`` subfolders of 96x96 RGBA PNGs
named ``a_<i>_<j>_<shade>_<mid>.png``: pendulum index i, light index j (the same grid as
:mod:`vqcausal.data.pendulum` at stride 1) and the shadow's length and centre truncated to
integers. Files are opened lazily, row by row, so the folder never has to fit in memory.

Concepts are computed from i and j with the generator's own geometry (the names' shadow
integers are those numbers truncated), so a folder and :class:`PendulumRenderer` at the same
stride give the same factors, the same labels and, up to antialiasing, the same pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.pendulum import (
    CONCEPT_NAMES,
    LIGHT_INDICES,
    PENDULUM_INDICES,
    PendulumRenderer,
    checked_grid_sizes,
    index_angles,
    index_concepts,
    indices_to_values,
    pendulum_dag,
    shadow_geometry,
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
    """A CausalVAE pendulum folder; factors are the ``stride`` grid of the renderer.

    At stride 1 ``pendulum_angle`` is i + 40 and ``light_angle`` the rank of j among 60..147
    without 100; ``stride`` keeps the files on every stride-th value of both and numbers them
    as ``PendulumRenderer(stride=stride)`` does, so the two agree on every factor vector.
    By default the stride is the grid the files lie on (the gcd of their index offsets): 1
    for CausalVAE's folder, s for a folder written from the renderer at stride s.
    ``image_size`` resizes (bilinear, antialiased) to a square; None keeps the files' size.
    Both ``train/`` and ``test/`` must be there: held-out figures are measured on ``test/``.
    """

    name = "pendulum"

    def __init__(
        self, root: str | Path, image_size: int | None = None, stride: int | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"pendulum: folder not found: {self.root}")
        entries = []
        for split, sub in enumerate(SPLIT_FOLDERS):
            folder = self.root / sub
            if not folder.is_dir():
                raise DataError(
                    f"pendulum: {self.root}: no {sub}/ subfolder (a CausalVAE pendulum folder "
                    "holds train/ and test/; held-out figures need test/)"
                )
            files = [(*parse_name(path), split, path) for path in sorted(folder.glob("*.png"))]
            if not files:
                raise DataError(f"pendulum: {folder}: no PNG files")
            entries += files
        light_rank = {j: r for r, j in enumerate(LIGHT_INDICES)}
        ranks = [(e[0] - PENDULUM_INDICES[0], light_rank[e[1]]) for e in entries]
        if stride is None:  # the grid the files were generated on: 1 for CausalVAE's folder
            stride = math.gcd(*(r for pair in ranks for r in pair)) or 1
        n_i, n_j = checked_grid_sizes(stride)
        self.stride = int(stride)
        on_grid = [r_i % stride == 0 and r_j % stride == 0 for r_i, r_j in ranks]
        entries = [e for e, keep in zip(entries, on_grid, strict=True) if keep]
        if not entries:
            raise DataError(f"pendulum: {self.root}: no file lies on the stride-{stride} grid")
        entries.sort(key=lambda e: (e[4], e[0], e[1]))
        seen: dict[tuple[int, int], Path] = {}
        for i, j, _, _, _, path in entries:
            if (i, j) in seen:
                raise DataError(f"pendulum: {path}: same i={i}, j={j} as {seen[i, j]}")
            seen[i, j] = path

        self.paths = [e[5] for e in entries]
        self.file_indices = torch.tensor([(e[0], e[1]) for e in entries], dtype=torch.long)
        self._split = torch.tensor([e[4] for e in entries], dtype=torch.long)
        space = FactorSpace([Factor("pendulum_angle", n_i), Factor("light_angle", n_j)])
        values = indices_to_values(self.file_indices[:, 0], self.file_indices[:, 1], stride)
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
        """(B, 4): angles in degrees and the shadow's length and centre, computed from i and
        j as the generator computes them (its file names keep the shadow truncated to
        integers, which would make most one-step changes of the shadow 0 or 1 at stride 1)."""
        values = self.space.check_values(values)
        i, j = values_to_indices(values.cpu(), self.stride)
        return index_concepts(i, j).to(values.device)

    @property
    def true_dag(self) -> torch.Tensor:
        return pendulum_dag()


def write_causalvae_folder(
    renderer: PendulumRenderer,
    root: str | Path,
    values: torch.Tensor,
    splits: torch.Tensor,
    progress: Callable[[int], None] | None = None,
    chunk: int = 256,
) -> None:
    """Write grid points (B, 2) of ``renderer`` as CausalVAE's generator saves them:
    ``<root>/<train|test>/a_<i>_<j>_<shade>_<mid>.png``, opaque RGBA, the shadow truncated to
    integers in the name; ``splits`` (B,) is 0 for train/, 1 for test/. A folder written from
    the renderer at stride s and read back with :class:`PendulumFolder` at stride s gives the
    same factors, labels and pixels."""
    root = Path(root)
    for sub in SPLIT_FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for start in range(0, values.shape[0], chunk):
        part = values[start : start + chunk]
        i, j = renderer.indices(part)
        shades, mids = shadow_geometry(*index_angles(i, j))  # float64, as the generator
        images = renderer.render_indices(i, j).permute(0, 2, 3, 1).numpy()
        opaque = np.full((*images.shape[1:3], 1), 255, np.uint8)
        part_splits = splits[start : start + chunk].tolist()
        for n, (image, split) in enumerate(zip(images, part_splits, strict=True)):
            name = f"a_{int(i[n])}_{int(j[n])}_{int(shades[n])}_{int(mids[n])}.png"
            rgba = np.concatenate([image, opaque], axis=2)
            Image.fromarray(rgba, "RGBA").save(root / SPLIT_FOLDERS[split] / name)
        if progress is not None:
            progress(part.shape[0])

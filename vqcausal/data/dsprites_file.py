"""The dSprites ``.npz`` (never unpickled; images bit-packed in memory) on the procedural
renderer's factor space. A bad file is a one-line :class:`DataError` naming it."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqcausal.data.factors import FactorSpace
from vqcausal.data.npy import npz_member_offset
from vqcausal.data.source import IndexedSource
from vqcausal.data.sprites import SPRITES_SPACE
from vqcausal.errors import DataError

SPRITES_FACTORS = SPRITES_SPACE.factors


_NPZ_CHUNK = 8192  # images streamed per step when the archive is compressed


class DSpritesFile(IndexedSource):
    """The dSprites ``.npz``: ``imgs`` (N, H, W) 0/1 and ``latents_classes`` (N, 6).

    Column 0 of ``latents_classes`` (colour, always 0) is dropped. The archive is opened
    without pickle support (the real file's ``metadata`` entry is a pickle and is never
    touched). Uncompressed archives are memory-mapped; compressed ones (the real file) are
    streamed once and kept bit-packed, 1/8 of the 3 GB the raw pixels would take.
    """

    name = "sprites"

    def __init__(self, path: str | os.PathLike[str], channels: int = 1) -> None:
        self.path = Path(path)
        if channels not in (1, 3):
            raise DataError(f"{self.path}: channels must be 1 or 3, got {channels}")
        self.channels = channels
        self._packed: np.ndarray | None = None
        self._mapped: np.ndarray | None = None
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        if not zipfile.is_zipfile(self.path):
            with open(self.path, "rb") as fh:
                single = fh.read(6) == b"\x93NUMPY"
            what = "it holds a single .npy array" if single else "truncated or another format?"
            raise DataError(f"{self.path}: not a .npz (zip) archive; {what}")
        try:
            npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{self.path}: not a readable .npz archive ({err})") from None
        with npz:
            for key in ("imgs", "latents_classes"):
                if key not in npz.files:
                    raise DataError(f"{self.path}: missing array '{key}'")
            classes = self._read_small(npz, "latents_classes")
            height, width, count = self._open_images(npz)
        if classes.ndim != 2 or classes.shape[1] != 6 or classes.dtype.kind not in "iu":
            raise DataError(
                f"{self.path}: 'latents_classes' must be an integer (N, 6) array, "
                f"got {classes.dtype} {classes.shape}"
            )
        if classes.shape[0] != count:
            raise DataError(
                f"{self.path}: 'imgs' has {count} images but 'latents_classes' has "
                f"{classes.shape[0]} rows"
            )
        if count == 0:
            raise DataError(f"{self.path}: the archive holds no images")
        if (classes[:, 0] != 0).any():
            raise DataError(f"{self.path}: 'latents_classes' column 0 (colour) must be all 0")
        for k, factor in enumerate(SPRITES_FACTORS):
            col = classes[:, k + 1]
            if (col < 0).any() or (col >= factor.size).any():
                raise DataError(
                    f"{self.path}: 'latents_classes' column {k + 1} ({factor.name}) must lie in "
                    f"0..{factor.size - 1}, found {int(col.min())}..{int(col.max())}"
                )
        self.image_shape = (channels, height, width)
        values = torch.from_numpy(classes[:, 1:].astype(np.int64))
        super().__init__(FactorSpace(SPRITES_FACTORS), values, origin=self.path)

    def _read_small(self, npz: Any, key: str) -> np.ndarray:
        try:
            return np.asarray(npz[key])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{self.path}: cannot read array '{key}' ({err})") from None

    def _open_images(self, npz: Any) -> tuple[int, int, int]:
        """Map or stream ``imgs``; returns (height, width, count)."""
        info = npz.zip.getinfo("imgs.npy")
        try:
            with npz.zip.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                if len(shape) != 3 or 0 in shape[1:]:
                    raise DataError(f"{self.path}: 'imgs' must have shape (N, H, W), got {shape}")
                if dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
                    raise DataError(f"{self.path}: 'imgs' must be uint8 0/1, got {dtype}")
                count, height, width = (int(s) for s in shape)
                if fortran:
                    self._packed = self._pack(self._read_small(npz, "imgs"))
                elif info.compress_type == zipfile.ZIP_STORED:
                    offset = npz_member_offset(self.path, info) + member.tell()
                    self._mapped = np.memmap(self.path, np.uint8, "r", offset, shape)
                else:
                    self._packed = self._stream(member, count, height * width, (height, width))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{self.path}: cannot read array 'imgs' ({err})") from None
        return height, width, count

    def _stream(self, member: Any, count: int, pixels: int, hw: tuple[int, int]) -> np.ndarray:
        packed = np.empty((count, hw[0], (hw[1] + 7) // 8), dtype=np.uint8)
        for start in range(0, count, _NPZ_CHUNK):
            n = min(_NPZ_CHUNK, count - start)
            buf = member.read(n * pixels)
            if len(buf) != n * pixels:
                raise DataError(f"{self.path}: 'imgs' is truncated")
            packed[start : start + n] = self._pack(np.frombuffer(buf, np.uint8).reshape(n, *hw))
        if member.read(1):  # also reaches end of stream, where zipfile checks the CRC
            raise DataError(f"{self.path}: 'imgs' holds more data than its shape {hw} says")
        return packed

    def _pack(self, imgs: np.ndarray) -> np.ndarray:
        imgs = imgs.view(np.uint8) if imgs.dtype == np.bool_ else imgs
        if imgs.size and imgs.max() > 1:
            raise DataError(f"{self.path}: 'imgs' must hold 0/1 pixels, found {int(imgs.max())}")
        return np.packbits(imgs, axis=-1)

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        index = rows.detach().cpu().numpy().astype(np.int64)
        _, height, width = self.image_shape
        if self._mapped is not None:
            imgs = np.asarray(self._mapped[index])
            if imgs.size and imgs.max() > 1:
                raise DataError(f"{self.path}: 'imgs' must hold 0/1 pixels, found {imgs.max()}")
        else:
            assert self._packed is not None
            imgs = np.unpackbits(self._packed[index], axis=-1, count=width)
        out = torch.from_numpy(imgs * np.uint8(255)).unsqueeze(1)
        return out.repeat(1, self.channels, 1, 1) if self.channels > 1 else out

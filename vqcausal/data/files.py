"""Sources for dataset files the user already has on disk.

* :class:`Shapes3DFile` reads DeepMind's ``3dshapes.h5`` (HDF5, images read lazily).
* :class:`DSpritesFile` reads the dSprites ``.npz`` (never unpickles; bit-packed in memory).
* :class:`ImageFolderSource` reads a folder of images described by ``factors.csv``.

Each maps its stored rows onto the same :class:`FactorSpace` as the procedural renderer of the
same name, so models trained on one can be evaluated on the other. Anything wrong with a file
is a :class:`DataError` whose message names the file.
"""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.npy import npz_member_offset
from vqcausal.data.shapes3d import SHAPES3D_SPACE
from vqcausal.data.source import IndexedSource
from vqcausal.data.sprites import SPRITES_SPACE
from vqcausal.errors import DataError

# ---- factor spaces: the procedural renderers' spaces, so models transfer ----------

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

SPRITES_FACTORS = SPRITES_SPACE.factors


def _init_indexed(source: IndexedSource, path: Path, space: FactorSpace, values: torch.Tensor):
    """Run IndexedSource.__init__ but name the file in its errors (e.g. duplicate rows)."""
    try:
        IndexedSource.__init__(source, space, values)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def _unique_rows(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique rows and the inverse map: readers want increasing, repeat-free indices."""
    return np.unique(rows.detach().cpu().numpy().astype(np.int64), return_inverse=True)


# ---- 3dshapes ------------------------------------------------------------------------


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
        _init_indexed(self, self.path, FactorSpace(SHAPES3D_FACTORS), values)

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
        uniq, inverse = _unique_rows(rows)
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


# ---- dSprites ------------------------------------------------------------------------

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
        _init_indexed(self, self.path, FactorSpace(SPRITES_FACTORS), values)

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


# ---- folder of images + factors.csv ----------------------------------------------------


class ImageFolderSource(IndexedSource):
    """A folder of images plus ``factors.csv`` (``filename`` then one integer column per factor).

    Only image headers are read up front (to check files exist and agree in size); pixels are
    decoded per batch. Factor sizes default to max value + 1 per column.
    """

    name = "folder"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sizes: Mapping[str, int] | Sequence[int] | None = None,
        cyclic: Sequence[str] | None = None,
        channels: int = 3,
        image_size: int | tuple[int, int] | None = None,
        csv_name: str = "factors.csv",
    ) -> None:
        path = Path(path)
        if path.is_file() and path.suffix.lower() == ".csv":
            path, csv_name = path.parent, path.name
        self.root = path
        self.csv_path = path / csv_name
        if channels not in (1, 3):
            raise DataError(f"{self.root}: channels must be 1 or 3, got {channels}")
        self.channels = channels
        self._size: tuple[int, int] | None = None  # (width, height) for PIL resize
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            if h < 1 or w < 1:
                raise DataError(f"{self.root}: image_size must be positive, got {image_size}")
            self._size = (int(w), int(h))
        names, self.files, lines, table = self._read_csv()
        space = self._space(names, table, sizes, cyclic)
        values = torch.from_numpy(table)
        self._check_distinct(space, values, lines)
        self.image_shape = self._check_images(lines)
        _init_indexed(self, self.csv_path, space, values)

    # -- csv -------------------------------------------------------------------------
    def _read_csv(self) -> tuple[list[str], list[Path], list[int], np.ndarray]:
        """Parse factors.csv: factor names, image paths, line numbers and (N, K) values."""
        csv_path = self.csv_path
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: factors file not found")
        files: list[Path] = []
        lines: list[int] = []
        rows: list[list[int]] = []
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None:
                    raise DataError(f"{csv_path}: the file is empty")
                header = [h.strip() for h in header]
                if "filename" not in header:
                    raise DataError(f"{csv_path}: line 1 has no 'filename' column")
                if len(set(header)) != len(header) or "" in header:
                    raise DataError(f"{csv_path}: line 1 has empty or repeated column names")
                fcol = header.index("filename")
                names = [h for i, h in enumerate(header) if i != fcol]
                if not names:
                    raise DataError(f"{csv_path}: line 1 names no factor columns")
                for record in reader:
                    line = reader.line_num
                    if not any(cell.strip() for cell in record):
                        continue
                    if len(record) != len(header):
                        raise DataError(
                            f"{csv_path}: line {line} has {len(record)} fields, "
                            f"expected {len(header)}"
                        )
                    row = []
                    for i, cell in enumerate(record):
                        if i == fcol:
                            continue
                        try:
                            value = int(cell.strip())
                        except ValueError:
                            raise DataError(
                                f"{csv_path}: line {line}: '{header[i]}' value '{cell}' is not "
                                "an integer"
                            ) from None
                        if value < 0:
                            raise DataError(
                                f"{csv_path}: line {line}: '{header[i]}' value {value} is negative"
                            )
                        row.append(value)
                    filename = record[fcol].strip()
                    if not filename:
                        raise DataError(f"{csv_path}: line {line}: empty filename")
                    files.append(self.root / filename)
                    lines.append(line)
                    rows.append(row)
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{csv_path}: cannot parse CSV ({err})") from None
        if not rows:
            raise DataError(f"{csv_path}: no image rows after the header")
        return names, files, lines, np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)

    def _space(
        self,
        names: list[str],
        table: np.ndarray,
        sizes: Mapping[str, int] | Sequence[int] | None,
        cyclic: Sequence[str] | None,
    ) -> FactorSpace:
        csv_path = self.csv_path
        found = [int(m) + 1 for m in table.max(axis=0)]
        if sizes is None:
            given = found
        elif isinstance(sizes, Mapping):
            unknown = sorted(set(sizes) - set(names))
            if unknown:
                raise DataError(f"{csv_path}: sizes name unknown factors {unknown}; has {names}")
            given = [int(sizes.get(n, f)) for n, f in zip(names, found, strict=True)]
        else:
            if len(sizes) != len(names):
                raise DataError(f"{csv_path}: got {len(sizes)} sizes for {len(names)} factors")
            given = [int(s) for s in sizes]
        for name, size, need in zip(names, given, found, strict=True):
            if size < need:
                raise DataError(f"{csv_path}: factor '{name}' has value {need - 1} >= size {size}")
            if size < 2:
                raise DataError(f"{csv_path}: factor '{name}' needs at least 2 values; pass sizes")
        cyclic_set = set(cyclic or ())
        unknown = sorted(cyclic_set - set(names))
        if unknown:
            raise DataError(f"{csv_path}: cyclic names unknown factors {unknown}; has {names}")
        return FactorSpace(
            [Factor(n, s, n in cyclic_set) for n, s in zip(names, given, strict=True)]
        )

    def _check_distinct(self, space: FactorSpace, values: torch.Tensor, lines: list[int]) -> None:
        """Two rows with one factor vector make render() ambiguous; name both lines."""
        flat = space.ravel(values).tolist()
        seen: dict[int, int] = {}
        for line, key in zip(lines, flat, strict=True):
            if key in seen:
                raise DataError(
                    f"{self.csv_path}: line {line} repeats the factor values of line {seen[key]}"
                )
            seen[key] = line

    # -- images ----------------------------------------------------------------------
    def _check_images(self, lines: list[int]) -> tuple[int, int, int]:
        """Header-only pass: every image exists, opens, and ends up the same size."""
        from PIL import Image, UnidentifiedImageError

        shape: tuple[int, int] | None = None
        first = ""
        for file, line in zip(self.files, lines, strict=True):
            where = f"{self.csv_path}: line {line}"
            if not file.is_file():
                raise DataError(f"{where}: image file not found: {file}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(file) as img:
                        size = img.size
            except UnidentifiedImageError:
                raise DataError(f"{where}: {file} is not a readable image") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise DataError(
                    f"{where}: {file} is too large (decompression bomb guard)"
                ) from None
            except (OSError, ValueError) as err:
                raise DataError(f"{where}: cannot read image {file} ({err})") from None
            size = self._size or size
            if shape is None:
                shape, first = size, file.name
            elif size != shape:
                raise DataError(
                    f"{where}: image {file.name} is {size[0]}x{size[1]} but {first} is "
                    f"{shape[0]}x{shape[1]}; pass image_size to resize"
                )
        assert shape is not None
        return (self.channels, shape[1], shape[0])

    def _load(self, file: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if self._size is not None and img.size != self._size:
                    img = img.resize(self._size, Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{file}: cannot read image ({err})") from None
        if array.shape[:2] != self.image_shape[1:]:
            raise DataError(f"{file}: image size changed since the folder was opened")
        return array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        uniq, inverse = _unique_rows(rows)
        if len(uniq) == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        block = np.stack([self._load(self.files[r]) for r in uniq])
        return torch.from_numpy(np.ascontiguousarray(block[inverse.reshape(-1)]))

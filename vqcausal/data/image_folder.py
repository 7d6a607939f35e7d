"""A folder of images described by ``factors.csv``: any factor-labelled collection a user has."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import IndexedSource, unique_rows
from vqcausal.errors import DataError


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
        super().__init__(space, values, origin=self.csv_path)

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
        uniq, inverse = unique_rows(rows)
        if len(uniq) == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        block = np.stack([self._load(self.files[r]) for r in uniq])
        return torch.from_numpy(np.ascontiguousarray(block[inverse.reshape(-1)]))

"""Reading ``.npy`` arrays inside ``.npz`` archives without decoding them: where their bytes lie."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from vqcausal.errors import DataError


def npz_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's data in the file: past its local file header."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: corrupt zip entry for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def npy_data(path: Path, handle, offset: int, what: str) -> tuple[int, tuple[int, ...]]:
    """(file offset of the data, shape) of the uint8 ``.npy`` array whose header ``handle`` is
    at (file offset ``offset``); a file too short for that shape is refused."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as err:
        raise DataError(f"{path}: {what} is not a .npy array ({err})") from None
    if fortran or dtype != np.dtype(np.uint8):
        raise DataError(f"{path}: {what} must be a C-order uint8 array, got {dtype}")
    start = offset + handle.tell()
    need = start + int(np.prod(shape, dtype=np.int64))
    if os.path.getsize(path) < need:
        raise DataError(
            f"{path}: {what} is truncated: its header says {shape}, which needs {need:,} bytes, "
            f"the file has {os.path.getsize(path):,}"
        )
    return start, tuple(shape)

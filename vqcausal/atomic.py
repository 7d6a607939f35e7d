"""Whole-file writes: a reader (another process, a sweep on shared storage, a crash) sees the old
file or the new one, never half of one.

Each writes under a temporary name unique to this host and process, then renames it over the
target (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (with any library's own writer); renamed
    over ``path`` when the block ends cleanly, removed when it raises."""
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text under a temporary name and rename it over ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` under a temporary name and rename it."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)

"""Writing run folders: crash-safe checkpoints (reading them: :mod:`vqcausal.runs`).

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` holding

* ``model.safetensors``: the weights (no pickle),
* ``meta.json``: model args, the resolved config, step, stage, whether training finished,
* ``train_state.pt``: optimizer and RNG state for resuming (tensors and plain containers
  only, loaded with ``torch.load(weights_only=True)``).

It is written under a temporary name and renamed into place, then ``checkpoints/latest``
is replaced atomically, so a crash at any moment leaves the previous checkpoint intact.

What a run folder guarantees: one writer (training holds ``.lock`` for its whole life; the
operating system drops the lock when the process dies, however it dies), nothing read or
written outside the folder (``latest`` holds a checkpoint *name*, never a path, and a name
that resolves elsewhere is refused), and the last good checkpoint survives kill -9, SIGTERM
and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_model

from vqcausal.atomic import write_text_atomic
from vqcausal.config import Config
from vqcausal.runs import (
    LATEST,
    Checkpoint,
    CheckpointError,
    checkpoint_pointer,
    first_line,
    resume_hint,
)

LOCK = ".lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def new_run_dir(config: Config) -> Path:
    """A fresh, uniquely named run folder under ``config.runs``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.runs) / f"{config.name or config.data.dataset}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock while training writes into it; a second writer gets one line.

    filelock takes an OS lock (flock on Unix) on ``RUN/.lock``: the kernel releases it when the
    process ends in any way, kill -9 included, so a stale lock cannot block a later resume."""
    from filelock import FileLock, Timeout

    lock = FileLock(run_dir / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CheckpointError(
            f"{run_dir} is in use: another training process holds its lock; wait for it to "
            "end or stop it, then resume"
        ) from None
    try:
        yield
    finally:
        lock.release()


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    meta: dict,
    train_state: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint folder atomically and point ``latest`` at it."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(meta['step']):07d}"
    tmp = folder / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    except (OSError, RuntimeError, SafetensorError) as err:
        # torch and safetensors report a full disk as RuntimeError / SafetensorError text
        shutil.rmtree(tmp, ignore_errors=True)
        full = getattr(err, "errno", None) in DISK_FULL or _disk_full(folder)
        kept = checkpoint_pointer(folder) or "none yet"
        what = "the disk is full" if full else f"{type(err).__name__}: {first_line(err)}"
        raise CheckpointError(
            f"cannot write checkpoint {name} ({what}); the last good checkpoint ({kept}) is "
            f"kept; free space and {resume_hint(run_dir)}"
        ) from None
    final = folder / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_text_atomic(folder / LATEST, name)
    _prune(folder, keep, current=name)
    return final


def _disk_full(folder: Path, slack: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < slack
    except OSError:
        return False


def _prune(folder: Path, keep: int, current: str) -> None:
    finished = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in finished[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def load_train_state(ckpt: Checkpoint) -> dict | None:
    path = ckpt.path / "train_state.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise CheckpointError(f"{path}: cannot read training state ({err})") from None

"""Run folders and crash-safe checkpoints.

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
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from vqcausal.config import Config, ConfigError, from_dict
from vqcausal.errors import VQCausalError
from vqcausal.models.base import CausalImageModel, ModelArgs, ModelConfig, build_model

LATEST = "latest"
CHECKPOINT_NAME = re.compile(r"step-\d{7,12}")
LOCK = ".lock"
MAX_STEP = 2**53  # larger step counts are damaged files, not runs
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: the training pairs stage 2 learns from, encoded once by the frozen stage-1 model
LATENT_CACHE = Path("cache") / "stage2_latents.safetensors"
CACHE_KEYS = ("latents", "actions", "latents_next")


class CheckpointError(VQCausalError):
    """A run folder or checkpoint that cannot be used."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict  # checked by check_meta: step is an int in range, finished a bool

    @property
    def step(self) -> int:
        return self.meta["step"]

    @property
    def finished(self) -> bool:
        return self.meta.get("finished", False)


def _valid_step(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_STEP


def resume_hint(run_dir: Path) -> str:
    return f"resume with `python train.py --resume {run_dir}`"


def check_meta(meta: object) -> dict:
    """The fields every command relies on, with their types: a user-edited ``meta.json``
    (``"finished": "no"``, a step of 1e400) is refused, not half-read."""
    if not isinstance(meta, dict):
        raise TypeError("not a JSON object")
    step = meta.get("step")
    if not _valid_step(step):
        raise TypeError(f"step must be a whole number from 0 to 2^53, got {step!r:.40}")
    if type(meta.get("finished", False)) is not bool:
        raise TypeError(f"finished must be true or false, got {meta['finished']!r:.40}")
    if not isinstance(meta.get("model_args"), dict) or "image_shape" not in meta["model_args"]:
        raise KeyError("model_args.image_shape")
    loss = meta.get("last_loss")
    if loss is not None and not (isinstance(loss, int | float) and not isinstance(loss, bool)):
        raise TypeError(f"last_loss must be a number, got {loss!r:.40}")
    return meta


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text under a temporary name and rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
        kept = _pointer(folder) or "none yet"
        what = "the disk is full" if full else f"{type(err).__name__}: {_first_line(err)}"
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


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no detail"


def _pointer(folder: Path) -> str | None:
    try:
        return (folder / LATEST).read_text(encoding="utf-8", errors="replace")[:64].strip()
    except OSError:
        return None


def _prune(folder: Path, keep: int, current: str) -> None:
    finished = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in finished[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def check_run_dir(run_dir: Path) -> None:
    """A missing run folder, or a file given as one, is a one-line CheckpointError."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder not found: {run_dir}")


def latest_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest complete checkpoint of a run folder."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint yet (is it a vqcausal run folder?)")
    name = _pointer(pointer.parent) or ""
    if not CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(
            f"{pointer}: {name[:40]!r} is not a checkpoint name (step-NNNNNNN); a run folder "
            "points only at its own checkpoints"
        )
    path = run_dir / "checkpoints" / name
    if path.is_symlink() or not path.resolve().is_relative_to(run_dir.resolve()):
        raise CheckpointError(f"{path} leads outside the run folder {run_dir}; refused")
    try:
        with (path / "meta.json").open(encoding="utf-8") as f:
            meta = check_meta(json.load(f, parse_constant=_no_constant))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise CheckpointError(
            f"{path}: damaged checkpoint description ({_first_line(err)})"
        ) from None
    return Checkpoint(path, meta)


def _no_constant(name: str) -> None:
    """NaN / Infinity in a user-editable JSON file read as null: a field that must be a
    number then fails its type check with one line (an unset ``last_loss`` stays unset)."""
    return None


#: model config keys whose default changed the network's shape, with the value that rebuilds
#: checkpoints written before the key existed
LEGACY_MODEL_KEYS = {"classifier_layers": 0, "transition": {"update_expansion": 1}}


def _with_legacy(stored: dict, legacy: dict) -> dict:
    """``stored`` with the legacy values filled in where it lacks a key (tables merged)."""
    merged = dict(stored)
    for key, value in legacy.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_legacy(merged[key], value)
    return merged


def model_args_from_meta(meta: dict) -> ModelArgs:
    raw = meta["model_args"]
    try:
        shape, names = list(raw["image_shape"]), list(raw["action_names"])
        if len(shape) != 3 or not all(type(v) is int and v > 0 for v in shape):
            raise TypeError(f"image_shape {shape} is not three positive integers")
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"action_names {names} is not a list of names")
        if not isinstance(raw["model"], dict):
            raise TypeError("model is not a table")
        # keys added since a checkpoint was written take the value that rebuilds its model
        stored = _with_legacy(raw["model"], LEGACY_MODEL_KEYS)
        model = from_dict(ModelConfig, stored, prefix="model.")
        return ModelArgs(
            shape,
            names,
            model,
            raw.get("action_targets"),
            raw.get("action_steps"),
        )
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"checkpoint model description is unusable ({err})") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; any mismatch is a one-line CheckpointError."""
    file = path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except (OSError, SafetensorError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        lines = lines or [type(err).__name__]
        # torch heads its list with "Error(s) in loading state_dict for X:"; say the first one
        detail = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        raise CheckpointError(f"{file}: cannot load weights ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: weights do not match the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )


def load_model_from_run(run_dir: str | Path) -> tuple[CausalImageModel, Checkpoint]:
    """Rebuild the model of a run from its newest checkpoint alone (no config file needed)."""
    ckpt = latest_checkpoint(run_dir)
    try:
        model = build_model(model_args_from_meta(ckpt.meta))
    except ValueError as err:
        raise CheckpointError(f"{ckpt.path}: cannot build its model ({err})") from None
    load_weights(model, ckpt.path)
    model.eval()
    return model, ckpt


def load_train_state(ckpt: Checkpoint) -> dict | None:
    path = ckpt.path / "train_state.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise CheckpointError(f"{path}: cannot read training state ({err})") from None


def metric_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(line, record) of each usable line of a ``metrics.jsonl``: a JSON object whose step is a
    whole number in range. The file is user-editable and a crash can cut its last line, so
    anything else (junk, binary, NaN or string steps) is skipped, with one warning line."""
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            try:
                record = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict) and _valid_step(record.get("step")):
                yield line, record
            elif line.strip():
                skipped += 1
    if skipped:
        print(f"warning: {path}: skipped {skipped} damaged line(s)", file=sys.stderr)


def read_latent_cache(run_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """The run's stage-2 training pairs as latents (``CACHE_KEYS``), or None without a cache."""
    path = Path(run_dir) / LATENT_CACHE
    if not path.exists():
        return None
    try:
        data = load_file(str(path))
        cache = {k: data[k] for k in CACHE_KEYS}
    except (OSError, SafetensorError, KeyError) as err:
        raise CheckpointError(
            f"{path}: damaged stage-2 cache ({_first_line(err)}); delete it (training "
            "re-encodes it)"
        ) from None
    rows = {len(v) for v in cache.values()}
    if len(rows) != 1 or cache["latents"].shape != cache["latents_next"].shape:
        raise CheckpointError(f"{path}: damaged stage-2 cache (its tensors do not pair up)")
    return cache


#: ``data.stride`` as runs before it became per source recorded it for every dataset
OLD_STRIDE_DEFAULT = 3


def config_from_meta(meta: dict) -> Config:
    try:
        if not isinstance(meta["config"], dict):
            raise TypeError("config is not a table")
        config = meta["config"]
        data = config.get("data")
        old = isinstance(data, dict) and data.get("dataset") != "pendulum"
        if old and data.get("stride") == OLD_STRIDE_DEFAULT:  # the old default, unused there
            config = {**config, "data": {k: v for k, v in data.items() if k != "stride"}}
        return from_dict(Config, config)
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"checkpoint config is unusable ({err})") from None


def newest_finished_run(runs: str | Path = "runs") -> Path:
    """The most recently finished run under ``runs`` (what ``vqcausal retrieve`` uses)."""
    root = Path(runs)
    candidates = []
    for pointer in root.glob(f"*/checkpoints/{LATEST}") if root.is_dir() else []:
        run_dir = pointer.parent.parent
        try:
            ckpt = latest_checkpoint(run_dir)
        except CheckpointError:
            continue
        if ckpt.finished:
            candidates.append((pointer.stat().st_mtime, run_dir))
    if not candidates:
        raise CheckpointError(
            f"no finished run under {root}/; train one with `python train.py` "
            "or name one with --run RUN_DIR"
        )
    return max(candidates)[1]

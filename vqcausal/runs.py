"""Reading run folders: their newest checkpoint, the model and config it holds, their logs.

What inference, evaluation, reports and sweeps need of a run folder, without the training
code that writes one (``vqcausal.train.checkpoint``). A run folder::

    RUN/config.toml                  the resolved config (``train.py --config RUN/config.toml``)
    RUN/metrics.jsonl                one JSON record per logged step
    RUN/checkpoints/latest           the *name* of the newest complete checkpoint
    RUN/checkpoints/step-NNNNNNN/    model.safetensors, meta.json, train_state.pt
    RUN/cache/stage2_latents.safetensors   stage 2's training pairs, encoded once

Nothing here follows a path out of the folder: ``latest`` names a checkpoint, and a name
that resolves elsewhere is refused.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model

from vqcausal.config import Config, ConfigError, from_dict
from vqcausal.errors import VQCausalError
from vqcausal.models.base import CausalImageModel, ModelArgs, ModelConfig
from vqcausal.models.build import build_model

LATEST = "latest"


CHECKPOINT_NAME = re.compile(r"step-\d{7,12}")


MAX_STEP = 2**53  # larger step counts are damaged files, not runs


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


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no detail"


def checkpoint_pointer(folder: Path) -> str | None:
    try:
        return (folder / LATEST).read_text(encoding="utf-8", errors="replace")[:64].strip()
    except OSError:
        return None


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
    name = checkpoint_pointer(pointer.parent) or ""
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
            f"{path}: damaged checkpoint description ({first_line(err)})"
        ) from None
    return Checkpoint(path, meta)


def _no_constant(name: str) -> None:
    """NaN / Infinity in a user-editable JSON file read as null: a field that must be a
    number then fails its type check with one line (an unset ``last_loss`` stays unset)."""
    return None


#: model config keys whose default changed the network's shape, with the value that rebuilds
#: checkpoints written before the key existed
LEGACY_MODEL_KEYS = {
    "classifier_layers": 0,
    "classifier_codebook": False,
    "transition": {"update_expansion": 1},
}


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
    skip = getattr(model, "unused_checkpoint_tensors", set)()
    unexpected = [k for k in unexpected if k not in skip]
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: weights do not match the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )


def load_model_from_run(
    run_dir: str | Path, inference: bool = False
) -> tuple[CausalImageModel, Checkpoint]:
    """Rebuild the model of a run from its newest checkpoint alone (no config file needed);
    ``inference``: eval-only, quicker to start (see ``build_model``)."""
    ckpt = latest_checkpoint(run_dir)
    try:
        model = build_model(model_args_from_meta(ckpt.meta), inference=inference)
    except ValueError as err:
        raise CheckpointError(f"{ckpt.path}: cannot build its model ({err})") from None
    load_weights(model, ckpt.path)
    model.eval()
    return model, ckpt


def leaves(record: dict, prefix: str = "", sep: str = ".") -> Iterator[tuple[str, Any]]:
    """(``dotted.key``, value) for every non-dict value of a nested record, depth first
    (``sep`` joins the keys)."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, f"{name}{sep}", sep)
        else:
            yield name, value


def finite_number(value: object) -> float | None:
    """A finite float, or None for anything else (bools, strings, NaN, inf, None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
            f"{path}: damaged stage-2 cache ({first_line(err)}); delete it (training re-encodes it)"
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

"""Experiment trackers (TensorBoard, W&B, MLflow, Aim, ...) through ``accelerate``.

``train.log_with`` names any tracker accelerate supports, a list of them, ``all`` (every one
installed), ``none``, or ``auto`` (the default: TensorBoard when it is installed, as the dev
extras do). accelerate starts and feeds them (``Accelerator(log_with=...)``,
``init_trackers``, ``accelerator.log``); this module only checks the names up front, keeps
every tracker's files inside the run folder, flattens our nested records into the scalar
tags trackers take, and hands figures to the trackers that take images.

* Scalars: every ``metrics.jsonl`` record at its step, nested keys joined with ``/``
  (``eval/retrieval_synthesis``), so a dashboard groups them.
* Figures: the PNGs of each in-training evaluation (reconstructions, intervention grid,
  learned adjacency) as images (TensorBoard, W&B, Aim, ...) or artifacts (MLflow).
* Hyperparameters: the resolved config, flattened (``train.lr``, ``model.latent``, ...).
* Summary: the final held-out metrics under ``final/`` at the last step (W&B: the run summary).
* Where files go: TensorBoard and Aim under ``RUN/vqcausal``; MLflow into ``RUN/mlruns``
  unless ``MLFLOW_TRACKING_URI`` names a store; W&B into ``RUN/wandb`` (``WANDB_MODE=offline``
  works; nothing needs an account). ``tensorboard --logdir runs/`` shows every run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from vqcausal.config import ConfigError
from vqcausal.runs import finite_number, leaves

PROJECT = "vqcausal"  # the tracker project (W&B, MLflow experiment, TensorBoard subfolder)
NONE, AUTO, ALL = "none", "auto", "all"


def _first_line(err: BaseException) -> str:
    """An exception as one line: its message's first line, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def known_trackers() -> list[str]:
    from accelerate.utils import LoggerType

    return [t for t in LoggerType.list() if t != ALL]


def installed_trackers() -> list[str]:
    from accelerate.tracking import get_available_trackers

    return [str(t.value) for t in get_available_trackers()]


def resolve_trackers(log_with: str | list[str]) -> list[str]:
    """The tracker names ``train.log_with`` asks for; unknown or missing ones are one line."""
    names = [log_with] if isinstance(log_with, str) else list(log_with)
    if names in ([NONE], []):
        return []
    installed = installed_trackers()
    if names == [AUTO]:
        return ["tensorboard"] if "tensorboard" in installed else []
    if ALL in names:
        return installed
    known = known_trackers()
    for name in names:
        if name not in known:
            raise ConfigError(
                f"train.log_with: unknown tracker {name!r}; choose from none, auto, all, "
                + ", ".join(known)
            )
        if name not in installed:
            raise ConfigError(
                f"train.log_with: {name} is not installed (pip install {name}), or use none"
            )
    return list(dict.fromkeys(names))


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Nested numbers -> ``{"a/b": x}``; booleans as 0 / 1; strings, lists and non-finite
    numbers are left out."""
    out: dict[str, float] = {}
    for name, value in leaves(record, prefix, sep="/"):
        number = float(value) if isinstance(value, bool) else finite_number(value)
        if number is not None:
            out[name] = number
    return out


def hyperparameters(config: dict, prefix: str = "") -> dict[str, Any]:
    """The resolved config as flat ``section.key`` parameters; lists as JSON text (trackers
    take scalars and strings only)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, list) or value is None:
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def tracker_settings(trackers: list[str], run_dir: Path, tags: list[str]) -> dict[str, dict]:
    """``init_kwargs`` that keep each tracker's files in the run folder and name the run."""
    run = run_dir.name
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI"):
        # a store of the run's own: MLflow's file store (its database store needs SQLAlchemy,
        # which the light mlflow-skinny leaves out); MLFLOW_TRACKING_URI picks any other
        os.environ["MLFLOW_TRACKING_URI"] = (run_dir / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    labels = dict(t.split("=", 1) if "=" in t else (t, "") for t in tags)
    return {
        "wandb": {"dir": str(run_dir), "name": run, "id": run, "resume": "allow", "tags": tags}
        | ({"group": labels["sweep"]} if "sweep" in labels else {}),
        "mlflow": {"run_name": run, "tags": labels},
        "comet_ml": {"name": run},
        "aim": {},
    }


def start(accelerator, trackers: list[str], run_dir: Path, config: dict, tags: list[str]) -> None:
    """Start the trackers accelerate was given, with the config as hyperparameters."""
    if not trackers:
        return
    project = accelerator.project_configuration
    project.project_dir = project.logging_dir = str(run_dir)
    settings = tracker_settings(trackers, run_dir, tags)
    params = hyperparameters(config) | {"tags": ",".join(tags)}
    try:
        accelerator.init_trackers(PROJECT, config=params, init_kwargs=settings)
    except Exception as err:  # a tracker's own failure (a bad server address, a bad store)
        raise ConfigError(
            f"train.log_with: a tracker could not start: {_first_line(err)}"
        ) from None


def log_images(accelerator, pngs: dict[str, Path], step: int) -> None:
    """Figures as images where the tracker takes images, as artifacts where it takes files."""
    if not accelerator.trackers or not pngs:
        return
    import numpy as np
    from PIL import Image

    arrays = {}
    for name, path in pngs.items():
        with Image.open(path) as image:
            arrays[name] = np.asarray(image.convert("RGB"))[None]
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "tensorboard":
                tracker.log_images(arrays, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({k: list(v) for k, v in arrays.items()}, step=step)
            elif hasattr(tracker, "log_artifact"):  # MLflow
                for path in pngs.values():
                    tracker.log_artifact(str(path), artifact_path="figures")
        except Exception as err:  # figures are extras: a tracker's failure must not stop training
            sys.stderr.write(
                f"warning: {tracker.name} did not take the figures: {_first_line(err)}\n"
            )


def log_summary(accelerator, metrics: dict, step: int) -> None:
    """The final held-out metrics: ``final/...`` at the last step, and W&B's run summary."""
    if not accelerator.trackers:
        return
    values = flatten(metrics, "final/")
    accelerator.log(values, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.tracker.summary.update(values)

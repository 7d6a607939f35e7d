"""Entry point behind ``train.py`` and ``vqcausal train``.

    accelerate launch --config_file configs/accelerate/cpu.yaml train.py --config FILE.toml
    python train.py --set train.stage1_steps=500 --stage 1
    python train.py --resume runs/shapes3d-20261123-101500
    python train.py --set transitions.imbalance=100 --stage1-from runs/shapes3d-20261123-101500

A new run gets a fresh folder under ``runs/`` holding ``config.toml``, ``checkpoints/``,
``metrics.jsonl``, ``figures/`` and ``summary.json``. ``--resume`` continues the newest
checkpoint of a run with the run's own config (``--set train.*`` may extend the steps).
``--stage1-from`` starts a new run from another run's finished stage 1 (trained with
``--stage 1``), so that runs differing only in stage-2 settings share one autoencoder
(:mod:`vqcausal.train.shared_stage1`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from vqcausal.atomic import write_text_atomic
from vqcausal.commandline import OneLineParser, add_config_args, config_from_args, run
from vqcausal.config import (
    DEFAULT_EXPERIMENT,
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    to_dict,
)
from vqcausal.data.registry import load_source
from vqcausal.data.source import ConceptScaler, GroundTruthSource
from vqcausal.data.transitions import TransitionSampler, action_concept_steps
from vqcausal.runs import (
    config_from_meta,
    latest_checkpoint,
    load_weights,
    model_args_from_meta,
    resume_hint,
)
from vqcausal.train.checkpoint import DISK_FULL, new_run_dir, run_lock
from vqcausal.train.shared_stage1 import (
    adopt_stage1,
    load_stage1_weights,
    stage1_checkpoint,
    with_stage1_measurements,
)
from vqcausal.train.signals import sigterm_as_interrupt

if TYPE_CHECKING:  # heavy imports stay lazy at run time
    from accelerate import Accelerator

    from vqcausal.models.base import CausalImageModel
    from vqcausal.runs import Checkpoint

STAGES = {"all": (1, 2), "1": (1,), "2": (2,)}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="train.py", description="Train a vqcausal model.")
    add_config_args(parser)
    parser.add_argument("--stage", choices=list(STAGES), default="all", help="which stage(s)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    parser.add_argument(
        "--stage1-from",
        dest="stage1_from",
        metavar="RUN_DIR",
        help="start a new run from this run's finished stage 1 (only stage-2 settings differ)",
    )
    return parser


def config_toml(config: Config) -> str:
    """The run's config as TOML; unset (None) values are left out, as TOML has no null."""

    def drop_none(data: dict) -> dict:
        return {
            k: drop_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None
        }

    return tomli_w.dumps(drop_none(to_dict(config)))


def fit_to_data(config: Config, source: GroundTruthSource) -> Config:
    """``config`` with what comes from the data filled in, so that ``config.toml`` records it:
    the pendulum's grid stride, and for ``scm`` one concept per label of the source (its
    factors, or the concepts it defines, as the pendulum does). A setting that cannot fit the
    data is a ConfigError, before anything is written."""
    stride = getattr(source, "stride", None)
    if config.data.dataset == "pendulum" and stride is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, stride=stride))
    scm = config.model.scm
    names = source.concept_names
    if config.model.latent != "scm" or scm.concepts == len(names):
        return config
    if scm.concepts is not None:
        raise ConfigError(
            f"model.scm.concepts = {scm.concepts} does not fit the {source.name} data, which "
            f"has {len(names)} concepts ({', '.join(names)}); leave it unset to take them"
        )
    scm = dataclasses.replace(scm, concepts=len(names))
    model = dataclasses.replace(config.model, scm=scm)
    return dataclasses.replace(config, model=model)


def build_training(
    args: argparse.Namespace,
) -> tuple[Config, GroundTruthSource, CausalImageModel, Path, Accelerator, Checkpoint | None]:
    """Config, source, model, run folder, accelerator and resume point for the command line's
    arguments (``build_parser``): what ``train.py`` trains, and what ``tools/bench_train_time.py``
    times."""
    import torch
    from accelerate import Accelerator

    from vqcausal.models.base import ModelArgs
    from vqcausal.models.build import build_model

    resume = None
    if args.resume:
        if args.config or args.dataset or args.path:
            raise ConfigError("--resume uses the run's own config; only --set train.* may change")
        resume = latest_checkpoint(args.resume)
        base = config_from_meta(resume.meta)
        bad = [o for o in args.overrides if not o.strip().startswith("train.")]
        if bad:
            raise ConfigError(f"--resume accepts only train.* overrides, got {bad[0]}")
        config = from_dict(Config, apply_overrides(to_dict(base), args.overrides))
    else:
        config = config_from_args(args, default=DEFAULT_EXPERIMENT)
    from vqcausal.models.base import LATENTS

    if config.model.latent not in LATENTS:
        raise ConfigError(
            f"model.latent '{config.model.latent}' is unknown; choose from {', '.join(LATENTS)}"
        )

    source = load_source(config.data)
    if resume is None:
        config = fit_to_data(config, source)
    down = 2 ** len(config.model.autoencoder.widths)
    c, h, w = source.image_shape
    if h % down or w % down:
        raise ConfigError(
            f"image size {h}x{w} is not divisible by 2^{len(config.model.autoencoder.widths)}; "
            "change model.autoencoder.widths or data.image_size"
        )
    if resume is None:
        sampler = TransitionSampler(source, config.transitions)
        targets, steps = action_concept_steps(sampler, ConceptScaler(source, seed=config.seed))
        model_args = ModelArgs([c, h, w], source.space.action_names, config.model, targets, steps)
    else:
        model_args = model_args_from_meta(resume.meta)
    if args.stage1_from:  # continues from another run's stage 1 as a resumed run would
        resume = stage1_checkpoint(args.stage1_from, config, model_args)
        model_args = with_stage1_measurements(model_args, resume)
    torch.manual_seed(config.seed)
    model = build_model(model_args)
    if args.stage1_from:
        load_stage1_weights(model, resume)
    elif resume is not None:
        load_weights(model, resume.path)

    from vqcausal.train.trackers import resolve_trackers

    trackers = resolve_trackers(config.train.log_with)  # before any folder: a bad name writes none
    accelerator = Accelerator(
        mixed_precision=config.train.mixed_precision,
        log_with=trackers or None,
        project_dir=config.runs,  # the run folder once it exists (trackers.start)
    )
    if args.resume:
        run_dir = Path(args.resume)  # latest_checkpoint checked that the checkpoint is inside
    elif accelerator.is_main_process:
        run_dir = new_run_dir(config)
        write_text_atomic(run_dir / "config.toml", config_toml(config))
        if resume is not None:
            adopt_stage1(resume, Path(args.stage1_from), run_dir)
    else:
        run_dir = None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        run_dir = broadcast_object_list([run_dir])[0]
    from vqcausal.train import trackers as tracking

    tracking.start(accelerator, trackers, run_dir, to_dict(config), config.tags)
    return config, source, model, run_dir, accelerator, resume


@contextlib.contextmanager
def disk_full_is_resumable(run_dir: Path) -> Iterator[None]:
    """A full disk anywhere in training (the log, figures, the cache) is one line with the way
    back; checkpoints say the same themselves (``save_checkpoint``)."""
    from vqcausal.train.loop import TrainingError

    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise TrainingError(
            f"the disk is full (writing {err.filename or 'a file'}); the last good checkpoint "
            f"is kept; free space and {resume_hint(run_dir)}"
        ) from None


@contextlib.contextmanager
def background_writes_are_one_line() -> Iterator[None]:
    """A tracker's writer thread that fails to write (a full disk, a lost mount) says so in
    one line instead of a thread traceback; training itself meets the same error and stops
    with the way back."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError):
            thread = args.thread.name if args.thread else "a thread"
            # one write: print() writes the text and its newline apart, and the main thread's
            # own error line could land between them
            sys.stderr.write(f"warning: {thread} could not write: {args.exc_value}\n")
            sys.stderr.flush()
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _resume_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """A resume holds the run's lock *before* it reads the newest checkpoint: a second writer
    still training there rotates checkpoints away under the reader (main process only; the
    others read what the main one holds)."""
    from accelerate import PartialState

    if not args.resume or not PartialState().is_main_process:
        return contextlib.nullcontext()
    latest_checkpoint(args.resume)  # a folder that is no run is one line, before any lock file
    return run_lock(Path(args.resume))


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.stage1_from:  # before the resume takes the run's lock
        raise ConfigError("--resume continues a run, --stage1-from starts one: give one of them")
    with _resume_lock(args):
        _train_locked(args)


def _train_locked(args: argparse.Namespace) -> None:
    from vqcausal.train.loop import Trainer

    config, source, model, run_dir, accelerator, resume = build_training(args)
    new_run = accelerator.is_main_process and not args.resume
    lock = run_lock(run_dir) if new_run else contextlib.nullcontext()
    with (
        lock,
        sigterm_as_interrupt(),
        disk_full_is_resumable(run_dir),
        background_writes_are_one_line(),
    ):
        if accelerator.is_main_process:
            print(f"run folder: {run_dir}")
        trainer = Trainer(config, source, model, run_dir, accelerator, resume)
        try:
            trainer.run(STAGES[args.stage])
        finally:
            accelerator.end_training()  # trackers flush and close, also on Ctrl-C
    if accelerator.is_main_process:
        state = "finished" if trainer.step >= trainer.total_steps else "stopped"
        print(f"{state} at step {trainer.step}; run folder: {run_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _train(args))


if __name__ == "__main__":
    sys.exit(main())

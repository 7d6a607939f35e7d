"""What ``vqcausal evaluate`` checks before it computes or writes anything: the run (finished,
its model matching its data source), the options, and the held-out pairs it will use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vqcausal.config import Config
from vqcausal.data.source import GroundTruthSource
from vqcausal.data.transitions import SPLITS, Transitions, TransitionSampler
from vqcausal.errors import VQCausalError
from vqcausal.models.base import CausalImageModel
from vqcausal.runs import Checkpoint

DEFAULT_PAIRS = 1024
FAST_PAIRS = 128
PAIR_SEED_OFFSET = 104729  # the same offset as the in-training EvalSet


class EvaluationError(VQCausalError):
    """A run or option that ``vqcausal evaluate`` cannot use."""


@dataclass
class Inputs:
    """Everything validated before anything is written."""

    run_dir: Path
    out_dir: Path
    model: CausalImageModel
    checkpoint: Checkpoint
    config: Config
    source: GroundTruthSource
    sampler: TransitionSampler
    split: str
    seed: int
    fast: bool
    transitions: Transitions
    # the stage-2 training pairs as latents, for the transition's fit (None without a cache)
    training_cache: dict[str, torch.Tensor] | None


def prepare(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    pairs: int | None = None,
    fast: bool = False,
    seed: int | None = None,
) -> Inputs:
    """Load and check the run, its data and the options; writes nothing."""
    from vqcausal.data.registry import load_source
    from vqcausal.runs import config_from_meta, load_model_from_run, read_latent_cache

    if split not in SPLITS:
        raise EvaluationError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    if pairs is not None and pairs < 1:
        raise EvaluationError(f"--pairs must be at least 1, got {pairs}")
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir / "eval"
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"output folder {out_dir} is a file; name a folder with --out")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise EvaluationError(f"cannot create output folder {out_dir}: {parent} is a file")
    model, ckpt = load_model_from_run(run_dir)
    if not ckpt.finished:
        raise EvaluationError(
            f"{run_dir}: training has not finished (newest checkpoint at step {ckpt.step}); "
            f"finish it with `python train.py --resume {run_dir}`"
        )
    config = config_from_meta(ckpt.meta)
    source = load_source(config.data)
    if list(source.image_shape) != list(model.args.image_shape):
        raise EvaluationError(
            f"{run_dir}: the model takes {tuple(model.args.image_shape)} images but its data "
            f"source now gives {tuple(source.image_shape)}"
        )
    if list(source.space.action_names) != list(model.args.action_names):
        raise EvaluationError(f"{run_dir}: the data source's actions differ from the model's")
    sampler = TransitionSampler(source, config.transitions)
    seed = config.seed if seed is None else int(seed)
    n = pairs if pairs is not None else (FAST_PAIRS if fast else DEFAULT_PAIRS)
    transitions = sampler.sample(n, split, torch.Generator().manual_seed(seed + PAIR_SEED_OFFSET))
    cache = read_latent_cache(run_dir)
    return Inputs(
        run_dir,
        out_dir,
        model,
        ckpt,
        config,
        source,
        sampler,
        split,
        seed,
        fast,
        transitions,
        cache,
    )

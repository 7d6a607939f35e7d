"""A new run that starts from another run's finished stage 1 (``train.py --stage1-from RUN``).

Stage 1 learns the autoencoder from images alone (no objective reads an action); stage 2 learns
the transition and the retrieval heads from action-labelled pairs. Runs that differ only in
what stage 2 sees (an imbalance sweep's rho or held-out action, a study's stage-2 levers) can
therefore share one stage 1 instead of training the same autoencoder once per run: a sweep
then buys a longer stage 1 for the time it spent on repeats.

What may differ is listed below (``STAGE2_ONLY``: stage-2 training, the pairs' action mix, the
stage-2 heads' settings); everything else of the config must equal the stage-1 run's, and the
model must be fitted to the same data, or the start is refused in one line. Only the stage-1
modules' weights are taken over; the stage-2 heads start from the run's own initialisation.

One caveat: stage 1 renders the images of *pairs*, so the pairs' action mix
(``transitions.imbalance``, ``rare_*``) changes which images it saw, though not what kind (images
of the same training split): a cell at rho = 100 that starts from
a uniform-action stage 1 has an autoencoder trained on the uniform stream (at the cpu size's
3,000 steps, 29.71 against 29.70 dB). The value mix (``transitions.value_imbalance``) changes the
images themselves and may not differ.

The new run continues from the stage-1 checkpoint as a resumed run would: its step counter,
its random state (so a run started this way with the stage-1 run's own config trains the very
model the uninterrupted run trains, bit for bit on a CPU), and a copy of the stage-1 records of
``metrics.jsonl`` and ``figures/``, so that its folder shows the whole curve. The stage-1
folder is only read; ``stage1_from.json`` in the new run says where its stage 1 came from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from vqcausal.atomic import write_json_atomic
from vqcausal.config import Config, ConfigError, to_dict
from vqcausal.models.base import CausalImageModel, ModelArgs
from vqcausal.runs import (
    Checkpoint,
    CheckpointError,
    config_from_meta,
    first_line,
    latest_checkpoint,
    leaves,
)

#: config keys a run may change from the run whose stage 1 it starts from: read by stage 2,
#: evaluation or bookkeeping only (stage 1 reads images, never actions; see the caveat above)
STAGE2_ONLY = frozenset(
    {
        "runs",
        "name",
        "tags",
        "transitions.imbalance",
        "transitions.rare_action",
        "transitions.rare_examples",
        "transitions.balanced_test",
        "train.stage2_steps",
        "train.stage2_batch_size",
        "train.stage2_lr",
        "train.cache_pairs",
        "train.balance_actions",
        "train.reverse_pairs",
        "train.action_focus",
        "train.focus_by",
        "train.focus_floor",
        "train.data_workers",
        "train.eval_pairs",
        "train.eval_every",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.compile",
        "train.channels_last",
        "train.log_with",
        # the stage-2 heads: built fresh, only the stage-1 modules' weights are taken over
        "model.transition.*",
        "model.classifier_hidden",
        "model.classifier_layers",
        "model.classifier_counterfactuals",
        "model.classifier_codebook",
        "model.retrieval",
    }
)

#: what the model takes from the data besides its config: must be the stage-1 run's
DATA_FITTED = ("image_shape", "action_names")
#: measured on a sample of the run's own training pairs (``action_concept_steps``), so a mix
#: of actions other than the stage-1 run's measures them a little differently: the new run
#: takes the stage-1 run's (only an ``scm`` latent reads them)
MEASURED = ("action_targets", "action_steps")

PROVENANCE = "stage1_from.json"


def flat_config(config: Config) -> dict[str, object]:
    """``{"section.key": value}`` of a resolved config."""
    return dict(leaves(to_dict(config)))


def stage2_only(key: str) -> bool:
    """Whether a dotted config key may differ from the stage-1 run's (``STAGE2_ONLY``; an
    entry ``section.*`` covers the section)."""
    return key in STAGE2_ONLY or any(
        key.startswith(entry[:-1]) for entry in STAGE2_ONLY if entry.endswith(".*")
    )


def load_stage1_weights(model: CausalImageModel, ckpt: Checkpoint) -> None:
    """The stage-1 modules' tensors of a checkpoint, strictly; the stage-2 heads keep the
    initialisation the run's seed gave them (the stage-1 run's own, when their config is the
    same: stage 1 never updates them)."""
    stage1 = {id(m) for m in model.stage1_modules()}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in stage1)
    wanted = {k for k in model.state_dict() if k.startswith(prefixes)}
    file = ckpt.path / "model.safetensors"
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file}: cannot load weights ({first_line(err)})") from None
    missing = wanted - tensors.keys()
    if missing:
        raise CheckpointError(f"{file}: lacks {len(missing)} stage-1 tensors, e.g. {min(missing)}")
    try:
        model.load_state_dict({k: tensors[k] for k in wanted}, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: stage-1 weights do not fit ({first_line(err)})") from None


def with_stage1_measurements(model_args: ModelArgs, ckpt: Checkpoint) -> ModelArgs:
    """``model_args`` with the stage-1 run's measured action targets and steps."""
    stored = ckpt.meta.get("model_args") or {}
    return dataclasses.replace(model_args, **{key: stored.get(key) for key in MEASURED})


def stage1_checkpoint(run_dir: str | Path, config: Config, model_args: ModelArgs) -> Checkpoint:
    """The checkpoint of ``run_dir`` that ends its stage 1, checked against the new run's
    config and model; anything that would make the shared stage 1 another run's is one line."""
    ckpt = latest_checkpoint(run_dir)
    stage1_steps = int(ckpt.meta.get("stage1_steps", -1))
    if ckpt.step != stage1_steps:
        where = "has not finished" if ckpt.step < stage1_steps else "has gone past"
        raise ConfigError(
            f"--stage1-from {run_dir}: its newest checkpoint (step {ckpt.step}) {where} its "
            f"stage 1 ({stage1_steps} steps); train it with --stage 1"
        )
    mine, theirs = flat_config(config), flat_config(config_from_meta(ckpt.meta))
    differ = sorted(
        key
        for key in mine.keys() | theirs.keys()
        if not stage2_only(key) and mine.get(key) != theirs.get(key)
    )
    if differ:
        key = differ[0]
        raise ConfigError(
            f"--stage1-from {run_dir}: its stage 1 was trained with {key} = "
            f"{theirs.get(key)!r}, this run has {mine.get(key)!r} ({len(differ)} stage-1 "
            "setting(s) differ); only stage-2 settings may change"
        )
    stored, fitted = ckpt.meta.get("model_args") or {}, json.loads(json.dumps(model_args.to_dict()))
    if any(stored.get(key) != fitted.get(key) for key in DATA_FITTED):
        raise ConfigError(
            f"--stage1-from {run_dir}: its model was built from another description "
            "(other image shape or actions); train a stage 1 for this run"
        )
    return ckpt


def adopt_stage1(ckpt: Checkpoint, source_run: Path, run_dir: Path) -> None:
    """Copy the stage-1 records (metrics, figures) into the new run and write where they came
    from. The trainer then drops any record past the checkpoint's step, as for every run it
    continues (``Trainer.truncate_metrics``)."""
    records = source_run / "metrics.jsonl"
    if records.is_file():
        shutil.copyfile(records, run_dir / "metrics.jsonl")
    figures = source_run / "figures"
    if figures.is_dir():
        (run_dir / "figures").mkdir(exist_ok=True)
        for png in figures.glob("*.png"):
            if png.is_file() and not png.is_symlink():
                shutil.copyfile(png, run_dir / "figures" / png.name)
    provenance = {
        "run": str(source_run.resolve()),
        "checkpoint": ckpt.path.name,
        "step": ckpt.step,
        "saved_at": ckpt.meta.get("saved_at"),
    }
    write_json_atomic(run_dir / PROVENANCE, provenance)

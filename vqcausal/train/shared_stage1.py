"""A new run that starts from another run's finished stage 1 (``train.py --stage1-from RUN``).

Stage 1 learns the autoencoder from images alone (no objective reads an action); stage 2 learns
the transition and the retrieval heads from action-labelled pairs. Runs that differ only in
what stage 2 sees (an imbalance sweep's rho or held-out action, a study's stage-2 levers) can
therefore share one stage 1 instead of training the same autoencoder once per run: a sweep
then buys a longer stage 1 for the time it spent on repeats.

What may differ is listed below (``STAGE2_ONLY``); everything else of the config must equal the
stage-1 run's, and the model must be built from the same description, or the start is refused
in one line. One caveat is stated where it is used: stage 1 renders the images of *pairs*, so
the action mix of the pairs (``transitions.imbalance``, ``rare_*``) changes which images it saw,
though not what it learns from (single images of the same training split); the value mix
(``transitions.value_imbalance``) changes the images themselves and may not differ.

The new run continues from the stage-1 checkpoint as a resumed run would: its step counter,
its random state (so a run started this way with the stage-1 run's own config trains the very
model the uninterrupted run trains, bit for bit on a CPU), and a copy of the stage-1 records of
``metrics.jsonl`` and ``figures/``, so that its folder shows the whole curve. The stage-1
folder is only read; ``stage1_from.json`` in the new run says where its stage 1 came from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vqcausal.atomic import write_json_atomic, write_text_atomic
from vqcausal.config import Config, ConfigError, to_dict
from vqcausal.models.base import ModelArgs
from vqcausal.runs import Checkpoint, config_from_meta, latest_checkpoint, leaves, metric_records

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
        "train.data_workers",
        "train.eval_pairs",
        "train.eval_every",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.compile",
        "train.channels_last",
        "train.log_with",
    }
)

PROVENANCE = "stage1_from.json"


def flat_config(config: Config) -> dict[str, object]:
    """``{"section.key": value}`` of a resolved config."""
    return dict(leaves(to_dict(config)))


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
        if key not in STAGE2_ONLY and mine.get(key) != theirs.get(key)
    )
    if differ:
        key = differ[0]
        raise ConfigError(
            f"--stage1-from {run_dir}: its stage 1 was trained with {key} = "
            f"{theirs.get(key)!r}, this run has {mine.get(key)!r} ({len(differ)} stage-1 "
            "setting(s) differ); only stage-2 settings may change"
        )
    if ckpt.meta.get("model_args") != json.loads(json.dumps(model_args.to_dict())):
        raise ConfigError(
            f"--stage1-from {run_dir}: its model was built from another description "
            "(the data it was fitted to differs); train a stage 1 for this run"
        )
    return ckpt


def adopt_stage1(ckpt: Checkpoint, source_run: Path, run_dir: Path) -> None:
    """Copy the stage-1 records (metrics up to its last step, figures) into the new run and
    write where they came from."""
    records = source_run / "metrics.jsonl"
    if records.is_file():
        kept = [line for line, r in metric_records(records) if r["step"] <= ckpt.step]
        write_text_atomic(run_dir / "metrics.jsonl", "".join(f"{line}\n" for line in kept))
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

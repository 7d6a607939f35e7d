"""Counterfactual study: how atomic are the default model's interventions, and what made them so?

Trains each *variant* of the default CT-VAE (a named set of ``--set`` overrides on the
dataset's config; ``before`` is the model as it was before the atomicity work, ``default`` the
config as it is) with the ordinary training code, evaluates every run with ``vqcausal evaluate``
on held-out pairs and tabulates, per variant (mean ± std over seeds):

* atomicity (the oracle reads exactly x''s factors from the counterfactual), after 1 and 3
  chained steps, and the autoencoder's ceiling (the oracle on decode(encode(x')));
* the transition on codes: accuracy on the variables that change between x and x';
* counterfactual and reconstruction PSNR;
* retrieval, both heads: balanced accuracy and the worst action's;
* training minutes (wall time from the run folder's creation to its final checkpoint).

It also writes ``counterfactuals.png``: per action one held-out pair, x | true x' | the
counterfactual of each variant (first seed), so a person can judge them at a glance.

Runs use the resumable machinery of the imbalance ablation: an evaluated run is skipped, an
unfinished one resumed, a finished one only evaluated.

    python tasks/counterfactual_study.py                             # shapes3d, before + default
    python tasks/counterfactual_study.py --seeds 0 1 2 --variants default
    python tasks/counterfactual_study.py --size smoke                # the tiny model, minutes
    python tasks/counterfactual_study.py --datasets sprites --set train.stage1_steps=20000

Runtime on a 2-core CPU: a variant at ``full`` size (the config's own steps) trains in about
35 minutes with both cores, and its evaluation on 4,096 pairs takes ~3 more (plus ~2 for the
factor oracle, once per dataset and out folder); two runs side by side take about twice as long.

Output in ``--out`` (default ``runs/counterfactual_study-<size>``): ``study.md``, ``study.json``,
``counterfactuals.png`` and, per variant and seed, a cell folder (``<variant>-<dataset>-vq-default-
s<seed>``) with the run and its ``eval/``. Every variant's runs are cells of one sweep, so
``--jobs 2`` trains two at once whichever variants they belong to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from vqcausal.commandline import SEED, OneLineParser, add_set_arg, command_main
from vqcausal.config import parse_override
from vqcausal.sweep.command import add_engine_args, engine_options, finish
from vqcausal.sweep.engine import run_sweep
from vqcausal.sweep.plan import Cell, default_cells
from vqcausal.sweep.results import evaluated_metrics
from vqcausal.sweep.spec import SIZES, SweepError

#: the transition of the code defaults (64 wide, the action only shifting the update)
NARROW = ("model.transition.hidden=64", "model.transition.update_film=false")
#: the default's stage 1 and stage-2 sampling before the long stage 1 (6,000 steps, the decay
#: over the last fifth, no focus)
SHORT_STAGE1 = ("train.stage1_steps=6000", "train.lr_decay_fraction=0.2", "train.action_focus=0.0")
#: the default model before the atomicity work
BEFORE = (
    *NARROW,
    'train.lr_schedule="constant"',
    *SHORT_STAGE1,
    "train.stage2_steps=3000",
    "model.transition.train_slots=0",
    "model.transition.w_changed=0.0",
    "model.transition.update_expansion=1",
    "model.classifier_layers=0",
)
#: name -> (what it is, overrides on the dataset's config), in the order of the table:
#: ``before`` and ``transition-training`` build up to ``default`` (the config as it is); each
#: variant after ``default`` changes one thing in it.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "before": (
        "the default model before the atomicity work: constant learning rates, every action "
        "scored in training, no changed-code weight, a narrow update, a classifier without "
        "attention, 3,000 stage-2 steps",
        BEFORE,
    ),
    "transition-training": (
        "before + the stage-2 training changes: changed codes weigh 3x in the code CE, 4 "
        "action slots per pair, 2 attention layers in the classifier",
        tuple(
            o
            for o in BEFORE
            if not any(key in o for key in ("w_changed", "train_slots", "classifier_layers"))
        ),
    ),
    "default": ("configs/<dataset>.toml as it is", ()),
    "constant-lr": (
        "default with constant learning rates (the default before train.lr_schedule = wsd)",
        ('train.lr_schedule="constant"',),
    ),
    "no-focus": (
        "default without action focus (train.action_focus = 0: stage 2 draws actions "
        "uniformly; focus moves draws from the hues to shape)",
        ("train.action_focus=0.0",),
    ),
    "focus-floor": (
        "default with train.focus_floor = 1: focus only adds draws to the hard factors, every "
        "action keeps at least its balanced share (kinder to a rare, memorised action)",
        ("train.focus_floor=1.0",),
    ),
    "narrow-transition": (
        "the default before the wide transition: the code defaults' transition (64 wide, "
        "the action only shifting the update), 6,000 + 4,000 steps, no focus "
        "(tools/transition_probe.py found width, not depth, the lever on the codes that change)",
        (*NARROW, *SHORT_STAGE1, "train.stage2_steps=4000"),
    ),
    "short-stage1": (
        "the default before the long stage 1: 6,000 + 3,000 steps, the decay over each stage's "
        "last fifth, no focus (the autoencoder bounds atomicity: its ceiling was 0.86 - 0.93 "
        "at 6,000 stage-1 steps, 0.98 - 0.99 at 12,000)",
        (*SHORT_STAGE1, "train.stage2_steps=3000"),
    ),
    "short-stage2": (
        "the default before 2,500 stage-2 steps: 12,000 + 2,000 (the wide transition was "
        "still learning; the 500 steps more took atomicity from 0.887 to 0.927, 3 seeds)",
        ("train.stage2_steps=2000",),
    ),
}

GRID_PAIRS = 512  # held-out pairs drawn for the comparison grid (one per action is shown)

#: (title, path into metrics.json) of the table's columns
COLUMNS = (
    ("atomicity", ("counterfactual", "atomicity")),
    ("atomicity, 3 steps", ("counterfactual", "atomicity_chained_3")),
    ("AE ceiling", ("counterfactual", "autoencoder_ceiling")),
    ("codes right (changed)", ("counterfactual", "codes", "accuracy_changed")),
    ("CF PSNR", ("counterfactual", "psnr")),
    ("recon PSNR", ("reconstruction", "psnr")),
    ("synthesis balanced", ("retrieval", "synthesis", "balanced_accuracy")),
    ("synthesis worst", ("retrieval", "synthesis", "worst_action_accuracy")),
    ("classifier balanced", ("retrieval", "classifier", "balanced_accuracy")),
    ("classifier worst", ("retrieval", "classifier", "worst_action_accuracy")),
    ("train minutes", ("train_minutes",)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="counterfactual_study.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", help="full (the configs' steps) | smoke")
    parser.add_argument("--out", help="study folder (default runs/counterfactual_study-SIZE)")
    parser.add_argument("--datasets", nargs="+", default=["shapes3d"], help="shapes3d sprites")
    parser.add_argument(
        "--variants", nargs="+", default=["before", "default"], help=", ".join(VARIANTS)
    )
    parser.add_argument("--seeds", nargs="+", type=SEED, default=[0])
    add_engine_args(parser)
    add_set_arg(parser, "train.stage1_steps=20000")
    return parser


def training_minutes(run_dir: Path) -> float | None:
    """Wall minutes from the run folder's config to its final checkpoint."""
    from vqcausal.runs import latest_checkpoint

    meta = latest_checkpoint(run_dir).meta
    started = (run_dir / "config.toml").stat().st_mtime
    try:
        saved = datetime.strptime(meta["saved_at"], "%Y-%m-%d %H:%M:%S").timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return max(saved - started, 0.0) / 60


def _get(record: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record if isinstance(record, int | float) else None


def variant_overrides(variant: str, size: str) -> tuple[str, ...]:
    """The variant's overrides at ``size``. A variant's steps and widths are the full size's:
    at ``smoke`` the size's own settings win (its steps, its small model), so a smoke study
    stays minutes long and the variants differ only in what else they change."""
    _, overrides = VARIANTS[variant]
    if size != "smoke":
        return overrides
    sized = {tuple(parse_override(o)[0]) for o in SIZES["smoke"].overrides}
    return tuple(o for o in overrides if tuple(parse_override(o)[0]) not in sized)


def cells_of(args: argparse.Namespace, variant: str) -> list[Cell]:
    size = "smoke" if args.size == "smoke" else "full"
    overrides = variant_overrides(variant, size)
    cells = default_cells(size, args.datasets, ["vq"], args.seeds, [*overrides, *args.overrides])
    return [replace(cell, variant=variant) for cell in cells]


def collect(out: Path, variant: str, cells: list[Cell]) -> list[dict]:
    results = []
    for cell, run_dir, metrics in evaluated_metrics(out, cells):
        metrics["train_minutes"] = training_minutes(run_dir)
        row = {title: _get(metrics, path) for title, path in COLUMNS}
        results.append(
            {"variant": variant, "dataset": cell.dataset, "seed": cell.seed, "run": str(run_dir)}
            | {"figures": row}
        )
    return results


def _stat(values: list) -> str:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if not numbers:
        return "n/a"
    digits = 1 if max(abs(v) for v in numbers) >= 10 else 3
    mean = statistics.fmean(numbers)
    if len(numbers) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(numbers):.{digits}f}"


def markdown(results: list[dict]) -> str:
    head = ["dataset", "variant", "seeds", *(title for title, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["variant"]), []).append(r)
    for (dataset, variant), members in groups.items():
        values = [_stat([m["figures"][title] for m in members]) for title, _ in COLUMNS]
        lines.append("| " + " | ".join([dataset, variant, str(len(members)), *values]) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def comparison_grid(results: list[dict], dataset: str, path: Path) -> Path | None:
    """Per action one held-out pair: x | true x' | each variant's counterfactual.

    Every variant's first run draws the same held-out pairs (they share the dataset, the split
    and, for the first seed, the pair seed), so each row compares the variants on one pair."""
    from vqcausal.data.source import to_float
    from vqcausal.eval.counterfactual import pairs_per_action
    from vqcausal.eval.inputs import prepare
    from vqcausal.eval.pairs import encode_images
    from vqcausal.viz import labelled_rows, save_png

    first_run: dict[str, str] = {}
    for r in results:
        if r["dataset"] == dataset:
            first_run.setdefault(r["variant"], r["run"])
    if not first_run:
        return None
    columns: list[torch.Tensor] = []
    for run in first_run.values():
        inputs = prepare(run, pairs=GRID_PAIRS)
        t, names = inputs.transitions, inputs.source.space.action_names
        index = torch.cat(list(pairs_per_action(t.actions, 1).values()))
        x, x_next = inputs.sampler.images(t)
        latents = encode_images(inputs.model.eval(), x[index])
        step = inputs.model.step_latent(latents, t.actions[index])
        columns.append(inputs.model.decode_latent(step).clamp(0, 1).cpu())
    rows = [
        torch.stack([to_float(x[i]), to_float(x_next[i]), *(c[row] for c in columns)])
        for row, i in enumerate(index.tolist())
    ]
    variants = " | ".join(first_run)
    labels = [f"{names[a]}: x | x' | {variants}" for a in t.actions[index].tolist()]
    return save_png(labelled_rows(rows, labels, group=2), path)


def study(args: argparse.Namespace) -> None:
    start = time.monotonic()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SweepError(f"unknown variant '{unknown[0]}'; choose from {', '.join(VARIANTS)}")
    out = Path(args.out or f"runs/counterfactual_study-{args.size}")
    size = "smoke" if args.size == "smoke" else "full"
    options = engine_options(args, 1, SIZES[size].evaluate_args)
    cells = {variant: cells_of(args, variant) for variant in args.variants}
    print(", ".join(f"{v}: {len(c)} runs" for v, c in cells.items()) + f" in {out}")
    # one sweep for every variant: --jobs runs train at once whatever variant they belong to
    outcomes = run_sweep([cell for group in cells.values() for cell in group], out, options)
    results = [row for variant, group in cells.items() for row in collect(out, variant, group)]
    from vqcausal.atomic import write_text_atomic

    table = markdown(results)
    write_text_atomic(out / "study.md", table)
    write_text_atomic(out / "study.json", json.dumps(results, indent=2) + "\n")
    for dataset in args.datasets:
        suffix = "" if len(args.datasets) == 1 else f"-{dataset}"
        comparison_grid(results, dataset, out / f"counterfactuals{suffix}.png")
    print()
    print(table)
    print(f"table: {out / 'study.md'}  numbers: {out / 'study.json'}")
    finish(outcomes, start)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or failed runs, 130 on Ctrl-C."""
    return command_main(build_parser, study, argv)


if __name__ == "__main__":
    sys.exit(main())

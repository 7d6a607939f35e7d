"""Retrieval benchmark: how well does the default model tell which action turned x into x'?

Trains the default CT-VAE of ``configs/shapes3d.toml`` and ``configs/sprites.toml`` (balanced
actions) with the ordinary training code, evaluates each run with ``vqcausal evaluate`` and
reports held-out action retrieval for both heads, ``synthesis`` (score every action by how
well it predicts x''s codes) and ``classifier`` (a learned head on the two code grids):
accuracy, balanced accuracy, the worst action's accuracy, undirected accuracy (right factor,
either direction) and top-3. Runs use the same resumable machinery as the imbalance ablation
(:mod:`vqcausal.sweep`, on Ray): an evaluated run is skipped, an unfinished one resumed.

    python tasks/retrieval_benchmark.py --size smoke          # 2-core CPU: ~4 min
    python tasks/retrieval_benchmark.py --size full           # default steps: one GPU ~10 min
    python tasks/retrieval_benchmark.py --size full --latents vq gaussian --seeds 0 1 2

Runtime. ``smoke`` (the small model of the ablation's smoke size, 1200 + 600 steps,
``evaluate --fast`` on 1024 pairs): the two runs side by side took 4 minutes on an otherwise
idle 2-core CPU (twice that when other work shares the cores). ``full`` (the configs as they
are, shapes3d 12000 + 2500 and sprites 6000 + 3000 steps, the full evaluation on 4096
pairs): about 10 minutes for the two runs side by side on one H100, extrapolated from a
measured 1500 + 750-step pair on one (5m46s: ~1 min training, ~4.5 min evaluation, mostly the
disentanglement scores on the CPU); on a 2-core CPU most of an hour per run.

Output in ``--out`` (default ``runs/retrieval_benchmark-<size>``): ``retrieval.md`` (the table
printed at the end; mean ± std when several seeds), ``retrieval.json`` (every run's numbers)
and, per run, ``<run>/eval/`` with the evaluation's figures: ``confusion_<method>.png``
(true vs retrieved action, rows normalised: which actions get mistaken for which) and
``per_action_<method>.png`` (accuracy of each action).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from vqcausal.commandline import SEED, OneLineParser, add_set_arg, command_main
from vqcausal.models.base import RETRIEVAL_METHODS
from vqcausal.sweep.command import add_engine_args, engine_options, finish
from vqcausal.sweep.engine import run_sweep
from vqcausal.sweep.plan import Cell, default_cells
from vqcausal.sweep.results import evaluated_metrics
from vqcausal.sweep.spec import SIZES

#: (metrics.json key under retrieval.<method>, table header)
COLUMNS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced"),
    ("worst_action_accuracy", "worst action"),
    ("undirected_accuracy", "undirected"),
    ("top_3", "top-3"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="retrieval_benchmark.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="smoke", help="smoke (CPU, minutes) | full (GPU)")
    parser.add_argument("--out", help="benchmark folder (default runs/retrieval_benchmark-SIZE)")
    parser.add_argument("--datasets", nargs="+", default=["shapes3d", "sprites"])
    parser.add_argument("--latents", nargs="+", default=["vq"], help="vq scm gaussian ladder")
    parser.add_argument("--seeds", nargs="+", type=SEED, default=[0])
    add_engine_args(parser)
    add_set_arg(parser, 'train.mixed_precision="bf16"')
    return parser


def retrieval_numbers(metrics: dict) -> dict[str, dict[str, float | None]]:
    """Per retrieval head, the benchmark's columns from a metrics.json."""
    out = {}
    for method in RETRIEVAL_METHODS:
        report = metrics.get("retrieval", {}).get(method) or {}
        numbers = {key: report.get(key) for key, _ in COLUMNS if key != "top_3"}
        numbers["top_3"] = (report.get("top_k") or {}).get("3")
        out[method] = numbers
    return out


def collect(out: Path, cells: list[Cell]) -> list[dict]:
    results = []
    for cell, run_dir, metrics in evaluated_metrics(out, cells):
        results.append(
            {
                "dataset": cell.dataset,
                "latent": cell.latent,
                "seed": cell.seed,
                "run": str(run_dir),
                "step": metrics.get("step"),
                "pairs": metrics.get("pairs"),
                "retrieval": retrieval_numbers(metrics),
            }
        )
    return results


def _stat(values: list) -> str:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if not numbers:
        return "n/a"
    mean = statistics.fmean(numbers)
    if len(numbers) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(numbers):.3f}"


def markdown(results: list[dict]) -> str:
    head = ["dataset", "latent", "head", "seeds", *(title for _, title in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["latent"]), []).append(r)
    for (dataset, latent), members in groups.items():
        for method in RETRIEVAL_METHODS:
            values = [_stat([m["retrieval"][method][key] for m in members]) for key, _ in COLUMNS]
            lines.append(
                "| " + " | ".join([dataset, latent, method, str(len(members)), *values]) + " |"
            )
    return "\n".join(lines) + "\n"


def benchmark(args: argparse.Namespace) -> None:
    start = time.monotonic()
    cells = default_cells(args.size, args.datasets, args.latents, args.seeds, args.overrides)
    spec = SIZES[args.size]
    options = engine_options(args, min(spec.jobs, len(cells)), spec.evaluate_args)
    out = Path(args.out or f"runs/retrieval_benchmark-{args.size}")
    print(f"{len(cells)} runs in {out}")
    outcomes = run_sweep(cells, out, options)
    results = collect(out, cells)
    table = markdown(results)
    from vqcausal.atomic import write_text_atomic

    write_text_atomic(out / "retrieval.md", table)
    write_text_atomic(out / "retrieval.json", json.dumps(results, indent=2) + "\n")
    print()
    print(table)
    print(f"table: {out / 'retrieval.md'}  numbers: {out / 'retrieval.json'}")
    finish(outcomes, start)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or failed runs, 130 on Ctrl-C."""
    return command_main(build_parser, benchmark, argv)


if __name__ == "__main__":
    sys.exit(main())

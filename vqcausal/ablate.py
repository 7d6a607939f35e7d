"""The ``vqcausal ablate`` command (also ``tasks/imbalance_ablation.py``): parse, plan, run,
tabulate. See that task's docstring for the modes, runtimes and figures."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vqcausal import ablation
from vqcausal.cli import MAX_PAIRS, SEED, OneLineParser, add_set_arg, bounded


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="imbalance_ablation.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--size", default="smoke", help="smoke (CPU, minutes) | cpu (2-core CPU, ~1 h) | full (GPU)"
    )
    parser.add_argument("--out", help="sweep folder (default: runs/imbalance_ablation-SIZE)")
    parser.add_argument("--jobs", type=bounded(1, 256), help="cells at once (default 2)")
    parser.add_argument(
        "--threads", type=bounded(1, 1024), help="torch threads per job (default cores/jobs)"
    )
    parser.add_argument("--gpus", help="comma-separated GPU ids, one per job slot, e.g. 0,1")
    parser.add_argument("--datasets", nargs="+", metavar="NAME")
    parser.add_argument("--latents", nargs="+", metavar="NAME", help="vq scm gaussian ladder")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="actions values held_out")
    parser.add_argument(
        "--rhos", nargs="+", type=bounded(1, 1e6, float), metavar="RHO", help="imbalance ratios"
    )
    parser.add_argument(
        "--ks", nargs="+", type=bounded(1, MAX_PAIRS), metavar="K", help="held_out: pairs kept"
    )
    parser.add_argument("--seeds", nargs="+", type=SEED, metavar="SEED")
    parser.add_argument(
        "--held-out-action",
        dest="held_out",
        action="append",
        default=[],
        metavar="DATASET=ACTION",
        help="the action held_out holds at k pairs (default shapes3d=object_hue+, sprites=scale+)",
    )
    add_set_arg(parser, 'train.mixed_precision="bf16"')
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    return parser


def _held_out(pairs: list[str]) -> dict[str, str]:
    out = {}
    for text in pairs:
        dataset, sep, action = text.partition("=")
        if not sep or not dataset or not action:
            raise ablation.AblationError(
                f"--held-out-action wants DATASET=ACTION, e.g. shapes3d=object_hue+, got {text}"
            )
        out[dataset] = action
    return out


def _gpus(text: str | None) -> list[str]:
    return [] if not text else [g.strip() for g in text.split(",")]


def sweep(args: argparse.Namespace) -> None:
    start = time.monotonic()
    cells = ablation.plan(
        args.size,
        datasets=args.datasets,
        latents=args.latents,
        modes=args.modes,
        rhos=args.rhos,
        seeds=args.seeds,
        ks=args.ks,
        overrides=args.overrides,
        held_out_actions=_held_out(args.held_out),
    )
    spec = ablation.SIZES[args.size]
    options = ablation.SweepOptions(
        jobs=min(spec.jobs, len(cells)) if args.jobs is None else args.jobs,
        threads=args.threads,
        gpus=_gpus(args.gpus),
        evaluate_args=spec.evaluate_args,
    )
    out = Path(args.out or f"runs/imbalance_ablation-{args.size}")
    if out.exists() and not out.is_dir():
        raise ablation.AblationError(f"{out} is a file; --out names the sweep folder")
    if args.dry_run:
        for cell in cells:
            state = ablation.cell_state(out / cell.name).state
            print(f"{cell.name:<44} {state:<9} {' '.join(cell.overrides)}")
        print(f"{len(cells)} cells in {out}")
        return
    print(f"{len(cells)} cells, {options.jobs} at a time, in {out}")
    outcomes = ablation.run_sweep(cells, out, options)
    files = ablation.write_results(out)
    print()
    print(files["table"])
    print(
        f"table: {files['markdown']}  rows: {files['csv']}  per action: {files['per_action_csv']}"
    )
    if files["figures"]:
        print(f"figures: {', '.join(str(p) for p in files['figures'])}")
    ablation.finish(outcomes, start)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or failed runs, 130 on Ctrl-C."""
    return ablation.command_main(build_parser, sweep, argv)

"""The ``vqcausal ablate`` command (also ``tasks/imbalance_ablation.py``) and what every sweep
command shares: where cells run (``--address``, ``--jobs``, ``--threads``, ``--gpus-per-cell``)
and how a sweep ends (its wall time; one line if any cell failed)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from vqcausal.commandline import (
    MAX_PAIRS,
    SEED,
    OneLineParser,
    add_set_arg,
    bounded,
    command_main,
)
from vqcausal.progress import duration
from vqcausal.sweep.cells import Outcome, cell_state
from vqcausal.sweep.engine import SweepOptions, run_sweep
from vqcausal.sweep.plan import plan
from vqcausal.sweep.spec import SIZES, SweepError
from vqcausal.sweep.tables import write_results


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Where and how the cells (or trials) run."""
    parser.add_argument(
        "--address",
        help="a running Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: a local Ray)",
    )
    parser.add_argument(
        "--jobs", type=bounded(1, 256), help="local Ray: runs at once (default: the size's)"
    )
    parser.add_argument("--threads", type=bounded(1, 1024), help="torch threads (Ray CPUs) per run")
    parser.add_argument(
        "--gpus-per-cell",
        dest="gpus_per_cell",
        type=bounded(0, 64, float),
        help="GPUs per run (default 0.5 where the cluster has GPUs, else 0)",
    )


def engine_options(
    args: argparse.Namespace, jobs: int, evaluate_args: Sequence[str] = ()
) -> SweepOptions:
    return SweepOptions(
        jobs=args.jobs or jobs,
        threads=args.threads,
        gpus_per_cell=args.gpus_per_cell,
        evaluate_args=tuple(evaluate_args),
        address=args.address,
    )


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line naming the failed cells (None when every cell is done)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return None
    first = failed[0]
    return (
        f"{len(failed)} of {len(outcomes)} cells failed; first: {first.cell.name}: {first.message}"
    )


def finish(outcomes: Sequence[Outcome], start: float) -> None:
    """Close a sweep: print its wall time, raise one line if any cell failed."""
    print(f"wall time: {duration(time.monotonic() - start)}")
    problem = failure_summary(outcomes)
    if problem is not None:
        raise SweepError(problem)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="imbalance_ablation.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--size", default="smoke", help="smoke (CPU, minutes) | cpu (2-core CPU, ~6 h) | full (GPU)"
    )
    parser.add_argument("--out", help="sweep folder (default: runs/imbalance_ablation-SIZE)")
    add_engine_args(parser)
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
            raise SweepError(
                f"--held-out-action wants DATASET=ACTION, e.g. shapes3d=object_hue+, got {text}"
            )
        out[dataset] = action
    return out


def sweep(args: argparse.Namespace) -> None:
    start = time.monotonic()
    cells = plan(
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
    spec = SIZES[args.size]
    options = engine_options(args, min(spec.jobs, len(cells)), spec.evaluate_args)
    out = Path(args.out or f"runs/imbalance_ablation-{args.size}")
    if out.exists() and not out.is_dir():
        raise SweepError(f"{out} is a file; --out names the sweep folder")
    if args.dry_run:
        for cell in cells:
            state = cell_state(out / cell.name).state
            print(f"{cell.name:<44} {state:<9} {' '.join(cell.overrides)}")
        print(f"{len(cells)} cells in {out}")
        return
    outcomes = run_sweep(cells, out, options)
    files = write_results(out)
    print()
    print(files["table"])
    print(
        f"table: {files['markdown']}  rows: {files['csv']}  per action: {files['per_action_csv']}"
    )
    if files["figures"]:
        print(f"figures: {', '.join(str(p) for p in files['figures'])}")
    finish(outcomes, start)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or failed runs, 130 on Ctrl-C."""
    return command_main(build_parser, sweep, argv)

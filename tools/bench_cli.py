"""Command-line latency: ``vqcausal retrieve`` / ``intervene`` on one pair, whole process.

    python tools/bench_cli.py [--quick] [--repeats 5] [--pairs 256] [--out bench_results/cli.json]

Each command runs as a user runs it (a fresh ``python -m vqcausal.cli`` process, the newest
checkpoint of a run folder, PNG files in and out); the figure is the median wall time of
``--repeats`` runs, and the goal is within 0.6 s of ``python -c "import torch"``
timed the same way, interleaved, on the same machine. ``retrieve DIR_A DIR_B`` on ``--pairs``
pairs gives the batched cost per pair. The run is the default config's model
(``configs/shapes3d.toml``) after two training steps: loading time depends on the model's
size, not on how well it is trained. ``--quick`` (the test's smoke run) uses the smoke config
and 2 repeats.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vqcausal.benchmarking import REPO, console, write_report
from vqcausal.commandline import OneLineParser, bounded

GOAL_S = 0.6  # above `import torch`


def timed(argv: list[str]) -> float:
    """Wall seconds of one run of a command, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[2:5])} failed: {done.stderr.strip()[-300:]}")
    return seconds


def make_run(folder: Path, quick: bool) -> tuple[Path, list[str], tuple[int, int, int]]:
    """A finished run of the config's model (two steps); returns it, its actions, image shape."""
    from vqcausal.runs import load_model_from_run

    config = "smoke.toml" if quick else "shapes3d.toml"
    sets = ["train.stage1_steps=1", "train.stage2_steps=1", "train.cache_pairs=16"]
    sets += ["train.eval_pairs=16", 'train.log_with="none"', f'runs="{folder}"']
    argv = [sys.executable, "train.py", "--config", f"configs/{config}"]
    argv += [a for s in sets for a in ("--set", s)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: training the benchmark's run failed: {done.stderr[-300:]}")
    (run,) = list(folder.iterdir())
    model, _ = load_model_from_run(run, inference=True)
    return run, list(model.args.action_names), tuple(model.args.image_shape)


def write_pngs(folder: Path, count: int, shape: tuple[int, int, int], seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    c, h, w = shape
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run for the tests")
    parser.add_argument("--repeats", type=bounded(1, 100), help="runs per command (default 5)")
    parser.add_argument("--pairs", type=bounded(1, 100_000), help="batched pairs (default 256)")
    parser.add_argument("--out", default="bench_results/cli.json")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    pairs = args.pairs or (8 if args.quick else 256)
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, actions, shape = make_run(tmp / "runs", args.quick)
        a, b = write_pngs(tmp / "one", 2, shape, 0)
        many_a, many_b = tmp / "a", tmp / "b"
        write_pngs(many_a, pairs, shape, 1)
        write_pngs(many_b, pairs, shape, 2)
        cli = [python, "-m", "vqcausal.cli"]
        commands = {
            "import torch": [python, "-c", "import torch"],
            "retrieve (one pair)": [*cli, "retrieve", str(a), str(b), "--run", str(run)],
            "intervene (one image)": [
                *cli,
                "intervene",
                str(a),
                "--action",
                actions[0],
                "--run",
                str(run),
                "--out",
                str(tmp / "cf.png"),
            ],
            f"retrieve ({pairs} pairs)": [
                *cli,
                "retrieve",
                str(many_a),
                str(many_b),
                "--run",
                str(run),
            ],
        }
        runs: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):  # interleaved: a busy spell hits every command alike
            for name, argv in commands.items():
                runs[name].append(timed(argv))
    medians = {name: statistics.median(t) for name, t in runs.items()}
    base = medians["import torch"]
    rows = []
    for name, median in medians.items():
        row = {
            "command": name,
            "median_s": median,
            "min_s": min(runs[name]),
            "max_s": max(runs[name]),
        }
        row["runs"] = runs[name]
        if name != "import torch":
            row["over_import_torch_s"] = median - base
        if name.endswith("pairs)"):
            row["per_pair_ms"] = 1000 * (median - base) / pairs
        elif name != "import torch":
            row["goal_over_import_torch_s"] = GOAL_S
            row["status"] = "ok" if median - base <= GOAL_S else "MISSED"
        rows.append(row)
    from rich.table import Table

    table = Table("command", "median s", "min - max s", "over import torch", "goal", "status")
    table.title = f"command-line latency, whole process, median of {repeats}"
    for r in rows:
        over = r.get("over_import_torch_s")
        extra = f" ({r['per_pair_ms']:.2f} ms/pair)" if "per_pair_ms" in r else ""
        table.add_row(
            r["command"],
            f"{r['median_s']:.3f}",
            f"{r['min_s']:.3f} - {r['max_s']:.3f}",
            "" if over is None else f"{over:+.3f} s{extra}",
            f"<= +{GOAL_S} s" if "goal_over_import_torch_s" in r else "",
            r.get("status", ""),
        )
    console().print(table)
    settings = {"quick": args.quick, "repeats": repeats, "pairs": pairs, "goal_s": GOAL_S}
    write_report(args.out, "cli", settings, rows)


if __name__ == "__main__":
    main()

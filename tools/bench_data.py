"""Data throughput: images/s per renderer and pairs/s of the transition sampler.

    python tools/bench_data.py [--batch 256] [--repeats 5] [--threads 1] [--out FILE.json]
    python tools/bench_data.py --datasets --file mpi3d=~/data/mpi3d_real.npz   # a file you have

Prints a table of medians over ``--repeats`` timed runs (after one warm-up) and writes JSON.
Goal: >= 2,000 64x64 images/s for shapes3d and sprites on one core.
``run`` and ``worker`` are the importable API (``tools/bench.py`` uses them).
"""

from __future__ import annotations

import resource

import torch
from rich.console import Console
from rich.table import Table

from vqcausal.benchmarking import (
    measure,
    median_rate,
    peak_memory_mb,
    setting_config,
    spread,
    write_report,
)
from vqcausal.commandline import OneLineParser, bounded
from vqcausal.config import DataConfig
from vqcausal.data.registry import load_source
from vqcausal.data.source import GroundTruthSource
from vqcausal.data.transitions import TransitionConfig, TransitionSampler

DATASETS = ("shapes3d", "sprites", "pendulum", "toy")
BENCHES = {
    "data_images": ("images/s", "render source images from sampled factor values"),
    "data_pairs": ("pairs/s", "sample training transition pairs (x and x' rendered)"),
}
TARGETS = {"data_images": 2000}  # one core (README, Benchmarks)


def throughput(
    source: GroundTruthSource, transitions: TransitionConfig, bench: str, batch: int, repeats: int
) -> tuple[float, list[float]]:
    """Median rate and timed runs of rendering images or sampling pairs from one source."""
    generator = torch.Generator().manual_seed(0)
    if bench == "data_images":

        def fn() -> int:
            return source.render(source.space.sample_values(batch, generator)).shape[0]

    else:
        sampler = TransitionSampler(source, transitions)

        def fn() -> int:
            return sampler.batch(batch, "train", generator)["x"].shape[0]

    return median_rate(fn, repeats)


def worker(bench: str, setting: str, batch: int, repeats: int, threads: int = 1) -> dict:
    """One measurement on the data of a benchmark setting (see ``vqcausal.benchmarking``)."""
    torch.set_num_threads(threads)
    config = setting_config(setting)
    rate, runs = throughput(load_source(config.data), config.transitions, bench, batch, repeats)
    peak_mb = peak_memory_mb("cpu")
    return {"rate": rate, "runs": runs, **spread(runs), "peak_mb": peak_mb, "threads": threads}


def run_settings(
    settings: list[str], batch: int, repeats: int, threads: int = 1, isolate: bool = True
) -> list[dict]:
    """Both data benches on each benchmark setting's data, as judged result rows."""
    calls = [
        {"bench": bench, "setting": setting, "batch": batch, "repeats": repeats}
        | {"threads": threads}
        for setting in settings
        for bench in BENCHES
    ]
    units = {name: unit for name, (unit, _) in BENCHES.items()}
    return measure(__file__, calls, units, TARGETS, True, isolate)


def run(
    datasets: list[str],
    batch: int,
    repeats: int,
    threads: int = 1,
    files: dict[str, str] | None = None,
) -> list[dict]:
    """Images/s and pairs/s of every dataset (procedural, or ``files``: name -> path of a file
    the user has), in this process; ``peak_rss_mb`` is the process's peak so far."""
    torch.set_num_threads(threads)
    rows = []
    wanted = [(name, None) for name in datasets] + list((files or {}).items())
    for name, path in wanted:
        source = load_source(DataConfig(dataset=name, path=path))
        transitions = TransitionConfig(seed=0)
        images_s, image_runs = throughput(source, transitions, "data_images", batch, repeats)
        pairs_s, pair_runs = throughput(source, transitions, "data_pairs", batch, repeats)
        rows.append(
            {
                "dataset": name,
                "image_shape": list(source.image_shape),
                "images_per_s": images_s,
                "pairs_per_s": pairs_s,
                "image_runs": image_runs,
                "pair_runs": pair_runs,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    return rows


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=bounded(1, 65_536), default=256)
    parser.add_argument("--repeats", type=bounded(1, 1000), default=5)
    parser.add_argument("--threads", type=bounded(1, 1024), default=1)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure a dataset file you have, e.g. mpi3d=mpi3d_real.npz (repeatable)",
    )
    parser.add_argument("--out", default="bench_results/bench_data.json")
    args = parser.parse_args()

    files = dict(text.split("=", 1) for text in args.file if "=" in text)
    if len(files) != len(args.file):
        parser.error("--file wants NAME=PATH, e.g. mpi3d=mpi3d_real.npz")
    rows = run(args.datasets, args.batch, args.repeats, args.threads, files)
    table = Table(
        "dataset",
        "image",
        "images/s",
        "pairs/s (x and x')",
        "peak RSS so far",
        title=f"data throughput: batch {args.batch}, {args.threads} thread(s), "
        f"median of {args.repeats}",
    )
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        rates = f"{r['images_per_s']:,.0f}", f"{r['pairs_per_s']:,.0f}"
        table.add_row(r["dataset"], shape, *rates, f"{r['peak_rss_mb']:,.0f} MB")
    Console().print(table)
    settings = {"batch": args.batch, "repeats": args.repeats, "files": files}
    write_report(args.out, "data", settings, rows)


if __name__ == "__main__":
    main()

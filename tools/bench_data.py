"""Data throughput: images/s per renderer and pairs/s of the transition sampler.

    python tools/bench_data.py [--batch 256] [--repeats 5] [--threads 1] [--out FILE.json]

Prints a table of medians over ``--repeats`` timed runs (after one warm-up) and writes JSON.
Goal (issue 2): >= 2,000 64x64 images/s for shapes3d and sprites on one core.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from vqcausal.benchmarking import median_rate, write_report
from vqcausal.config import DataConfig
from vqcausal.data.registry import load_source
from vqcausal.data.transitions import TransitionConfig, TransitionSampler

DATASETS = ("shapes3d", "sprites", "pendulum", "toy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--out", default="bench_results/bench_data.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.datasets:
        source = load_source(DataConfig(dataset=name))
        sampler = TransitionSampler(source, TransitionConfig(seed=0))
        generator = torch.Generator().manual_seed(0)

        def render(source=source, generator=generator) -> int:
            values = source.space.sample_values(args.batch, generator)
            return source.render(values).shape[0]

        def pairs(sampler=sampler, generator=generator) -> int:
            return sampler.batch(args.batch, "train", generator)["x"].shape[0]

        images_s, image_runs = median_rate(render, args.repeats)
        pairs_s, pair_runs = median_rate(pairs, args.repeats)
        rows.append(
            {
                "dataset": name,
                "image_shape": list(source.image_shape),
                "images_per_s": images_s,
                "pairs_per_s": pairs_s,
                "image_runs": image_runs,
                "pair_runs": pair_runs,
            }
        )

    table = Table(
        "dataset",
        "image",
        "images/s",
        "pairs/s (x and x')",
        title=f"data throughput: batch {args.batch}, {args.threads} thread(s), "
        f"median of {args.repeats}",
    )
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        table.add_row(r["dataset"], shape, f"{r['images_per_s']:,.0f}", f"{r['pairs_per_s']:,.0f}")
    Console().print(table)
    settings = {"batch": args.batch, "repeats": args.repeats}
    write_report(args.out, "data", settings, rows)


if __name__ == "__main__":
    main()

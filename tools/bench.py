"""Every benchmark in one command: one table against the README's CPU targets, one JSON file.

    python tools/bench.py [--quick] [--device cpu|cuda] [--precision no|bf16] [--repeats 5]
                          [--no-scaling] [--out bench_results/bench.json]

At the official CT-VAE setting and at the default config: data rendering and transition
pairs (``tools/bench_data.py``, one thread); stage-1 and stage-2 training steps, retrieval
from cached codes (eager and torch.compile) and from images, intervene
(``tools/bench_model.py``). Each measurement runs in a fresh process, so its peak memory is
its own; rates are medians of ``--repeats`` timed runs after a warm-up, with min and max.
Then the retrieval scaling curve, pairs/s vs the number of actions A and of variables N
(``tools/bench_scaling.py``; ``--no-scaling`` skips it).

``--quick`` is a smoke run for the test suite, not a measurement: 2 repeats, batch 4, data
batch 32, one thread, the data and the model measurements in one process each (their peaks
are then high-water marks of everything before them), torch.compile with the ``aot_eager``
backend (traced, no code generated: a cold inductor compile takes ~30 s per setting on the
CPU) and a 3-point scaling curve. One thread because on a 2-core machine that other
processes keep busy, torch's two threads wait on each other and a step can take 30 times
as long.
"""

from __future__ import annotations

import os
import time

import bench_data
import bench_model
import bench_scaling
import torch

from vqcausal.benchmarking import PEAK_MB_TARGET, SETTINGS, console, rates_table, write_report
from vqcausal.commandline import OneLineParser, bounded

BENCHES = {**bench_data.BENCHES, **bench_model.BENCHES}
TARGET_SOURCES = {
    "data_images": "README Benchmarks (tools/bench_data.py): one core, batch 256",
    **{name: "README Benchmarks: official setting, CPU" for name in bench_model.TARGETS},
    "peak_mb": "README Benchmarks: official setting, CPU",
}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run for the tests")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument(
        "--repeats", type=bounded(1, 1000), help="timed runs per rate (default 5; quick 2)"
    )
    parser.add_argument(
        "--batch", type=bounded(1, 65_536), help="model batch (default 16, the official one)"
    )
    parser.add_argument("--data-batch", type=bounded(1, 65_536), help="data batch (default 256)")
    parser.add_argument(
        "--threads",
        type=bounded(1, 1024),
        help="model and scaling threads (default: one per core; quick: 1)",
    )
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; quick: aot_eager)"
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling curve")
    parser.add_argument("--out", default="bench_results/bench.json")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    batch = args.batch or (4 if args.quick else 16)
    data_batch = args.data_batch or (32 if args.quick else 256)
    threads = args.threads or (1 if args.quick else None)
    backend = args.compile_backend or ("aot_eager" if args.quick else "inductor")
    isolate = not args.quick
    load_start, start = os.getloadavg(), time.perf_counter()

    rows = bench_data.run_settings(args.settings, data_batch, repeats, isolate=isolate)
    benches = list(bench_model.BENCHES)
    rows += bench_model.run(
        args.settings,
        benches,
        batch,
        repeats,
        args.device,
        args.precision,
        isolate=isolate,
        threads=threads,
        compile_backend=backend,
    )
    order = {name: i for i, name in enumerate(BENCHES)}
    rows.sort(key=lambda r: (order[r["bench"]], args.settings.index(r["setting"])))
    out = console()
    title = (
        f"benchmarks: {args.device} {args.precision}, batch {batch} (data {data_batch}), "
        f"median of {repeats}{' QUICK' if args.quick else ''}"
    )
    table = rates_table(rows, title)
    table.caption = (
        f"{table.caption}\n"
        f"targets: README Benchmarks (official setting, CPU; peak <= {PEAK_MB_TARGET:,.0f} "
        f"MiB; data_images: one core). Load average at start {load_start[0]:.2f}, "
        f"at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    out.print(table)
    if load_start[0] >= 1 and not threads:
        out.print(
            f"[yellow]load average {load_start[0]:.1f}: other processes share the cores, and "
            "torch's threads then wait on each other (rates can drop 10-30x); --threads 1 "
            "gives steadier numbers[/yellow]"
        )

    scaling = []
    if not args.no_scaling:
        grid = {"actions": (4, 12), "image_sizes": (32, 64)} if args.quick else {}
        if threads:
            torch.set_num_threads(threads)
        scaling = bench_scaling.run(args.device, batch, repeats, **grid)
        title = f"retrieval scaling (official setting, fp32): {args.device}, batch {batch}"
        out.print(bench_scaling.scaling_table(rows=scaling, title=title))

    settings = {
        "quick": args.quick,
        "device": args.device,
        "precision": args.precision,
        "batch": batch,
        "data_batch": data_batch,
        "repeats": repeats,
        "model_threads": threads or "one per core",
        "compile_backend": backend,
        "settings": {name: SETTINGS[name] for name in args.settings},
        "descriptions": {name: description for name, (_, description) in BENCHES.items()},
        "target_sources": TARGET_SOURCES,
        "load_average_start": load_start,
        "wall_s": time.perf_counter() - start,
    }
    write_report(args.out, "all", settings, rows, scaling=scaling)


if __name__ == "__main__":
    main()

"""Shared pieces of the ``tools/`` benchmarks: median rates and JSON reports."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_rate(fn: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Items/s of ``fn`` (which returns how many items it made): median of timed runs.

    One untimed warm-up call first (allocations, lazy tables, compilation).
    """
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


def write_report(path: str | Path, benchmark: str, settings: dict, results: list[dict]) -> Path:
    """A JSON report with the machine and torch version beside the settings and results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": benchmark,
        **settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return path

"""Shared pieces of the ``tools/`` benchmarks: settings, median rates, targets, JSON reports.

The tools (``tools/bench_*.py``) each expose ``run(...) -> list[dict]``; ``tools/bench.py``
runs them all. A measurement that reports peak memory runs in a fresh Python process
(:func:`run_isolated`), because max RSS is a per-process high-water mark.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vqcausal.atomic import write_json_atomic
from vqcausal.config import DEFAULT_EXPERIMENT, Config, load_config

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    # the official CT-VAE Shapes3D model layer for layer where ours allows: 64x64 RGB, widths
    # 64-128-256 -> 8x8 grid, 6 residual layers in the encoder and 6 in the decoder, 3x3 encoder
    # convs, D = 128, 64 codes: encoder 5.22 M and decoder 4.89 M parameters against the
    # official 5.21 M and 4.89 M (its causal layer, 3.70 M of GATv2 and discoverers, is a
    # different design from our transition)
    "official": [
        "model.autoencoder.widths=[64, 128, 256]",
        "model.autoencoder.residual_layers=6",
        "model.autoencoder.encoder_kernel=3",
        "model.autoencoder.embed_dim=128",
        "model.quantizer.codebook_size=64",
        "model.quantizer.codebooks=1",
        # the transition the official-setting figures were measured with (the code defaults:
        # 64 wide, a 256-wide update), kept when configs/shapes3d.toml took a wider one
        "model.transition.hidden=64",
        "model.transition.update_film=false",
    ],
    "default": [],  # configs/shapes3d.toml as it is
}
PEAK_MB_TARGET = 1024.0  # <= 1 GB at the official setting on the CPU (README, Benchmarks)


def setting_config(setting: str) -> Config:
    """The config of a named benchmark setting (the default config plus its overrides)."""
    return load_config(DEFAULT_EXPERIMENT, SETTINGS[setting])


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of each top-level part of a model (encoder, decoder, ...) and the total."""
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    return {**{k: v for k, v in parts.items() if v}, "total": sum(parts.values())}


def parameters_text(counts: dict[str, int]) -> str:
    """``enc 5.22M dec 4.89M ... = 10.37M``."""
    short = {"encoder": "enc", "decoder": "dec", "transition": "trans", "classifier": "cls"}
    parts = [f"{short.get(k, k)} {v / 1e6:.2f}M" for k, v in counts.items() if k != "total"]
    return " ".join(parts) + f" = {counts['total'] / 1e6:.2f}M"


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


def spread(rates: list[float]) -> dict:
    """Min, quartiles and max of the timed runs, so a noisy median shows as noisy."""
    if len(rates) == 1:
        return dict.fromkeys(("min", "q1", "q3", "max"), rates[0])
    q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    return {"min": min(rates), "q1": q1, "q3": q3, "max": max(rates)}


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: max RSS on the CPU, the allocator's peak on a GPU."""
    if device == "cpu":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return torch.cuda.max_memory_allocated() / 2**20


def judge(row: dict, target: float | None, peak_target: float | None) -> dict:
    """Add the target, the memory target and an ok / MISSED status to a result row."""
    row["target"], row["peak_target_mb"] = target, peak_target
    if target is None and peak_target is None:
        row["status"] = ""
        return row
    missed = [
        what
        for what, bad in (
            ("rate", target is not None and row["rate"] < target),
            ("memory", peak_target is not None and row.get("peak_mb", 0) > peak_target),
        )
        if bad
    ]
    row["status"] = "MISSED " + "+".join(missed) if missed else "ok"
    return row


def rate_text(rate: float) -> str:
    """A rate with one decimal below 100 and none above, thousands separated."""
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def console():
    """A rich console at least 150 columns wide, so tables written to a pipe do not wrap."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 150)
    return out


def rates_table(rows: list[dict], title: str):
    """One rich table of measured rates: median, min - max, peak memory, targets, status."""
    from rich.table import Table

    columns = ("benchmark", "setting", "median", "unit", "min - max", "peak MiB", "target")
    table = Table(*columns, "status", title=title)
    for r in rows:
        target = [f">= {r['target']:,}"] if r.get("target") is not None else []
        if r.get("peak_target_mb") is not None:
            target.append(f"<= {r['peak_target_mb']:,.0f} MiB")
        peak = r.get("peak_mb")
        table.add_row(
            r["bench"],
            r["setting"],
            rate_text(r["rate"]),
            r["unit"],
            f"{rate_text(r['min'])} - {rate_text(r['max'])}",
            "" if peak is None else f"{peak:,.0f}",
            ", ".join(target),
            r.get("status", ""),
        )
    settings = {r["setting"]: r["parameters"] for r in rows if r.get("parameters")}
    table.caption = "parameters: " + "; ".join(f"{k}: {v}" for k, v in settings.items())
    return table


def run_isolated(script: str | Path, function: str, calls: list[dict]) -> list[dict]:
    """``function(**kwargs)`` of the tool ``script`` for each kwargs, all in one fresh process.

    Peak memory (max RSS) only rises within a process, so a measurement that reports it needs
    a process of its own: call this once per measurement. Several calls in one process share
    the start-up cost (importing torch and the models takes seconds), for quick checks.
    """
    code = "from vqcausal.benchmarking import serve; serve()"
    cmd = [sys.executable, "-c", code, str(script), function, json.dumps(calls)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {function} {calls} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    script: str | Path,
    calls: list[dict],
    units: dict[str, str],
    targets: dict[str, float],
    on_cpu: bool = True,
    isolate: bool = True,
) -> list[dict]:
    """Result rows of the tool's ``worker(bench, setting, ...)`` for each call, judged.

    Each call runs in a fresh process when ``isolate`` (its own peak memory), else all share
    one: quicker, but each peak is then the high-water mark of everything measured so far.
    The targets (README, Benchmarks) are for the official setting on the CPU; other rows get
    none.
    """
    if isolate:
        results = [run_isolated(script, "worker", [call])[0] for call in calls]
    else:
        results = run_isolated(script, "worker", calls)
    rows = []
    for call, result in zip(calls, results, strict=True):
        row = {"setting": call["setting"], "bench": call["bench"], "unit": units[call["bench"]]}
        row |= result | {"own_process": isolate}
        judged = on_cpu and call["setting"] == "official"
        target = targets.get(call["bench"]) if judged else None
        rows.append(judge(row, target, PEAK_MB_TARGET if judged else None))
    return rows


def serve() -> None:
    """The child side of :func:`run_isolated`: load the tool by path, print results as JSON."""
    import importlib.util

    script, function, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(json.dumps([getattr(module, function)(**kwargs) for kwargs in calls]))


def write_report(
    path: str | Path, benchmark: str, settings: dict, results: list[dict], **sections: list[dict]
) -> Path:
    """A JSON report with the machine, torch version and load average beside the results.

    The load average is there because the timings mean little on a machine that other
    processes keep busy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": benchmark,
        **settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        # the vector units torch's CPU kernels use (AVX2, AVX512): rates differ ~2.5x between them
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "results": results,
        **sections,
    }
    write_json_atomic(path, report)
    print(f"wrote {path}")
    return path

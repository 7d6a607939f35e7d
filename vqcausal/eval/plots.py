"""Evaluation figures as PNG files: per-action accuracy, confusion, training curves, sweeps.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (never pyplot), so importing
this module neither picks a backend nor touches pyplot's global figure registry for other
code. Every PNG is written to a temp name and renamed, so readers never see half a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vqcausal.atomic import atomic_path
from vqcausal.runs import finite_number, leaves, metric_records

#: metrics.jsonl keys that are bookkeeping (speed, schedule, sampling), not loss terms
_NOT_LOSSES = frozenset(
    {
        "stage",
        "step",
        "steps_per_s",
        "lr",
        "time",
        "elapsed",
        "epoch",
        "data_wait",
        "focus_max",
        "focus_min",
    }
)
#: training-record keys that are statistics, not loss terms: the codes (quantizer perplexity,
#: share of the codebook in use) and training accuracies (e.g. ``retrieval_accuracy``, detached,
#: not in ``total``); a panel of their own, so they never share the losses' axis
_STATISTIC_PREFIXES = ("perplexity", "usage", "code_")
_STATISTIC_SUFFIXES = ("accuracy",)
_MISSING_COLOUR = "#bbbbbb"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write atomically: a crashed or concurrent run never leaves a truncated PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def per_action_bar(
    per_action: dict[str, float | None], path: str | Path, title: str = "per-action accuracy"
) -> Path:
    """Bar chart of accuracy per action; actions never seen (None) are marked "n/a"."""
    names = list(per_action)
    values = [finite_number(per_action[name]) for name in names]
    fig = _figure(max(4.0, 0.45 * len(names) + 1.5), 3.6)
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    heights = [0.0 if v is None else v for v in values]
    colours = [_MISSING_COLOUR if v is None else "C0" for v in values]
    ax.bar(positions, heights, color=colours)
    for x, v in zip(positions, values, strict=True):
        label, y = ("n/a", 0.02) if v is None else (f"{v:.2f}", v + 0.02)
        ax.text(x, y, label, ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    top = max([1.0, *(v for v in values if v is not None)])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def confusion_png(
    matrix: Sequence[Sequence[int]],
    names: Sequence[str],
    path: str | Path,
    title: str = "confusion",
) -> Path:
    """Heatmap of counts (rows = true action, columns = predicted), colours row-normalised.

    Row normalisation keeps rare actions readable under imbalanced test sets; the printed
    numbers stay raw counts.
    """
    counts = np.asarray(matrix, dtype=float)
    n = len(names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({n}, {n})")
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = max(4.0, 0.42 * n + 2.0)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of row", shrink=0.8)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                count = int(counts[i, j])
                if count:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted action")
    ax.set_ylabel("true action")
    ax.set_title(title)
    return _save(fig, path)


def _flat_numbers(record: dict) -> dict[str, float]:
    return {k: n for k, v in leaves(record) if (n := finite_number(v)) is not None}


def _read_records(metrics_jsonl: Path) -> Iterable[dict]:
    """The usable records (partial writes and junk are skipped with a warning)."""
    return (record for _, record in metric_records(Path(metrics_jsonl)))


def _plot_series(ax, series: dict[str, list[tuple[float, float]]], title: str, log_y: bool) -> None:
    """``log_y`` (losses, code statistics): log-y when all positive, as they span decades; a
    series 0 throughout (e.g. ``acyclic`` when the graph has no cycle to penalise) is named in
    the title rather than drawn, so it does not force the rest onto a linear scale. Else
    (evaluation metrics) linear y."""
    if log_y:
        zero = sorted(k for k, points in series.items() if all(v == 0 for _, v in points))
        series = {k: v for k, v in series.items() if k not in zero}
        if zero:
            title = f"{title} ({', '.join(zero)}: 0 throughout)"
    for name in sorted(series):
        steps, values = zip(*sorted(series[name]), strict=True)
        ax.plot(steps, values, label=name, linewidth=1.2, marker="." if len(steps) < 20 else None)
    values = [v for points in series.values() for _, v in points]
    if log_y and values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)


Series = dict[str, list[tuple[float, float]]]


@dataclass
class Curves:
    """A run's ``metrics.jsonl`` as plottable series of (step, value) points by name."""

    losses: dict[int, Series] = field(default_factory=dict)  # per stage: the loss terms
    statistics: dict[int, Series] = field(default_factory=dict)  # per stage: codes, accuracies
    evals: Series = field(default_factory=dict)  # the held-out evaluations


def curve_series(records: Iterable[dict]) -> Curves:
    """Split metrics records into per-stage loss terms, per-stage statistics (the codes'
    perplexity and usage, training accuracies) and evaluation metrics.

    Bookkeeping keys (``_NOT_LOSSES``: speed, learning rate, data waits, action-focus extremes)
    are left out, so they never share a log-scaled panel with the losses.
    """
    curves = Curves()
    for record in records:
        step = float(record["step"])
        if isinstance(record.get("eval"), dict):
            for name, value in _flat_numbers(record["eval"]).items():
                curves.evals.setdefault(name, []).append((step, value))
            continue
        stage = record.get("stage")
        stage = int(stage) if finite_number(stage) is not None else 0
        for name, value in record.items():
            if name not in _NOT_LOSSES and (number := finite_number(value)) is not None:
                statistic = name.startswith(_STATISTIC_PREFIXES) or name.endswith(
                    _STATISTIC_SUFFIXES
                )
                kind = curves.statistics if statistic else curves.losses
                kind.setdefault(stage, {}).setdefault(name, []).append((step, number))
    return curves


def training_curves(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Loss terms per training stage over steps, plus evaluation metrics if any were logged.

    Evaluation metrics are split into [0, 1]-valued ones (accuracies, rates) and the rest
    (PSNR, losses), so neither scale flattens the other.
    """
    curves = curve_series(_read_records(Path(metrics_jsonl)))
    evals = curves.evals
    unit = {k: v for k, v in evals.items() if all(0.0 <= y <= 1.0 for _, y in v)}
    other = {k: v for k, v in evals.items() if k not in unit}
    panels = []
    for stage in sorted(curves.losses.keys() | curves.statistics.keys()):
        name = f"stage {stage}" if stage else "training"
        if stage in curves.losses:
            panels.append((f"{name} losses", curves.losses[stage], True))
        if stage in curves.statistics:
            panels.append((f"{name} statistics", curves.statistics[stage], True))
    panels += [(t, s, False) for t, s in [("evaluation", unit), ("evaluation (other)", other)] if s]

    fig = _figure(7.5, 3.2 * max(1, len(panels)))
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no training records", ha="center", va="center")
        ax.set_axis_off()
    for i, (title, series, log_y) in enumerate(panels):
        _plot_series(fig.add_subplot(len(panels), 1, i + 1), series, title, log_y)
    return _save(fig, path)


def _finish_axes(ax, xlabel: str, ylabel: str, title: str, logx: bool, legend: bool) -> None:
    """Labels, optional log x axis, light grid and legend shared by the line/scatter plots."""
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def accuracy_vs(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    path: str | Path,
    xlabel: str,
    ylabel: str = "accuracy",
    title: str = "",
    logx: bool = False,
) -> Path:
    """One line per series over a shared x (e.g. accuracy vs imbalance ratio per latent).

    A series named ``"<base> (<variant>)"`` is drawn dashed in the colour of ``<base>``, so a
    second measurement of the same thing reads as its companion."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    colours: dict[str, str] = {}
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(x)} x values")
        numbers = [finite_number(y) for y in ys]
        values = [math.nan if v is None else v for v in numbers]
        base = name.split(" (")[0]
        style = {"linestyle": "--"} if base != name else {}
        if base in colours:
            style["color"] = colours[base]
        (line,) = ax.plot(list(x), values, marker="o", label=name, **style)
        colours.setdefault(base, line.get_color())
    _finish_axes(ax, xlabel, ylabel, title, logx, legend=bool(series))
    return _save(fig, path)


def scatter(
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]],
    path: str | Path,
    xlabel: str,
    ylabel: str = "accuracy",
    title: str = "",
    logx: bool = False,
) -> Path:
    """Points (x, y) per named series, e.g. per-action accuracy vs training frequency per latent.

    Points whose y is missing (None, NaN: an action absent from the test pairs) are left out
    rather than drawn at 0, which would read as "always wrong". A log x-axis needs x > 0, so
    non-positive x values are left out too when ``logx`` is set.
    """
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    markers = "os^Dvx+*"
    for i, (name, (xs, ys)) in enumerate(series.items()):
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(xs)} x values and {len(ys)} y values")
        points = [
            (fx, fy)
            for fx, fy in (
                (finite_number(a), finite_number(b)) for a, b in zip(xs, ys, strict=True)
            )
            if fx is not None and fy is not None and (fx > 0 or not logx)
        ]
        px = [p[0] for p in points]
        py = [p[1] for p in points]
        ax.scatter(px, py, label=name, marker=markers[i % len(markers)], alpha=0.7, s=22)
    _finish_axes(ax, xlabel, ylabel, title, logx, legend=bool(series))
    return _save(fig, path)

"""A sweep's summaries over seeds: ``results.md``, ``results.csv``, ``per_action.csv``, figures."""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqcausal.sweep.plan import level_text, unique
from vqcausal.sweep.results import Row, collect, latent_rank, order_key

#: metrics summarised over seeds: (row field, table header, digits)
SUMMARY_METRICS: tuple[tuple[str, str, int], ...] = (
    ("balanced_accuracy", "balanced acc. (synthesis)", 3),
    ("rarest_accuracy", "rarest-action acc. (synthesis)", 3),
    ("classifier_balanced_accuracy", "balanced acc. (classifier)", 3),
    ("classifier_rarest_accuracy", "rarest-action acc. (classifier)", 3),
    ("counterfactual_psnr", "CF PSNR", 1),
    ("atomicity", "atomicity", 3),
    ("rarest_atomicity", "rarest-action atomicity", 3),
    ("common_atomicity", "other actions' atomicity", 3),
)


@dataclass
class Summary:
    """Mean and sample std over seeds of one (dataset, latent, mode, rho or k)."""

    dataset: str
    latent: str
    mode: str
    rho_or_k: float
    seeds: int
    rarest_action: str
    rarest_test_pairs: float | None  # mean per seed
    mean: dict[str, float | None]
    std: dict[str, float | None]


def summarise(rows: Sequence[Row]) -> list[Summary]:
    """Group rows by (dataset, latent, mode, rho or k); mean and std of each metric."""
    groups: dict[tuple[str, str, str, float], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.latent, row.mode, row.rho_or_k), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: order_key(*k)):
        members = groups[key]
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for name, _, _ in SUMMARY_METRICS:
            values = [v for v in (getattr(r, name) for r in members) if v is not None]
            mean[name] = statistics.fmean(values) if values else None
            std[name] = statistics.stdev(values) if len(values) > 1 else None
        pairs = [r.rarest_test_pairs for r in members if r.rarest_test_pairs is not None]
        out.append(
            Summary(
                *key,
                seeds=len(members),
                rarest_action=members[0].rarest_action,
                rarest_test_pairs=statistics.fmean(pairs) if pairs else None,
                mean=mean,
                std=std,
            )
        )
    return out


def _cell_text(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The sweep's table: one line per (dataset, latent, mode, rho or k), mean ± std over seeds.

    ``rarest action`` names the action and its held-out test pairs per seed (accuracy on a
    handful of pairs is coarse: read it with that count).
    """
    head = ["dataset", "latent", "mode", "rho / k", "seeds", "rarest action (test pairs)"]
    head += [title for _, title, _ in SUMMARY_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summarise(rows):
        level = (
            f"k={level_text(s.rho_or_k)}"
            if s.mode == "held_out"
            else (f"rho={level_text(s.rho_or_k)}")
        )
        pairs = "?" if s.rarest_test_pairs is None else f"{s.rarest_test_pairs:.0f}"
        cells = [s.dataset, s.latent, s.mode, level, str(s.seeds), f"{s.rarest_action} ({pairs})"]
        cells += [_cell_text(s.mean[n], s.std[n], d) for n, _, d in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    from vqcausal.atomic import write_text_atomic

    buffer = io.StringIO()
    names = [f.name for f in dataclasses.fields(Row) if f.name not in Row.CSV_EXCLUDE]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.csv_dict().items()})
    write_text_atomic(path, buffer.getvalue())
    return path


def write_per_action_csv(rows: Sequence[Row], path: Path) -> Path:
    """Long format: one line per (cell, action) with its training frequency and accuracy."""
    from vqcausal.atomic import write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "cell",
            "dataset",
            "latent",
            "mode",
            "rho_or_k",
            "seed",
            "action",
            "train_frequency",
            "test_pairs",
            "accuracy_synthesis",
            "accuracy_classifier",
        ]
    )
    for r in rows:
        for action, frequency in r.frequencies.items():
            writer.writerow(
                [
                    r.cell,
                    r.dataset,
                    r.latent,
                    r.mode,
                    r.rho_or_k,
                    r.seed,
                    action,
                    frequency,
                    r.test_pairs.get(action, ""),
                    "" if r.per_action.get(action) is None else r.per_action[action],
                    ""
                    if r.classifier_per_action.get(action) is None
                    else r.classifier_per_action[action],
                ]
            )
    write_text_atomic(path, buffer.getvalue())
    return path


def _series_over(
    summaries: Sequence[Summary], metric: str, levels: Sequence[float]
) -> dict[str, list[float | None]]:
    series: dict[str, list[float | None]] = {}
    for latent in unique(s.latent for s in summaries):
        by_level = {s.rho_or_k: s.mean[metric] for s in summaries if s.latent == latent}
        series[latent] = [by_level.get(level) for level in levels]
    return series


def _both_heads(
    summaries: Sequence[Summary], metric: str, levels: Sequence[float]
) -> dict[str, list[float | None]]:
    """A metric per latent for the synthesis head ("vq") and the learned classifier
    ("vq (classifier)", drawn dashed): a latent may lose on one head and win on the other."""
    synthesis = _series_over(summaries, metric, levels)
    classifier = _series_over(summaries, f"classifier_{metric}", levels)
    return synthesis | {f"{latent} (classifier)": ys for latent, ys in classifier.items()}


def write_figures(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Per dataset: accuracy vs rho per latent (log x), held-out accuracy vs k, and every
    action's accuracy vs its training frequency (``actions`` mode cells)."""
    from vqcausal.eval import plots

    paths: list[Path] = []
    summaries = summarise(rows)

    def curve(
        these: Sequence[Summary], metric: str, name: str, xlabel: str, ylabel: str, title: str
    ) -> Path:
        """``metric`` of both retrieval heads per latent against rho or k (log x)."""
        levels = sorted({s.rho_or_k for s in these})
        series = _both_heads(these, metric, levels)
        return plots.accuracy_vs(levels, series, folder / name, xlabel, ylabel, title, logx=True)

    for dataset in unique(s.dataset for s in summaries):
        mine = [s for s in summaries if s.dataset == dataset]
        uniform = [s for s in mine if s.mode == "actions" and s.rho_or_k == 1.0]
        for mode, what in (("actions", "action"), ("values", "factor-value")):
            these = [s for s in mine if s.mode == mode]
            if mode == "values" and these and not any(s.rho_or_k == 1.0 for s in these):
                these = uniform + these  # rho = 1 is the shared uniform cell
            if not these:
                continue
            rho = f"{what} imbalance rho (most / least frequent)"
            paths.append(
                curve(
                    these,
                    "balanced_accuracy",
                    f"accuracy_vs_rho-{dataset}-{mode}.png",
                    rho,
                    "balanced retrieval accuracy",
                    f"{dataset}: retrieval under {what} imbalance",
                )
            )
            if mode == "actions":
                paths.append(
                    curve(
                        these,
                        "rarest_accuracy",
                        f"rarest_vs_rho-{dataset}.png",
                        rho,
                        "rarest action's retrieval accuracy",
                        f"{dataset}: the rarest action ({these[0].rarest_action})",
                    )
                )
        held = [s for s in mine if s.mode == "held_out"]
        if held:
            paths.append(
                curve(
                    held,
                    "rarest_accuracy",
                    f"held_out_vs_k-{dataset}.png",
                    "distinct training pairs of the held-out action (k)",
                    "held-out action's retrieval accuracy",
                    f"{dataset}: {held[0].rarest_action} from k examples",
                )
            )
        points: dict[str, tuple[list[float], list[float | None]]] = {}
        for row in sorted(rows, key=lambda r: latent_rank(r.latent)):
            if row.dataset == dataset and row.mode == "actions":
                xs, ys = points.setdefault(row.latent, ([], []))
                for action, frequency in row.frequencies.items():
                    xs.append(frequency)
                    ys.append(row.per_action.get(action))
        if points:
            paths.append(
                plots.scatter(
                    points,
                    folder / f"per_action_vs_frequency-{dataset}.png",
                    xlabel="training frequency of the action",
                    ylabel="per-action retrieval accuracy (synthesis)",
                    title=f"{dataset}: every action of every actions-mode cell",
                    logx=True,
                )
            )
    return paths


def write_results(sweep_dir: str | Path, rows: Sequence[Row] | None = None) -> dict[str, Any]:
    """results.csv, per_action.csv, results.md and figures/ of a sweep folder."""
    from vqcausal.atomic import write_text_atomic

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir) if rows is None else list(rows)
    table = markdown_table(rows)
    write_text_atomic(sweep_dir / "results.md", table)
    return {
        "csv": write_csv(rows, sweep_dir / "results.csv"),
        "per_action_csv": write_per_action_csv(rows, sweep_dir / "per_action.csv"),
        "markdown": sweep_dir / "results.md",
        "figures": write_figures(rows, sweep_dir / "figures"),
        "table": table,
    }

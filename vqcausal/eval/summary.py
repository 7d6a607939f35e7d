"""The printed summary of ``vqcausal evaluate``: headline figures and the per-action table."""

from __future__ import annotations

from typing import Any

from vqcausal.eval.evaluate import Result


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _short(value: Any) -> str:
    """Table cells: fractions to 3 decimals, counts in full."""
    return f"{value:.3f}" if isinstance(value, float) else _fmt(value)


def summary_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(section, metric, value) rows of the headline numbers."""
    rows: list[tuple[str, str, str]] = []
    for method, report in metrics["retrieval"].items():
        for key in ("accuracy", "balanced_accuracy", "worst_action_accuracy"):
            rows.append((f"retrieval ({method})", key, _fmt(report[key])))
        rows.append(
            (f"retrieval ({method})", "undirected_accuracy", _fmt(report["undirected_accuracy"]))
        )
        for k, value in report["top_k"].items():
            rows.append((f"retrieval ({method})", f"top-{k}", _fmt(value)))
    for key, value in metrics["reconstruction"].items():
        rows.append(("reconstruction", key, _fmt(value)))
    for key, value in metrics["counterfactual"].items():
        if not isinstance(value, dict):
            rows.append(("counterfactual", key, _fmt(value)))
    for group in ("codes", "codes_training"):
        for key, value in metrics["counterfactual"].get(group, {}).items():
            rows.append(("counterfactual", f"{group}.{key}", _fmt(value)))
    for key, value in metrics["disentanglement"].items():
        rows.append(("disentanglement", key, _fmt(value)))
    structure = metrics["structure"]
    if "shd" in structure:
        rows.append(("structure", "shd", _fmt(structure["shd"])))
        for key, value in structure["edges"].items():
            rows.append(("structure", f"edges.{key}", _fmt(value)))
    mic = structure.get("mic", {})
    for name, m, t in zip(
        mic.get("names", []), mic.get("mic", []), mic.get("tic", []), strict=True
    ):
        rows.append(("structure", f"mic / tic {name}", f"{_fmt(m)} / {_fmt(t)}"))
    return rows


def print_summary(result: Result) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    from vqcausal.eval.counterfactual import PER_ACTION_LEGEND, per_action_table

    metrics = result.metrics
    title = (
        f"{metrics['run']}: {metrics['latent']} at step {metrics['step']:,}, "
        f"{metrics['pairs']:,} {metrics['split']} pairs"
    )
    table = Table("section", "metric", "value", title=title)
    for section, key, value in summary_rows(metrics):
        table.add_row(section, key, value)
    console = Console()
    console.print(table)
    cf = metrics["counterfactual"]
    header, cells = per_action_table(cf)
    if cells:
        first = Column(header[0], no_wrap=True)
        actions = Table(first, *header[1:], title="counterfactuals per action")
        actions.caption = PER_ACTION_LEGEND
        for row in cells:
            actions.add_row(*(value if isinstance(value, str) else _short(value) for value in row))
        # a log or pipe gets the table at its natural width (rich would squeeze it into 80
        # columns and cut every number); a terminal wraps it as usual
        if not console.is_terminal:
            unbounded = console.options.update_width(10_000)
            console.width = max(console.measure(actions, options=unbounded).maximum, console.width)
        console.print(actions)
    if not cf.get("atomicity_reliable", True):
        console.print(
            f"[yellow]warning:[/] the factor oracle reads only "
            f"{cf['oracle_exact_on_targets']:.1%} of the true x' exactly, so atomicity is not "
            "reliable"
            + (" (--fast trains a tiny oracle: drop --fast)" if metrics["settings"]["fast"] else "")
        )
    took = sum(metrics["seconds"].values())
    console.print(
        f"wrote {result.out_dir / 'metrics.json'} and {len(result.figures)} figures in {took:.1f} s"
    )

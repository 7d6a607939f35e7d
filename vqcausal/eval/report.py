"""One self-contained HTML page per run: metrics table, evaluation figures, training curves.

Everything is inlined (CSS, PNGs as data URIs, a few lines of script), so the page can be
mailed, archived or opened offline; a Content-Security-Policy forbids any fetch at all.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

from vqcausal.errors import VQCausalError
from vqcausal.eval import plots
from vqcausal.runs import check_run_dir, write_text_atomic

#: lists longer than this (or nested, like confusion matrices) stay out of the table
MAX_LIST_IN_TABLE = 8
TRAINING_CURVES = "training-curves.png"
_STEP_SUFFIX = re.compile(r"^(?P<kind>.+)-(?P<step>\d+)$")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.meta { color: #555; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.25em 1em 0.25em 0.4em; text-align: left; }
td.value { font-family: ui-monospace, monospace; text-align: right; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""

# Counts images that actually decoded, so a headless browser can check the page renders.
_SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  for (var i = 0; i < document.images.length; i++) {
    if (document.images[i].naturalWidth > 0) { n++; }
  }
  document.getElementById("rendered-images").textContent = String(n);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


class ReportError(VQCausalError):
    """The run or evaluation folder lacks what the report needs."""


def format_value(value: object) -> str:
    """Integers in full, other numbers to 4 significant digits, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def flatten_metrics(metrics: dict) -> dict[str, str]:
    """Nested metrics as ``dotted.key -> formatted value``; long or nested lists are left out."""
    rows: dict[str, str] = {}
    for name, value in plots.leaves(metrics):
        if not isinstance(value, list):
            rows[name] = format_value(value)
        elif len(value) <= MAX_LIST_IN_TABLE and not any(isinstance(v, list | dict) for v in value):
            rows[name] = ", ".join(format_value(v) for v in value)
    return rows


def _split_step(path: Path) -> tuple[str, int]:
    """``recon-0006000.png`` -> ("recon", 6000); names without a step get step -1."""
    match = _STEP_SUFFIX.match(path.stem)
    return (match["kind"], int(match["step"])) if match else (path.stem, -1)


def newest_per_kind(folder: Path) -> list[Path]:
    """The highest-step PNG of each kind in a training ``figures/`` folder, sorted by kind."""
    newest: dict[str, tuple[int, Path]] = {}
    for path in folder.glob("*.png") if folder.is_dir() else []:
        kind, step = _split_step(path)
        if kind not in newest or step > newest[kind][0]:
            newest[kind] = (step, path)
    return [newest[kind][1] for kind in sorted(newest)]


def _load_metrics(run_dir: Path, eval_dir: Path) -> dict:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise ReportError(f"no metrics.json in {eval_dir}: run `vqcausal evaluate {run_dir}` first")
    try:
        metrics = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ReportError(f"{path} is not valid JSON ({err}); re-run `vqcausal evaluate`") from err
    if not isinstance(metrics, dict):
        raise ReportError(f"{path} must hold a JSON object; re-run `vqcausal evaluate`")
    return metrics


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    text = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def _figures(run_dir: Path, eval_dir: Path, out: Path) -> list[tuple[Path, str]]:
    """(png, caption) pairs: evaluation figures, training curves, newest training figures."""
    figures: list[tuple[Path, str]] = []
    curves = eval_dir / TRAINING_CURVES
    if (run_dir / "metrics.jsonl").is_file():
        plots.training_curves(run_dir / "metrics.jsonl", curves)
    for path in sorted(eval_dir.glob("*.png")):
        if path.name != TRAINING_CURVES and path.resolve() != out.resolve():
            figures.append((path, f"{path.stem} (evaluation: {path.name})"))
    if curves.is_file():
        figures.append((curves, "training curves (from metrics.jsonl)"))
    for path in newest_per_kind(run_dir / "figures"):
        kind, step = _split_step(path)
        at = f" at step {step:,}" if step >= 0 else ""
        figures.append((path, f"{kind}{at} (training: figures/{path.name})"))
    return figures


def _page(run_name: str, metrics: dict, figures: list[tuple[Path, str]]) -> str:
    e = html.escape
    header = [
        f"{key} <b>{e(format_value(metrics[key]))}</b>"
        for key in ("step", "latent", "split")
        if key in metrics and not isinstance(metrics[key], dict | list)
    ]
    rows = "\n".join(
        f'<tr><td>{e(key)}</td><td class="value">{e(value)}</td></tr>'
        for key, value in flatten_metrics(metrics).items()
        if key != "run"
    )
    body = "\n".join(_figure_html(path, caption) for path, caption in figures)
    per_action = _per_action_html(metrics.get("counterfactual"))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vqcausal report: {e(run_name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>vqcausal report: {e(run_name)}</h1>
<p class="meta">{" &middot; ".join(header)}</p>
<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>value</th></tr>
{rows}
</table>
{per_action}
<h2>Figures</h2>
<p class="meta">{len(figures)} figures, <span id="rendered-images">0</span> rendered</p>
{body}
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _per_action_html(section: object) -> str:
    """The counterfactual section's per-action table (atomicity and where it is lost)."""
    from vqcausal.eval.counterfactual import PER_ACTION_LEGEND, per_action_table

    if not isinstance(section, dict):
        return ""
    header, rows = per_action_table(section)
    if not rows:
        return ""
    e = html.escape
    head = "".join(f"<th>{e(title)}</th>" for title in header)
    body = "\n".join(
        "<tr><td>"
        + e(str(row[0]))
        + "</td>"
        + "".join(f'<td class="value">{e(format_value(v))}</td>' for v in row[1:])
        + "</tr>"
        for row in rows
    )
    legend = f'<p class="meta">{e(PER_ACTION_LEGEND)}</p>'
    return (
        f"<h2>Counterfactuals per action</h2>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n{legend}"
    )


def build_report(run_dir: Path, eval_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write the run's report page (default ``eval_dir/report.html``) and return its path."""
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / "eval"
    out = Path(out) if out is not None else eval_dir / "report.html"
    check_run_dir(run_dir)
    if out.is_dir():
        raise ReportError(f"{out} is a folder; --out names the HTML file to write")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ReportError(f"cannot write {out}: {parent} is a file")
    metrics = _load_metrics(run_dir, eval_dir)
    run_name = str(metrics.get("run") or run_dir.resolve().name)
    page = _page(run_name, metrics, _figures(run_dir, eval_dir, out))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return out

"""One self-contained HTML page per run, in the order a reader asks: does the model work (the
headline figures beside their goals), where does it fail (one row per action), what does it
look like (the figures, each with what to look for), then the rest, and the settings folded
away at the end.

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

from vqcausal.atomic import write_text_atomic
from vqcausal.errors import VQCausalError
from vqcausal.eval import plots
from vqcausal.runs import check_run_dir, leaves

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
td.met { color: #1a7f37; } td.missed { color: #b42318; font-weight: 600; }
details { margin-top: 2em; } summary { cursor: pointer; font-weight: 600; }
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

#: (label, metric key, goal, unit): the figures that say whether the model works, with the
#: README's goals for the default CPU run (Atomic counterfactuals); None: shown without a goal
HEADLINE = (
    ("retrieval, synthesis head: balanced", "retrieval.synthesis.balanced_accuracy", 0.99, ""),
    (
        "retrieval, synthesis head: worst action",
        "retrieval.synthesis.worst_action_accuracy",
        0.97,
        "",
    ),
    ("retrieval, classifier head: balanced", "retrieval.classifier.balanced_accuracy", 0.97, ""),
    (
        "retrieval, classifier head: worst action",
        "retrieval.classifier.worst_action_accuracy",
        0.93,
        "",
    ),
    ("atomicity of counterfactuals", "counterfactual.atomicity", 0.90, ""),
    (
        "its ceiling: atomicity of decode(encode(x'))",
        "counterfactual.autoencoder_ceiling",
        None,
        "",
    ),
    ("atomicity after 3 chained steps", "counterfactual.atomicity_chained_3", 0.75, ""),
    ("counterfactual PSNR against the true x'", "counterfactual.psnr", 31.0, " dB"),
    ("x itself against x' (changing nothing)", "counterfactual.psnr_unchanged", None, " dB"),
    ("reconstruction PSNR", "reconstruction.psnr", 34.0, " dB"),
)
#: what to look for in each figure, by its name (evaluation PNGs, then training figures)
CAPTIONS = {
    "interventions": "each row: an input x, then every action applied once. Look for: only "
    "the named factor changing, everything else staying.",
    "counterfactuals": "per action: x | true x' | decode(encode(x')) | counterfactual | "
    "|counterfactual - x'|. Look for: bright difference maps (the counterfactual misses x'), "
    "and a third column already unlike x' (the autoencoder's own loss).",
    "recon": "inputs above their reconstructions. Look for: a factor the autoencoder changes "
    "(shape, a colour): it caps atomicity.",
    "confusion_synthesis": "which action the synthesis head names (columns) for each true "
    "action (rows). Look for: off-diagonal cells; + and - of one factor confused means the "
    "direction is lost.",
    "confusion_classifier": "the same for the classifier head.",
    "per_action_synthesis": "held-out accuracy per action, synthesis head. Look for: the "
    "weakest actions (rare ones, geometry).",
    "per_action_classifier": "the same for the classifier head.",
    "adjacency": "the learned graph: edge strength between code variables (scm: between "
    "concepts). Look for: a sparse pattern; for scm, the true DAG's edges.",
    "training-curves": "loss terms and held-out figures per step (stage 2 starts where the "
    "terms change). Look for: curves still falling at the end (more steps would help) or "
    "spikes.",
}

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
    for name, value in leaves(metrics):
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


def _caption(name: str, where: str) -> str:
    """``name (where): what it shows; look for ...``."""
    what = CAPTIONS.get(name)
    return f"{name} ({where}): {what}" if what else f"{name} ({where})"


def _figure_order(path: Path) -> tuple[int, str]:
    """Evaluation figures in the order of CAPTIONS (the most telling first), then the rest."""
    order = list(CAPTIONS)
    return (order.index(path.stem) if path.stem in order else len(order), path.name)


def _figures(run_dir: Path, eval_dir: Path, out: Path) -> list[tuple[Path, str]]:
    """(png, caption) pairs: evaluation figures, training curves, newest training figures."""
    figures: list[tuple[Path, str]] = []
    curves = eval_dir / TRAINING_CURVES
    if (run_dir / "metrics.jsonl").is_file():
        plots.training_curves(run_dir / "metrics.jsonl", curves)
    for path in sorted(eval_dir.glob("*.png"), key=_figure_order):
        if path.name != TRAINING_CURVES and path.resolve() != out.resolve():
            figures.append((path, _caption(path.stem, f"evaluation: {path.name}")))
    if curves.is_file():
        figures.append((curves, _caption("training-curves", "from metrics.jsonl")))
    for path in newest_per_kind(run_dir / "figures"):
        kind, step = _split_step(path)
        at = f" at step {step:,}" if step >= 0 else ""
        figures.append((path, f"{kind}{at} (training: figures/{path.name})"))
    return figures


def _leaf(metrics: dict, key: str) -> object:
    value: object = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _headline_html(metrics: dict) -> str:
    """The figures that say whether the model works, each beside its goal."""
    e = html.escape
    rows = []
    for label, key, goal, unit in HEADLINE:
        value = _leaf(metrics, key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        shown = f"{format_value(value)}{unit}"
        if goal is None:
            rows.append(
                f'<tr><td>{e(label)}</td><td class="value">{e(shown)}</td><td></td><td></td></tr>'
            )
            continue
        met = value >= goal
        verdict = '<td class="met">met</td>' if met else '<td class="missed">missed</td>'
        rows.append(
            f'<tr><td>{e(label)}</td><td class="value">{e(shown)}</td>'
            f'<td class="value">&ge; {e(format_value(goal))}{e(unit)}</td>{verdict}</tr>'
        )
    notes = []
    counterfactual = metrics.get("counterfactual")
    if isinstance(counterfactual, dict):
        if counterfactual.get("atomicity_reliable") is False:
            notes.append(
                "the factor oracle cannot read the true x' reliably: atomicity here says little"
            )
        if isinstance(counterfactual.get("reference"), str):
            notes.append(counterfactual["reference"])
    notes.append(
        "goals: the README's for the default CPU run on shapes3d; on other data a reference point"
    )
    note = "".join(f'<p class="meta">{e(n)}</p>' for n in notes)
    return (
        "<h2>Does it work?</h2>\n<table>\n<tr><th>figure</th><th>value</th><th>goal</th>"
        "<th></th></tr>\n" + "\n".join(rows) + f"\n</table>\n{note}"
    )


def _others_html(metrics: dict) -> str:
    """Disentanglement scores and structure, one compact table."""
    e = html.escape
    rows = []
    scores = metrics.get("disentanglement")
    if isinstance(scores, dict):
        if isinstance(scores.get("skipped"), str):
            rows.append(("disentanglement", "skipped: " + scores["skipped"]))
        rows += [(k, format_value(v)) for k, v in scores.items() if isinstance(v, int | float)]
    structure = metrics.get("structure")
    if isinstance(structure, dict):
        if "shd" in structure:
            rows.append(
                ("SHD of the learned graph to the true DAG", format_value(structure["shd"]))
            )
        mic = structure.get("mic")
        if isinstance(mic, dict):
            for key in ("mic_mean", "tic_mean"):
                if key in mic:
                    rows.append(
                        (
                            f"{key.split('_')[0].upper()} (mean over concepts)",
                            format_value(mic[key]),
                        )
                    )
    if not rows:
        return ""
    body = "\n".join(f'<tr><td>{e(k)}</td><td class="value">{e(v)}</td></tr>' for k, v in rows)
    return f"<h2>Disentanglement and structure</h2>\n<table>\n{body}\n</table>"


def _page(run_name: str, metrics: dict, figures: list[tuple[Path, str]]) -> str:
    e = html.escape
    header = [
        f"{key} <b>{e(format_value(metrics[key]))}</b>"
        for key in ("step", "latent", "split", "pairs")
        if key in metrics and not isinstance(metrics[key], dict | list)
    ]
    flat = flatten_metrics(metrics)
    rows = "\n".join(
        f'<tr><td>{e(key)}</td><td class="value">{e(value)}</td></tr>'
        for key, value in flat.items()
        if key != "run"
    )
    body = "\n".join(_figure_html(path, caption) for path, caption in figures)
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
{_headline_html(metrics)}
{_per_action_html(metrics)}
<h2>Figures</h2>
<p class="meta">{len(figures)} figures, <span id="rendered-images">0</span> rendered</p>
{body}
{_others_html(metrics)}
<details>
<summary>Every metric and setting ({len(flat)} values)</summary>
<table>
<tr><th>metric</th><th>value</th></tr>
{rows}
</table>
</details>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _per_action_html(metrics: dict) -> str:
    """One row per action: both heads' held-out accuracy, then the counterfactual columns
    (atomicity and where it is lost)."""
    from vqcausal.eval.counterfactual import PER_ACTION_LEGEND, per_action_table

    heads = {
        head: _leaf(metrics, f"retrieval.{head}.per_action") for head in ("synthesis", "classifier")
    }
    heads = {h: v for h, v in heads.items() if isinstance(v, dict)}
    section = metrics.get("counterfactual")
    header, rows = per_action_table(section) if isinstance(section, dict) else (["action"], [])
    by_action = {row[0]: row[1:] for row in rows}
    actions = list(next(iter(heads.values()), {})) or list(by_action)
    if not actions:
        return ""
    e = html.escape
    titles = ["action", *(f"{h} head" for h in heads), *header[1:]]
    head = "".join(f"<th>{e(t)}</th>" for t in titles)
    body = []
    for action in actions:
        cells = [heads[h].get(action) for h in heads]
        cells += by_action.get(action, [None] * (len(header) - 1))
        body.append(
            f"<tr><td>{e(str(action))}</td>"
            + "".join(f'<td class="value">{e(format_value(v))}</td>' for v in cells)
            + "</tr>"
        )
    legend = f'<p class="meta">{e("head: held-out retrieval accuracy; " + PER_ACTION_LEGEND)}</p>'
    return (
        "<h2>Per action</h2>\n<table>\n<tr>"
        + head
        + "</tr>\n"
        + "\n".join(body)
        + f"\n</table>\n{legend}"
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

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from vqcausal.cli import main
from vqcausal.eval import plots
from vqcausal.eval.report import build_report

CHROMIUM = Path("/usr/bin/chromium")
ACTIONS = ["floor_hue+", "floor_hue-", "shape+", "shape-"]
CONFUSION = [[9, 1, 0, 0], [0, 10, 0, 0], [2, 0, 7, 1], [0, 0, 0, 0]]
METRICS = {
    "run": "toy-run-2024",
    "step": 9000,
    "latent": "vq",
    "split": "test",
    "retrieval": {
        "synthesis": {
            "accuracy": 0.9712345,
            "balanced_accuracy": 0.8123456,
            "top_k": {"1": 0.9712345, "3": 0.99999},
            "per_action": {"floor_hue+": 0.9, "floor_hue-": 1.0, "shape+": 0.7, "shape-": None},
            "confusion": CONFUSION,
        }
    },
    "reconstruction": {"mse": 0.0012345678, "psnr": 29.87654},
    "structure": {"shd": 0},
}
TRAINING_LOG = [
    {"stage": 1, "step": 50, "steps_per_s": 12.0, "total": 0.9, "recon": 0.8},
    {"stage": 1, "step": 100, "steps_per_s": 12.5, "total": 0.5, "recon": 0.4},
    {"stage": 2, "step": 150, "total": 1.2, "recon": 0.3, "transition": 0.9},
    {"stage": 2, "step": 200, "total": 0.8, "recon": 0.2, "transition": 0.6},
    {"stage": 2, "step": 200, "eval": {"accuracy": 0.8, "psnr": 25.0}},
]


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> None:
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fabricated run: training log with junk lines, step-named figures, eval outputs."""
    run = tmp_path_factory.mktemp("run")
    lines = [json.dumps(r) for r in TRAINING_LOG]
    lines.insert(2, "not json {")
    lines.append('{"stage": 2, "step": 25')  # a half-written last line
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    figures = run / "figures"
    figures.mkdir()
    _png(figures / "recon-0000100.png", (200, 0, 0))
    _png(figures / "recon-0000200.png", (0, 200, 0))
    _png(figures / "adjacency-0000200.png", (0, 0, 200))
    evaluation = run / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps(METRICS))
    synthesis = METRICS["retrieval"]["synthesis"]
    plots.per_action_bar(synthesis["per_action"], evaluation / "per-action.png", "per action")
    plots.confusion_png(CONFUSION, ACTIONS, evaluation / "confusion.png", "confusion")
    return run


# eval figures (2) + training curves + newest recon + adjacency
EXPECTED_FIGURES = 5


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    return build_report(run_dir)


def _data_uris(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_is_one_self_contained_page(run_dir, report):
    assert report == run_dir / "eval" / "report.html"
    assert sorted(p.name for p in report.parent.glob("*.html")) == ["report.html"]
    page = report.read_text()
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "toy-run-2024" in page
    for key, value in [
        ("retrieval.synthesis.accuracy", "0.9712"),
        ("retrieval.synthesis.top_k.3", "1"),
        ("retrieval.synthesis.per_action.shape-", "n/a"),
        ("reconstruction.mse", "0.001235"),
        ("reconstruction.psnr", "29.88"),
        ("structure.shd", "0"),
    ]:
        assert f'<td>{key}</td><td class="value">{value}</td>' in page
    assert "confusion</td>" not in page  # matrices stay out of the table
    assert page.count("<img") == EXPECTED_FIGURES
    uris = _data_uris(page)
    assert len(uris) == EXPECTED_FIGURES
    sizes = []
    for uri in uris:
        image = Image.open(io.BytesIO(base64.b64decode(uri)))
        image.verify()
        sizes.append(image.size)
    assert sizes.count((24, 16)) == 2  # one recon (the newest) and the adjacency
    assert "recon at step 200" in page and "recon at step 100" not in page
    assert (run_dir / "eval" / "training-curves.png").is_file()


def test_the_report_opens_with_what_says_whether_the_model_works(report):
    page = report.read_text()
    order = [
        page.index("<h2>Does it work?</h2>"),
        page.index("<h2>Per action</h2>"),
        page.index("<img"),
        page.index("<details>"),
        page.index("<td>retrieval.synthesis.accuracy</td>"),  # the full list, folded away
    ]
    assert order == sorted(order)
    headline = page[order[0] : order[1]]
    assert (
        '<td>retrieval, synthesis head: balanced</td><td class="value">0.8123</td>'
        '<td class="value">&ge; 0.99</td><td class="missed">missed</td>' in headline
    )
    assert 'reconstruction PSNR</td><td class="value">29.88 dB</td>' in headline
    per_action = page[order[1] : order[2]]
    assert "<th>synthesis head</th>" in per_action
    assert '<tr><td>shape+</td><td class="value">0.7</td></tr>' in per_action
    assert '<tr><td>shape-</td><td class="value">n/a</td></tr>' in per_action
    assert "training-curves (from metrics.jsonl): loss terms" in page  # captioned


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_headless_chromium_renders_every_figure(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium not installed (CI installs it: apt-get install chromium)")
    url = report.resolve().as_uri()
    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.search(r'<span id="rendered-images">(\d+)</span>', dom.stdout)
    assert rendered, dom.stdout[-2000:]
    assert int(rendered[1]) == EXPECTED_FIGURES

    shot = tmp_path / "shot.png"
    result = _chromium(
        tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,3000", url
    )
    assert result.returncode == 0, result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 10  # text, plots: not blank


def test_missing_metrics_is_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: no metrics.json") and f"vqcausal evaluate {tmp_path}" in err


def test_cli_writes_report_where_asked(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "page.html"
    args = ["report", str(run_dir), "--eval-dir", str(run_dir / "eval"), "--out", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(_data_uris(out.read_text())) == EXPECTED_FIGURES


def test_plots_write_valid_pngs(tmp_path):
    paths = [
        plots.per_action_bar({"a+": 0.5, "a-": None, "b+": 1.0}, tmp_path / "bar.png", "t"),
        plots.confusion_png([[1, 0], [0, 0]], ["a", "b"], tmp_path / "conf.png", "t"),
        plots.accuracy_vs(
            [1, 10, 100],
            {"vq": [0.9, 0.8, None], "gaussian": [0.7, 0.5, 0.3]},
            tmp_path / "sweep.png",
            "imbalance ratio",
            "accuracy",
            "accuracy vs imbalance",
            logx=True,
        ),
    ]
    log = tmp_path / "metrics.jsonl"
    log.write_text('junk\n[1, 2]\n{"step": "x"}\n{"stage": 1, "step": 1, "total": -0.5}\n')
    paths.append(plots.training_curves(log, tmp_path / "curves.png"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    paths.append(plots.training_curves(empty, tmp_path / "empty.png"))
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*.tmp*"))
    with pytest.raises(ValueError, match="shape"):
        plots.confusion_png([[1, 2]], ["a", "b"], tmp_path / "bad.png", "t")


def test_training_curves_keep_bookkeeping_and_code_statistics_out_of_the_loss_panels(tmp_path):
    records = [
        {"stage": 1, "step": 50, "lr": 1e-3, "data_wait": 0.02, "steps_per_s": 6.7, "mse": 0.02},
        {"stage": 1, "step": 100, "mse": 0.01, "perplexity": 80.0, "usage_0": 0.9},
        {"stage": 2, "step": 9050, "total": 0.5, "acyclic": 0.0, "retrieval_accuracy": 0.8},
        {"step": 9050, "eval": {"recon_psnr": 33.0, "retrieval": {"balanced": 0.9}}},
    ]
    curves = plots.curve_series(records)
    assert curves.losses == {
        1: {"mse": [(50.0, 0.02), (100.0, 0.01)]},
        2: {"total": [(9050.0, 0.5)], "acyclic": [(9050.0, 0.0)]},
    }
    assert curves.statistics == {
        1: {"perplexity": [(100.0, 80.0)], "usage_0": [(100.0, 0.9)]},
        2: {"retrieval_accuracy": [(9050.0, 0.8)]},
    }
    assert curves.evals == {"recon_psnr": [(9050.0, 33.0)], "retrieval.balanced": [(9050.0, 0.9)]}
    # a loss 0 throughout is named, not drawn: the other losses keep their log scale
    fig = plots._figure(4, 3)
    ax = fig.add_subplot()
    plots._plot_series(ax, curves.losses[2], "stage 2 losses", log_y=True)
    assert ax.get_yscale() == "log" and "acyclic: 0 throughout" in ax.get_title()
    assert [line.get_label() for line in ax.get_lines()] == ["total"]

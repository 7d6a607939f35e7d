"""Experiment trackers through accelerate, read back with the trackers' own readers (no mocks):
TensorBoard's event files and MLflow's local store hold every logged scalar at its step, the
figures, the config and the final metrics; a tracker that is unknown or not installed is one
line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqcausal.runs import metric_records
from vqcausal.train.run import main as train
from vqcausal.train.trackers import flatten, hyperparameters, installed_trackers, known_trackers

pytestmark = pytest.mark.slow  # trains a run per tracker

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["train.stage1_steps=20", "train.stage2_steps=20", "train.eval_every=20"]
STEPS += ["train.log_every=10", "train.cache_pairs=64", "train.eval_pairs=16"]


def _train(runs: Path, *sets: str) -> Path:
    argv = ["--config", str(ROOT / "configs" / "smoke.toml"), "--set", f'runs="{runs}"']
    for s in (*STEPS, *sets):
        argv += ["--set", s]
    assert train(argv) == 0
    (run,) = list(runs.iterdir())
    return run


def _logged(run: Path, key: str) -> dict[int, float]:
    """``key`` (a flattened metrics.jsonl key) at each step it was logged."""
    return {
        r["step"]: flatten(r)[key]
        for _, r in metric_records(run / "metrics.jsonl")
        if key in flatten(r)
    }


def test_tensorboard_gets_every_scalar_at_its_step_and_the_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path / "runs", 'train.log_with="tensorboard"', 'tags=["latent=vq"]')
    events = EventAccumulator(str(run / "vqcausal"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"total", "lr", "steps_per_s", "eval/recon_psnr"} <= scalars
    assert "eval/retrieval_synthesis_balanced_accuracy" in scalars
    assert "final/retrieval_synthesis_balanced_accuracy" in scalars
    for key in ("total", "eval/recon_psnr"):
        read = {e.step: e.value for e in events.Scalars(key)}
        assert read == pytest.approx(_logged(run, key), rel=1e-6), key
    assert sorted(read) == [20, 40]  # one evaluation per stage
    images = set(events.Tags()["images"])
    assert {"reconstructions", "interventions"} <= images
    (picture,) = [e for e in events.Images("interventions")]
    assert (
        picture.step == 40 and picture.width > 0 and picture.encoded_image_string[:4] == b"\x89PNG"
    )


def test_mlflow_keeps_metrics_params_tags_and_figures_in_the_run_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sets = ['train.log_with="mlflow"', 'tags=["latent=vq", "sweep=demo"]']
    run = _train(tmp_path / "runs", *sets)
    store = run / "mlruns"
    assert store.is_dir() and not (tmp_path / "mlruns").exists()  # nothing outside the run
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "vqcausal"]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == run.name
    assert logged.data.tags["latent"] == "vq" and logged.data.tags["sweep"] == "demo"
    assert logged.data.params["train.stage1_steps"] == "20"
    assert logged.data.params["model.latent"] == "vq"
    history = client.get_metric_history(logged.info.run_id, "total")
    assert {m.step: m.value for m in history} == pytest.approx(_logged(run, "total"), rel=1e-6)
    final = logged.data.metrics["final/retrieval_synthesis_balanced_accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert final == pytest.approx(summary["retrieval_synthesis_balanced_accuracy"])
    figures = [f.path for f in client.list_artifacts(logged.info.run_id, "figures")]
    assert "figures/interventions-0000040.png" in figures


def test_no_tracker_writes_no_tracker_files(tmp_path):
    run = _train(tmp_path / "runs", 'train.log_with="none"')
    assert not (run / "vqcausal").exists() and not (run / "mlruns").exists()


def _missing_tracker() -> str:
    missing = [t for t in known_trackers() if t not in installed_trackers()]
    if not missing:
        pytest.skip("every tracker accelerate knows is installed here")
    return missing[0]


@pytest.mark.parametrize("which", ["unknown", "missing"])
def test_a_bad_tracker_is_one_line_and_no_run_folder(tmp_path, capsys, which):
    name = "tensorbored" if which == "unknown" else _missing_tracker()
    argv = ["--config", str(ROOT / "configs" / "smoke.toml"), "--set", f'runs="{tmp_path}"']
    assert train([*argv, "--set", f'train.log_with=["tensorboard", "{name}"]']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "unknown tracker" if which == "unknown" else "is not installed"
    assert len(err) == 1 and err[0].startswith("error: train.log_with:") and expected in err[0]
    assert not any(tmp_path.iterdir())


def test_records_flatten_into_tracker_tags():
    record = {"stage": 2, "eval": {"psnr": 30.5, "ok": True, "bad": float("nan")}, "name": "x"}
    assert flatten(record) == {"stage": 2, "eval/psnr": 30.5, "eval/ok": 1.0}
    config = {"train": {"lr": 1e-3, "log_with": ["tensorboard"]}, "data": {"path": None}}
    assert hyperparameters(config) == {
        "train.lr": 1e-3,
        "train.log_with": '["tensorboard"]',
        "data.path": "null",
    }


def test_a_tracker_that_refuses_figures_is_one_warning(tmp_path, capsys):
    """Figures are extras: a tracker failing on them warns once and training goes on."""
    from types import SimpleNamespace

    from PIL import Image

    from vqcausal.train.trackers import log_images

    class Refusing:
        name = "refusing"

        def log_images(self, values, step=None):
            raise ValueError("images must be (caption, image) pairs\nsecond line")

    png = tmp_path / "recon.png"
    Image.new("RGB", (8, 4)).save(png)
    log_images(SimpleNamespace(trackers=[Refusing()]), {"reconstructions": png}, step=3)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: refusing did not take the figures: images must be (caption, image) pairs"
    ]

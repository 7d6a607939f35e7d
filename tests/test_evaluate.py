"""``vqcausal evaluate``: metrics.json, figures, the factor oracle and its cache, bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcausal.cli import main as cli
from vqcausal.config import DataConfig
from vqcausal.data.registry import load_source
from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.eval.alignment import align_latents
from vqcausal.eval.evaluate import json_safe
from vqcausal.eval.oracle import OracleSettings, atomicity_report, load_or_train_oracle
from vqcausal.runs import config_from_meta, latest_checkpoint
from vqcausal.train.evaluation import EvalSet
from vqcausal.train.run import main as train

SMOKE = "configs/smoke.toml"
# a short smoke run: every metric has something to measure (quality is not tested here)
SHORT = [
    "train.stage1_steps=50",
    "train.stage2_steps=50",
    "train.cache_pairs=128",
    "train.eval_pairs=128",  # = the --fast pair count: training evaluated the same pairs
    "train.eval_every=1000",
    "train.log_every=50",
    "train.checkpoint_every=1000",
]
# just enough steps to produce a finished run of any latent
TINY = [
    "train.stage1_steps=4",
    "train.stage2_steps=4",
    "train.cache_pairs=64",
    "train.eval_pairs=16",
    "train.eval_every=1000",
    "train.log_every=1000",
    "train.checkpoint_every=1000",
]
FIGURES = {
    "confusion_synthesis.png",
    "confusion_classifier.png",
    "per_action_synthesis.png",
    "per_action_classifier.png",
    "interventions.png",
    "recon.png",
    "counterfactuals.png",
}
SECTIONS = {"retrieval", "reconstruction", "counterfactual", "disentanglement", "structure"}


def _train(runs: Path, settings: list[str], overrides: tuple[str, ...] | list[str] = ()) -> Path:
    args = ["--config", SMOKE, "--set", f'runs="{runs}"']
    for item in [*settings, *overrides]:
        args += ["--set", item]
    assert train(args) == 0
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    return folder


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _no_nan(text: str) -> dict:
    def reject(token: str):
        raise AssertionError(f"metrics.json holds {token}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), SHORT)


@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory) -> dict:
    """One ``--fast`` evaluation into a separate folder, with what it printed and took."""
    out = tmp_path_factory.mktemp("eval") / "out"
    before = _snapshot(run_dir)
    started = time.perf_counter()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli(["evaluate", str(run_dir), "--fast", "--out", str(out)]) == 0
    return {
        "out": out,
        "metrics": _no_nan((out / "metrics.json").read_text()),
        "stdout": buffer.getvalue(),
        "seconds": time.perf_counter() - started,
        "run_before": before,
        "run_after": _snapshot(run_dir),
    }


def _unit(value, low: float = 0.0, high: float = 1.0) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high


def _check_sections(metrics: dict, pairs: int, action_names: list[str]) -> None:
    """Every section present, every number finite and in its range."""
    assert set(metrics) >= SECTIONS and metrics["pairs"] == pairs
    for method in ("synthesis", "classifier"):
        report = metrics["retrieval"][method]
        for key in ("accuracy", "balanced_accuracy", "worst_action_accuracy"):
            assert _unit(report[key]), (method, key, report[key])
        assert (
            _unit(report["undirected_accuracy"])
            and report["undirected_accuracy"] >= (report["accuracy"])
        )
        assert report["top_k"]["1"] == pytest.approx(report["accuracy"])
        assert _unit(report["top_k"]["3"]) and report["top_k"]["3"] >= report["top_k"]["1"]
        assert list(report["per_action"]) == action_names
        assert all(v is None or _unit(v) for v in report["per_action"].values())
        confusion = np.array(report["confusion"])
        assert confusion.shape == (len(action_names),) * 2 and confusion.sum() == pairs
    recon = metrics["reconstruction"]
    assert _unit(recon["mse"]) and _unit(recon["psnr"], 0, 100) and _unit(recon["ssim"], -1, 1)
    cf = metrics["counterfactual"]
    assert _unit(cf["psnr"], 0, 100) and _unit(cf["ssim"], -1, 1)
    for key in ("atomicity", "intended_moved", "others_kept", "oracle_accuracy"):
        assert _unit(cf[key]), (key, cf[key])
    assert cf["atomicity"] <= min(cf["intended_moved"], cf["others_kept"])
    # the diagnosis: the autoencoder's ceiling, per action, per factor, chained steps
    assert _unit(cf["autoencoder_ceiling"]) and cf["atomicity_chained_1"] == cf["atomicity"]
    assert list(cf["per_action"]) == action_names
    assert sum(row["pairs"] for row in cf["per_action"].values()) == pairs
    assert [cf["chained"][k]["pairs"] for k in ("1", "2", "3")] == sorted(
        (cf["chained"][k]["pairs"] for k in ("1", "2", "3")), reverse=True
    )
    assert all(_unit(v) for row in cf["per_factor"].values() for v in row.values())
    assert isinstance(cf["atomicity_reliable"], bool) and _unit(cf["oracle_exact_on_targets"])
    assert list(cf["oracle"]["per_factor"]) == [name[:-1] for name in action_names[::2]]
    scores = metrics["disentanglement"]
    assert set(scores) >= {"beta_vae", "factor_vae", "mig", "sap", "dci_disentanglement"}
    assert all(_unit(v) for v in scores.values()), scores
    mic = metrics["structure"]["mic"]
    assert len(mic["mic"]) == len(mic["tic"]) == len(mic["names"]) > 0
    assert all(_unit(v) for v in [*mic["mic"], *mic["tic"], mic["mic_mean"], mic["tic_mean"]])


def test_metrics_json_has_every_section_in_range(run_dir, evaluated):
    metrics = evaluated["metrics"]
    config = config_from_meta(latest_checkpoint(run_dir).meta)
    names = load_source(config.data).space.action_names
    assert metrics["latent"] == "vq" and metrics["split"] == "test" and metrics["step"] == 100
    assert metrics["run"] == run_dir.name and metrics["settings"]["fast"] is True
    _check_sections(metrics, 128, names)
    assert _unit(metrics["counterfactual"]["code_accuracy"])
    codes = metrics["counterfactual"]["codes"]
    assert all(v is None or _unit(v) for v in codes.values()) and 0 < codes["changed_fraction"] < 1
    # the same figures on the run's cached training pairs (the fit of the transition)
    fit = metrics["counterfactual"]["codes_training"]
    assert set(fit) == set(codes) and all(v is None or _unit(v) for v in fit.values())
    assert "codes_training.accuracy_changed" in evaluated["stdout"]
    assert "counterfactuals per action" in evaluated["stdout"]  # the per-action table
    # printed to a log (not a terminal), every cell is whole: no number cut to "0.…"
    first_action = next(iter(metrics["counterfactual"]["per_action"].values()))
    assert "…" not in evaluated["stdout"]
    assert f"{first_action['atomicity']:.3f}" in evaluated["stdout"]
    # the pairs are the held-out ones EvalSet draws: each confusion row holds that action's pairs
    sampler = TransitionSampler(load_source(config.data), config.transitions)
    actions = EvalSet.draw(sampler, 128, config.seed).transitions.actions
    counts = torch.bincount(actions, minlength=len(names)).tolist()
    for method in ("synthesis", "classifier"):
        rows = np.array(metrics["retrieval"][method]["confusion"]).sum(1).tolist()
        assert rows == counts


def test_same_numbers_as_the_training_evaluation_of_the_same_pairs(run_dir, evaluated):
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = evaluated["metrics"]
    for method in ("synthesis", "classifier"):
        report = metrics["retrieval"][method]
        assert report["accuracy"] == pytest.approx(summary[f"retrieval_{method}_accuracy"])
        assert report["balanced_accuracy"] == pytest.approx(
            summary[f"retrieval_{method}_balanced_accuracy"]
        )
    assert metrics["reconstruction"]["psnr"] == pytest.approx(summary["recon_psnr"], abs=1e-3)
    cf = metrics["counterfactual"]
    assert cf["psnr"] == pytest.approx(summary["counterfactual_psnr"], abs=1e-3)
    assert cf["code_accuracy"] == pytest.approx(summary["counterfactual_code_accuracy"])


def test_figures_are_valid_pngs_and_the_run_folder_is_untouched(evaluated):
    out = evaluated["out"]
    assert FIGURES | {"adjacency.png"} <= {p.name for p in out.glob("*.png")}  # vq has a graph
    for name in FIGURES | {"adjacency.png"}:
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"
    with Image.open(out / "interventions.png") as grid:
        assert grid.height > 4 * 32  # one row per action (4 toy actions, 16 px at scale 2)
    assert evaluated["run_before"] == evaluated["run_after"]
    assert "retrieval (synthesis)" in evaluated["stdout"] and "metrics.json" in evaluated["stdout"]


def test_fast_evaluation_is_quick(evaluated):
    assert evaluated["seconds"] < 45  # smoke run, --fast; typically ~10 s


def test_oracle_is_accurate_and_its_cache_is_reused(run_dir, evaluated, tmp_path):
    first = evaluated["metrics"]
    oracle = first["counterfactual"]["oracle"]
    assert oracle["cached"] is False and oracle["train_images"] > 50
    assert oracle["accuracy"] >= 0.9 and oracle["exact"] >= 0.9  # on held-out toy images
    assert first["counterfactual"]["oracle_exact_on_targets"] >= 0.9
    assert first["counterfactual"]["atomicity_reliable"] is True
    weights = evaluated["out"] / "oracle-toy.safetensors"
    description = json.loads((evaluated["out"] / "oracle-toy.json").read_text())
    assert description["report"]["accuracy"] == oracle["accuracy"]

    # a second evaluation into the default folder RUN_DIR/eval, with the cache copied there
    default = run_dir / "eval"
    default.mkdir()
    for path in (weights, evaluated["out"] / "oracle-toy.json"):
        shutil.copy2(path, default / path.name)
    stamp = (default / weights.name).stat().st_mtime_ns
    try:
        assert cli(["evaluate", str(run_dir), "--fast"]) == 0
        second = _no_nan((default / "metrics.json").read_text())
        assert second["counterfactual"]["oracle"]["cached"] is True
        assert (default / weights.name).stat().st_mtime_ns == stamp  # not retrained
        assert second["seconds"]["oracle"] < first["seconds"]["oracle"]
        assert second["counterfactual"]["atomicity"] == first["counterfactual"]["atomicity"]
        assert second["retrieval"] == first["retrieval"]
        assert {p.name for p in default.glob("*.png")} >= FIGURES
    finally:
        shutil.rmtree(default)


def test_oracle_cache_is_retrained_when_its_description_differs(tmp_path):
    source = load_source(DataConfig(dataset="toy"))
    sampler = TransitionSampler(source, TransitionConfig(test_fraction=0.2))
    settings = dataclasses.replace(OracleSettings.fast(), steps=20)
    data = {"dataset": "toy"}
    args = (tmp_path, "toy", source, sampler, settings, data)
    oracle, info = load_or_train_oracle(*args)
    assert info["cached"] is False and (tmp_path / "oracle-toy.safetensors").is_file()
    again, info_again = load_or_train_oracle(*args)
    assert info_again["cached"] is True and info_again["accuracy"] == info["accuracy"]
    x = torch.rand(5, 3, 16, 16)
    assert torch.equal(oracle.predict(x), again.predict(x))
    _, other = load_or_train_oracle(tmp_path, "toy", source, sampler, settings, {"x": 1})
    assert other["cached"] is False  # a different data description never reuses weights


def test_report_reads_the_evaluation(run_dir, evaluated, tmp_path):
    page = tmp_path / "report.html"
    args = ["report", str(run_dir), "--eval-dir", str(evaluated["out"]), "--out", str(page)]
    assert cli(args) == 0
    text = page.read_text()
    assert "counterfactual.atomicity" in text and "retrieval.synthesis.accuracy" in text
    assert (run_dir / "eval").exists() is False


def _unfinished(run_dir: Path, tmp_path: Path) -> str:
    copy = tmp_path / "unfinished"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    meta_path = latest_checkpoint(copy).path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["finished"] = False
    meta_path.write_text(json.dumps(meta))
    return str(copy)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda run, tmp: ["evaluate", str(tmp / "nope")], "run folder not found"),
        (lambda run, tmp: ["evaluate", str(tmp)], "no checkpoint yet"),
        (lambda run, tmp: ["evaluate", _unfinished(run, tmp)], "has not finished"),
        (lambda run, tmp: ["evaluate", str(run), "--split", "valid"], "unknown split 'valid'"),
        (lambda run, tmp: ["evaluate", str(run), "--out", str(tmp / "file")], "is a file"),
        (
            lambda run, tmp: ["evaluate", str(run), "--out", str(tmp / "file" / "eval")],
            "is a file",
        ),
        (lambda run, tmp: ["evaluate", str(run), "--pairs", "0"], "--pairs: must be from 1 to"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    run_dir, tmp_path, capsys, make_args, message
):
    (tmp_path / "file").write_text("not a folder")
    args = make_args(run_dir, tmp_path)
    run_before, tmp_before = _snapshot(run_dir), _snapshot(tmp_path)
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and len(err.splitlines()) == 1
    assert _snapshot(run_dir) == run_before and _snapshot(tmp_path) == tmp_before


@pytest.mark.parametrize(
    "latent, overrides",
    [
        ("gaussian", []),
        ("ladder", []),
        ("scm", ["model.scm.concepts=2"]),
    ],
)
def test_every_latent_gets_every_section(latent, overrides, evaluated, tmp_path):
    run = _train(tmp_path / "runs", TINY, [f'model.latent="{latent}"', *overrides])
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("oracle-toy.safetensors", "oracle-toy.json"):  # same data: reuse the oracle
        shutil.copy2(evaluated["out"] / name, out / name)
    assert cli(["evaluate", str(run), "--fast", "--pairs", "64", "--out", str(out)]) == 0
    metrics = _no_nan((out / "metrics.json").read_text())
    assert metrics["latent"] == latent and metrics["counterfactual"]["oracle"]["cached"]
    _check_sections(metrics, 64, ["position+", "position-", "hue+", "hue-"])
    assert "code_accuracy" not in metrics["counterfactual"]  # codes are vq only
    assert "shd" not in metrics["structure"]  # the toy scene has no true graph
    mic = metrics["structure"]["mic"]
    if latent == "scm":  # one block per concept
        assert "block" in mic["alignment"] and (out / "adjacency.png").is_file()
    else:
        assert "post hoc" in mic["alignment"] and len(mic["latent_dims"]) == 2
    assert {p.name for p in out.glob("*.png")} >= FIGURES


@pytest.mark.slow
def test_scm_on_the_pendulum_gets_a_structural_hamming_distance(tmp_path):
    pendulum = [
        'data.dataset="pendulum"',
        "data.image_size=16",
        "data.stride=6",
        'model.latent="scm"',
    ]
    run = _train(tmp_path / "runs", TINY, pendulum)
    out = tmp_path / "eval"
    assert cli(["evaluate", str(run), "--fast", "--pairs", "32", "--out", str(out)]) == 0
    metrics = _no_nan((out / "metrics.json").read_text())
    structure = metrics["structure"]
    true_edges = 4  # pendulum and light angle -> shadow length and position
    edges = structure["edges"]
    assert edges["true_positive"] + edges["reversed"] + edges["missing"] == true_edges
    assert 0 <= structure["shd"] <= 6 and structure["graph_from"] == "latent.learned_graph()"
    assert np.array(structure["true_graph"]).sum() == true_edges
    assert len(structure["mic"]["names"]) == 4 and "block" in structure["mic"]["alignment"]
    _check_sections(
        metrics,
        32,
        ["pendulum_angle+", "pendulum_angle-", "light_angle+", "light_angle-"],
    )
    with Image.open(out / "adjacency.png") as image:
        image.verify()


# ---- units -------------------------------------------------------------------------------------
def test_atomicity_on_hand_made_predictions():
    # two factors; actions 0/1 move factor 0 up/down, 2/3 move factor 1
    values_next = torch.tensor([[1, 5], [2, 5], [0, 3], [4, 4], [7, 7]])
    actions = torch.tensor([0, 1, 2, 3, 0])
    predicted = torch.tensor(
        [
            [1, 5],  # exact
            [2, 6],  # intended factor right, another one moved too
            [1, 3],  # intended right (factor 1), factor 0 wrong
            [4, 5],  # intended wrong, the other kept
            [7, 7],  # exact
        ]
    )
    report = atomicity_report(predicted, values_next, actions, ["a+", "a-", "b+", "b-"])
    assert report["atomicity"] == pytest.approx(2 / 5)
    assert report["intended_moved"] == pytest.approx(4 / 5)
    assert report["others_kept"] == pytest.approx(3 / 5)
    assert report["per_action"] == {"a+": 1.0, "a-": 0.0, "b+": 0.0, "b-": 0.0}
    absent = atomicity_report(predicted[:1], values_next[:1], actions[:1], ["a+", "a-", "b+", "b-"])
    assert absent["per_action"]["b-"] is None and absent["atomicity"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        atomicity_report(predicted[:2], values_next, actions)


def test_alignment_finds_the_matching_dim_and_relabels_codes():
    rng = np.random.default_rng(0)
    concept = rng.integers(0, 6, size=(400, 1)).astype(float)
    noise = rng.normal(size=(400, 3))
    continuous = np.concatenate([noise[:, :2], concept + 0.01 * noise[:, 2:]], axis=1)
    aligned, dims = align_latents(continuous[:200], concept[:200], continuous[200:], False)
    assert dims == [2] and np.corrcoef(aligned[:, 0], concept[200:, 0])[0, 1] > 0.99
    # code indices in an arbitrary order: relabelled by their mean concept value
    permutation = np.array([3, 0, 5, 1, 4, 2])
    codes = np.stack([rng.integers(0, 6, 400), permutation[concept[:, 0].astype(int)]], axis=1)
    aligned, dims = align_latents(codes[:200], concept[:200], codes[200:], True)
    assert dims == [1] and np.array_equal(aligned[:, 0], concept[200:, 0])


def test_json_safe_turns_non_finite_numbers_into_null():
    data = {"a": float("nan"), "b": [np.float32(1.5), np.int64(2), torch.tensor(3.0)], "c": True}
    assert json_safe(data) == {"a": None, "b": [1.5, 2, 3.0], "c": True}

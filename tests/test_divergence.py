"""A stage 1 that diverges says so: known thresholds, the best read back on a resume, and the
warning line of a run whose evaluations fall."""

from __future__ import annotations

import json

import pytest
from conftest import run_folder

from vqcausal.train import loop
from vqcausal.train.divergence import DIVERGED_DB, best_recon, divergence
from vqcausal.train.run import main as train


def test_a_fall_of_more_than_the_threshold_is_a_divergence():
    assert divergence(None, 20.0, 10) is None  # the first evaluation has nothing to fall from
    assert divergence(34.8, 34.8 - DIVERGED_DB + 0.1, 10) is None
    warning = divergence(34.8, 27.8, 10000)
    assert warning is not None and warning.startswith("step 10000: reconstruction PSNR fell to")
    assert "27.8 dB from the run's best 34.8 dB" in warning


def test_the_best_stage1_evaluation_is_read_back_from_the_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert best_recon(path) is None
    records = [
        {"stage": 1, "step": 5, "eval": {"recon_psnr": 30.0}},
        {"stage": 1, "step": 6, "loss": 1.0},
        {"stage": 1, "step": 10, "eval": {"recon_psnr": 33.5}},
        {"stage": 2, "step": 15, "eval": {"recon_psnr": 40.0}},  # stage 2: frozen, not counted
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    assert best_recon(path) == 33.5


def scripted_run(tmp_path, monkeypatch, psnrs: list[float], stage1_steps: int) -> None:
    """A smoke-config stage 1 evaluated every 5 steps, its evaluations reading ``psnrs``."""
    scripted = iter(psnrs)
    monkeypatch.setattr(loop, "held_out_metrics", lambda *_, **__: {"recon_psnr": next(scripted)})
    sets = [f"train.stage1_steps={stage1_steps}", "train.stage2_steps=0", "train.eval_every=5"]
    sets += ["train.eval_pairs=8", "train.checkpoint_every=5", f'runs="{tmp_path}"']
    assert train(["--config", "configs/smoke.toml", *(a for s in sets for a in ("--set", s))]) == 0


def warnings(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: step")]


@pytest.mark.slow  # trains smoke runs
def test_training_warns_at_each_evaluation_that_falls_below_its_best(tmp_path, monkeypatch, capsys):
    scripted_run(tmp_path, monkeypatch, [30.0, 31.0, 27.5, 28.0], stage1_steps=20)
    assert warnings(capsys) == [
        "warning: step 15: reconstruction PSNR fell to 27.5 dB from the run's best 31.0 dB; "
        "stage 1 diverged (a lower train.lr or a longer train.lr_decay_fraction lowers the "
        "full rate's time)",
        "warning: step 20: reconstruction PSNR fell to 28.0 dB from the run's best 31.0 dB; "
        "stage 1 diverged (a lower train.lr or a longer train.lr_decay_fraction lowers the "
        "full rate's time)",
    ]


@pytest.mark.slow  # trains smoke runs
def test_a_resumed_run_remembers_its_best(tmp_path, monkeypatch, capsys):
    scripted_run(tmp_path, monkeypatch, [31.0, 31.5, 27.0, 27.2], stage1_steps=10)
    assert warnings(capsys) == []
    assert train(["--resume", str(run_folder(tmp_path)), "--set", "train.stage1_steps=20"]) == 0
    assert [w.split(";")[0] for w in warnings(capsys)] == [
        "warning: step 15: reconstruction PSNR fell to 27.0 dB from the run's best 31.5 dB",
        "warning: step 20: reconstruction PSNR fell to 27.2 dB from the run's best 31.5 dB",
    ]

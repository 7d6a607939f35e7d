"""``train.py --stage1-from RUN``: a new run continues from another run's finished stage 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_folder
from test_training import TINY, losses

from vqcausal.config import load_config
from vqcausal.runs import latest_checkpoint
from vqcausal.train.run import main as train
from vqcausal.train.shared_stage1 import PROVENANCE

BASE = ["--config", "configs/smoke.toml", *sum((["--set", s] for s in TINY), [])]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("stage1")
    assert train([*BASE, "--set", f'runs="{runs}"', "--stage", "1"]) == 0
    return run_folder(runs)


@pytest.mark.slow
def test_the_same_config_trains_the_uninterrupted_run_bit_for_bit(stage1_run, tmp_path):
    straight, shared = tmp_path / "straight", tmp_path / "shared"
    assert train([*BASE, "--set", f'runs="{straight}"']) == 0
    before = snapshot(stage1_run)
    assert train([*BASE, "--set", f'runs="{shared}"', "--stage1-from", str(stage1_run)]) == 0
    reference, folder = losses(run_folder(straight)), run_folder(shared)
    assert sorted(reference) == list(range(1, 41))
    assert losses(folder) == reference  # stage-1 records copied, stage 2 the same to the bit
    assert latest_checkpoint(folder).finished and latest_checkpoint(folder).step == 40
    provenance = json.loads((folder / PROVENANCE).read_text())
    assert provenance["run"] == str(stage1_run.resolve()) and provenance["step"] == 20
    assert snapshot(stage1_run) == before  # the stage-1 run is only read


@pytest.mark.slow
def test_a_stage2_setting_may_differ_and_stage2_trains_on_it(stage1_run, tmp_path):
    runs = tmp_path / "rho4"
    rho = ["--set", "transitions.imbalance=4.0", "--set", "train.stage2_steps=10"]
    assert train([*BASE, *rho, "--set", f'runs="{runs}"', "--stage1-from", str(stage1_run)]) == 0
    folder = run_folder(runs)
    assert load_config(folder / "config.toml").transitions.imbalance == 4.0
    steps = [latest_checkpoint(f).meta["model_args"]["action_steps"] for f in (stage1_run, folder)]
    assert steps[0] == steps[1]  # the stage-1 run's, not re-measured on the rho = 4 mix
    assert latest_checkpoint(folder).step == 30
    curve, stage1 = losses(folder), losses(stage1_run)
    assert {s: v for s, v in curve.items() if s <= 20} == stage1
    assert sorted(curve) == list(range(1, 31))
    assert {p.name for p in (stage1_run / "figures").iterdir()} <= {
        p.name for p in (folder / "figures").iterdir()
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.quantizer.codebook_size=16"], "model.quantizer.codebook_size"),
        (["--set", "train.stage1_steps=30"], "train.stage1_steps"),
        (["--set", "seed=3"], "seed"),
        (["--set", "transitions.value_imbalance=10.0"], "transitions.value_imbalance"),
        (["--resume", "."], "give one of them"),
    ],
)
def test_a_stage1_setting_that_differs_is_one_line_and_no_folder(
    stage1_run, tmp_path, capsys, extra, message
):
    runs = tmp_path / "refused"
    argv = [*BASE, "--set", f'runs="{runs}"', "--stage1-from", str(stage1_run), *extra]
    if extra[0] == "--resume":
        argv = ["--resume", str(stage1_run), "--stage1-from", str(stage1_run)]
    capsys.readouterr()
    assert train(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not runs.exists()


def test_a_run_past_or_short_of_its_stage1_is_refused(trained_run, tmp_path, capsys):
    """A finished run's newest checkpoint holds stage-2 weights: it cannot lend its stage 1."""
    config = load_config(trained_run / "config.toml")
    steps = [f"train.stage1_steps={config.train.stage1_steps}"]
    argv = ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path}"', "--set", steps[0]]
    capsys.readouterr()
    assert train([*argv, "--stage1-from", str(trained_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has gone past its stage 1" in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_stage2_heads_may_change_and_keep_the_stage1_weights(stage1_run, tmp_path):
    """A study of a stage-2 lever on one autoencoder: the heads are built from the new config,
    the stage-1 modules are the stage-1 run's tensors, unchanged by stage 2 (frozen)."""
    from safetensors.torch import load_file

    from vqcausal.runs import load_model_from_run

    runs = tmp_path / "heads"
    heads = ["--set", "model.classifier_hidden=32", "--set", "model.classifier_layers=1"]
    argv = [*BASE, *heads, "--set", f'runs="{runs}"', "--stage1-from", str(stage1_run)]
    assert train(argv) == 0
    folder = run_folder(runs)
    before = load_file(str(latest_checkpoint(stage1_run).path / "model.safetensors"))
    after = load_file(str(latest_checkpoint(folder).path / "model.safetensors"))
    stage1 = [k for k in before if k.startswith(("encoder.", "quantizer.", "decoder."))]
    assert stage1 and all(torch.equal(before[k], after[k]) for k in stage1)
    assert before["classifier.codebook"].abs().sum() == 0  # filled when stage 2 starts
    model, _ = load_model_from_run(folder)
    assert torch.equal(model.classifier.codebook, model.code_vectors())
    assert model.classifier.codebook.abs().sum() > 0


def test_the_new_run_takes_the_stage1_runs_measured_action_steps(stage1_run):
    """Action steps are measured on a sample of the run's own pairs: another action mix
    measures them a little differently, which must not make the model another one."""
    from dataclasses import replace

    from vqcausal.runs import model_args_from_meta
    from vqcausal.train.shared_stage1 import with_stage1_measurements

    ckpt = latest_checkpoint(stage1_run)
    stored = model_args_from_meta(ckpt.meta)
    remeasured = replace(stored, action_steps=[v + 0.01 for v in stored.action_steps])
    assert with_stage1_measurements(remeasured, ckpt).to_dict() == stored.to_dict()

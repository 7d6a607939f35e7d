"""Crash safety: kill -9 in the middle of training, then resume to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqcausal.runs import CheckpointError, latest_checkpoint, load_model_from_run
from vqcausal.train.run import main as train

pytestmark = pytest.mark.slow  # trains in a subprocess and kills it

STEPS = [
    "train.stage1_steps=120",
    "train.stage2_steps=40",
    "train.cache_pairs=128",
    "train.eval_pairs=16",
    "train.eval_every=1000",
    "train.log_every=1",
    "train.checkpoint_every=20",
]


def argv(runs: Path) -> list[str]:
    sets = [*STEPS, f'runs="{runs}"']
    return ["--config", "configs/smoke.toml"] + [a for s in sets for a in ("--set", s)]


def only_run(runs: Path) -> Path:
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    return folder


def newest_step(runs: Path) -> int:
    try:
        return latest_checkpoint(only_run(runs)).step
    except (OSError, ValueError, CheckpointError):  # no run folder or checkpoint yet
        return -1


def test_kill_9_leaves_a_loadable_checkpoint_and_resume_matches(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *argv(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while newest_step(killed) < 40 and time.monotonic() < deadline:
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.3)  # let it get between checkpoints (or into writing one)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run_dir = only_run(killed)
    ckpt = latest_checkpoint(run_dir)
    assert 40 <= ckpt.step < 160 and not ckpt.finished
    model, _ = load_model_from_run(run_dir)  # the last checkpoint loads
    assert sum(p.numel() for p in model.parameters()) > 0

    assert train(["--resume", str(run_dir)]) == 0
    assert train(argv(clean)) == 0
    resumed = load_file(latest_checkpoint(run_dir).path / "model.safetensors")
    reference = load_file(latest_checkpoint(only_run(clean)).path / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key  # bit-exact on CPU
    # the log holds every step once, as in the uninterrupted run
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "total" in json.loads(line)
    ]
    assert steps == list(range(1, 161))

"""Two CPU processes through torchrun + accelerate learn what one process learns.

Batch sizes are per process, so the two-process run halves them to keep the global batch of
the one-process run. Seed noise of the one-process smoke run: held-out synthesis retrieval
0.92 / 0.82 / 0.88 for seeds 0 / 1 / 2 (128 test pairs), so runs "agree" within 0.15.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import run_folder

from vqcausal.train.checkpoint import latest_checkpoint

TORCHRUN = shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")
def test_two_process_cpu_run_matches_one_process(trained_run, tmp_path):
    runs = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [
        TORCHRUN,
        "--standalone",  # local rendezvous on a free port: tests may run beside other jobs
        "--nproc_per_node",
        "2",
        "train.py",
        "--config",
        "configs/smoke.toml",
        "--set",
        f'runs="{runs}"',
        "--set",
        "train.batch_size=16",
        "--set",
        "train.stage2_batch_size=32",
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=900, start_new_session=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folder = run_folder(runs)
    assert latest_checkpoint(folder).finished
    assert len(list(runs.glob("*"))) == 1  # one run folder, written by rank 0 only
    two = json.loads((folder / "summary.json").read_text())
    one = json.loads((trained_run / "summary.json").read_text())
    assert two["step"] == one["step"] == 1200
    for key in ("retrieval_synthesis_accuracy", "retrieval_classifier_accuracy"):
        assert two[key] >= 0.7, key
        assert abs(two[key] - one[key]) <= 0.15, key  # same within seed noise
    assert abs(two["recon_psnr"] - one["recon_psnr"]) <= 3.0

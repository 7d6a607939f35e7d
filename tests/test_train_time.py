"""tools/bench_train_time.py: the evaluation count and the projection on known answers, and a
quick real run of the tool on the smoke config."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vqcausal.config import load_config

REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "bench_train_time", REPO / "tools" / "bench_train_time.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("stage1", "stage2", "every", "expected"),
    [
        (12000, 2500, 2000, (6, 2)),  # the default: 2k ... 12k, then 14k and the final 14.5k
        (12000, 2000, 1000, (12, 2)),  # 13k, and 14k is the last step: no final one apart
        (10, 0, 3, (4, 0)),  # 3, 6, 9, then the final one at 10, in stage 1
        (10, 0, 5, (2, 0)),
        (5, 7, 100, (0, 1)),  # only the final one
    ],
)
def test_evaluations_per_stage_follow_the_training_loop(stage1, stage2, every, expected):
    assert load_tool().evaluations_per_stage(stage1, stage2, every) == expected


def test_projection_adds_the_parts_at_the_config_sizes():
    tool = load_tool()
    config = load_config(REPO / "configs" / "shapes3d.toml", [])
    parts = {
        "setup_s": 6.0,
        "stage1_steps_per_s": 10.0,
        "encode_pairs_per_s": 1000.0,
        "stage2_steps_per_s": 2.5,
        "stage1_eval_s": 2.0,
        "stage2_eval_s": 6.0,
    }
    minutes = tool.projection(config, parts)
    train = config.train
    assert minutes["stage 1 steps"] == pytest.approx(train.stage1_steps / 10 / 60)
    assert minutes["stage 2 steps"] == pytest.approx(train.stage2_steps / 2.5 / 60)
    assert minutes["stage-2 pair encoding"] == pytest.approx(train.cache_pairs / 1000 / 60)
    evals1, evals2 = tool.evaluations_per_stage(
        train.stage1_steps, train.stage2_steps, train.eval_every
    )
    assert minutes["evaluations"] == pytest.approx((evals1 * 2.0 + evals2 * 6.0) / 60)
    assert minutes["training"] == pytest.approx(
        0.1 + minutes["stage 1 steps"] + minutes["stage-2 pair encoding"] + minutes["stage 2 steps"]
    )
    assert minutes["total"] == pytest.approx(minutes["training"] + minutes["evaluations"])


@pytest.mark.slow
def test_the_tool_times_every_part_of_a_smoke_run(tmp_path):
    out = tmp_path / "train_time.json"
    command = [
        sys.executable,
        "tools/bench_train_time.py",
        *("--config", "configs/smoke.toml", "--set", "train.eval_pairs=8"),
        *("--steps1", "3", "--steps2", "2", "--warmup", "1", "--pairs", "32", "--threads", "1"),
        *("--out", str(out)),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    (parts,) = report["results"]
    assert all(value > 0 for value in parts.values()), parts
    (minutes,) = report["minutes"]
    assert minutes["total"] == pytest.approx(minutes["training"] + minutes["evaluations"])
    assert report["cpu_capability"] and "projected minutes" in result.stdout


def test_a_bad_override_is_one_line_and_exit_2(tmp_path):
    command = [sys.executable, "tools/bench_train_time.py", "--set", "train.nope=1"]
    command += ["--out", str(tmp_path / "x.json")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error:") and not (tmp_path / "x.json").exists()

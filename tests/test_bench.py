"""tools/bench.py end to end: the quick run writes one JSON row per benchmark and setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benchmarks in a subprocess

REPO = Path(__file__).resolve().parents[1]
BENCHES = {
    "data_images",
    "data_pairs",
    "stage1_train",
    "stage2_train",
    "stage2_train_e2e",
    "retrieve_codes",
    "retrieve_codes_compiled",
    "retrieve_images",
    "intervene",
}


def test_bench_quick_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "tools/bench.py", "--quick", "--no-scaling", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = {(r["bench"], r["setting"]): r for r in report["results"]}
    assert set(rows) == {(b, s) for b in BENCHES for s in ("official", "default")}
    for key, row in rows.items():
        assert row["rate"] > 0 and row["min"] > 0 and row["peak_mb"] > 0, key
        assert len(row["runs"]) == report["repeats"] == 2, key
    # the README's CPU targets are checked at the official setting only
    assert rows["stage2_train", "official"]["target"] == 15
    assert rows["retrieve_images", "official"]["status"].startswith(("ok", "MISSED"))
    assert rows["retrieve_images", "default"]["status"] == ""
    # the official setting is the official model's autoencoder, parameter for parameter
    assert rows["stage1_train", "official"]["parameters"].startswith("enc 5.22M dec 4.89M")
    assert "retrieve_codes_compiled" in result.stdout  # the table was printed


def test_bench_cli_quick_times_every_command(tmp_path):
    out = tmp_path / "cli.json"
    command = [sys.executable, "tools/bench_cli.py", "--quick", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {r["command"]: r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == [
        "import torch",
        "retrieve (one pair)",
        "intervene (one image)",
        "retrieve (8 pairs)",
    ]
    assert all(len(r["runs"]) == 2 and r["median_s"] > 0 for r in rows.values())
    assert rows["retrieve (one pair)"]["status"] in ("ok", "MISSED")
    assert "per_pair_ms" in rows["retrieve (8 pairs)"]


def test_the_official_setting_keeps_the_transition_its_figures_were_measured_with():
    from vqcausal.benchmarking import setting_config

    official, default = setting_config("official"), setting_config("default")
    assert (official.model.transition.hidden, official.model.transition.update_film) == (64, False)
    assert (default.model.transition.hidden, default.model.transition.update_film) == (128, True)

import json
import subprocess
import sys

import pytest
from PIL import Image

from vqcausal.cli import main


def test_info_json_lists_factors_and_actions(capsys):
    assert main(["data", "info", "--dataset", "toy", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in info["factors"]] == ["position", "hue"]
    assert [a["name"] for a in info["actions"]] == ["position+", "position-", "hue+", "hue-"]
    assert info["grid_points"] == 96


def test_info_table_shows_imbalanced_frequencies(capsys):
    assert main(["data", "info", "--dataset", "toy", "--set", "transitions.imbalance=100"]) == 0
    out = capsys.readouterr().out
    assert "position+" in out and "0.7863" in out and "0.0079" in out  # 1 : 1/100


def test_preview_writes_a_labelled_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--dataset", "toy", "--out", str(out), "--pairs", "3"]) == 0
    image = Image.open(out)
    assert image.mode == "RGB"
    assert image.height > 4 * 32 and image.width > 6 * 32  # 4 action rows, 3 pairs of 2
    assert "4 actions x 3 pairs" in capsys.readouterr().out


def test_export_then_refuse_second_export(tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["data", "export", "--dataset", "toy", "--out", str(out), "--train", "10", "--test", "5"]
    assert main(args) == 0
    assert (out / "meta.json").exists()
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "info", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["data", "info", "--set", "data.foo=1"], "unknown config key 'data.foo'"),
        (["data", "info", "--dataset", "folder"], "needs data.path"),
        (["data", "info", "--dataset", "sprites", "--path", "/no/such.npz"], "not found"),
        (["data", "info", "--config", "/no/such.toml"], "config file not found"),
        (["data", "preview", "--dataset", "toy", "--pairs", "0"], "--pairs: must be from 1 to 256"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vqcausal.cli", "data", "info", "--dataset", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: config section 'data': unknown dataset")

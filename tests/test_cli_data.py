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
    assert info["splits"] == {"train": 89, "test": 7}  # the seeded hash, test_fraction 0.1


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


def test_pendulum_exported_as_causalvae_folder_reads_back_the_same(tmp_path, capsys):
    """The renderer's grid written in CausalVAE's layout and read back: the same factors,
    split, labels and pixels, so training on either sees the same data."""
    import torch

    from vqcausal.config import DataConfig
    from vqcausal.data.registry import load_source
    from vqcausal.data.transitions import TransitionSampler

    out = tmp_path / "pendulum"
    grid = ["--dataset", "pendulum", "--set", "data.image_size=32", "--set", "data.stride=12"]
    assert main(["data", "export", *grid, "--layout", "causalvae", "--out", str(out)]) == 0
    assert "wrote 52 train + 4 test images of pendulum" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"train", "test"}
    assert main(["data", "info", *grid, "--json"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert main(["data", "info", "--dataset", "pendulum", "--path", str(out), "--json"]) == 0
    read = json.loads(capsys.readouterr().out)
    assert read["splits"] == rendered["splits"] == {"train": 52, "test": 4}
    assert read["factors"] == rendered["factors"]
    rendered_sampler, folder_sampler = (
        TransitionSampler(load_source(DataConfig(dataset="pendulum", **kw)))
        for kw in ({"image_size": 32, "stride": 12}, {"path": str(out)})
    )
    folder = folder_sampler.source
    values = folder.space.unravel(torch.arange(folder.space.num_values))
    assert torch.equal(folder_sampler.split_of(values), rendered_sampler.split_of(values))
    assert torch.equal(folder.concepts(values), rendered_sampler.source.concepts(values))
    pairs = rendered_sampler.batch(16, "train", torch.Generator().manual_seed(1))
    assert torch.equal(folder.render(pairs["values"]), pairs["x"])
    assert torch.equal(folder.render(pairs["values_next"]), pairs["x_next"])
    assert main(["data", "export", "--dataset", "toy", "--layout", "causalvae", "--out", "x"]) == 2
    assert "procedural pendulum" in capsys.readouterr().err


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


@pytest.mark.slow
def test_console_script_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vqcausal.cli", "data", "info", "--dataset", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: config section 'data': unknown dataset")

"""Hostile run folders: tampered weights, a checkpoint of another config, a broken pointer.

Every command that reads a run answers with one ``error:`` line and exit status 2, and writes
nothing into the run folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqcausal.cli import main as cli
from vqcausal.data.toy import ToyRenderer
from vqcausal.runs import latest_checkpoint


def toy_pngs(folder: Path) -> tuple[Path, Path]:
    """Two toy scenes one position step apart, as PNG files."""
    images = ToyRenderer().render(torch.tensor([[2, 3], [3, 3]]))
    paths = (folder / "a.png", folder / "b.png")
    for image, path in zip(images, paths, strict=True):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return paths


def tamper_truncate(run: Path) -> None:
    weights = latest_checkpoint(run).path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def tamper_header(run: Path) -> None:
    weights = latest_checkpoint(run).path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"{garbage"  # the JSON header right after its 8-byte length
    weights.write_bytes(bytes(data))


def other_config(run: Path) -> None:
    meta_path = latest_checkpoint(run).path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_args"]["model"]["autoencoder"]["widths"] = [8, 16]  # weights no longer fit
    meta_path.write_text(json.dumps(meta))


def broken_meta(run: Path) -> None:
    (latest_checkpoint(run).path / "meta.json").write_text("{not json")


def dangling_pointer(run: Path) -> None:
    (run / "checkpoints" / "latest").write_text("step-9999999")


@pytest.mark.parametrize(
    "tamper", [tamper_truncate, tamper_header, other_config, broken_meta, dangling_pointer]
)
def test_tampered_run_is_one_line_and_exit_2(tamper, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    tamper(run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    a, b = toy_pngs(tmp_path)
    out_png = str(tmp_path / "o.png")
    commands = [
        ["retrieve", str(a), str(b), "--run", str(run)],
        ["intervene", str(a), "--action", "position+", "--run", str(run), "--out", out_png],
        ["evaluate", str(run), "--fast", "--out", str(tmp_path / "eval")],
    ]
    for argv in commands:
        capsys.readouterr()
        assert cli(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), (argv[0], err)
        assert "Traceback" not in err[0]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert not (tmp_path / "o.png").exists()

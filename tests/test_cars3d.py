"""Cars3D's per-car MATLAB files, written here as distributed (``im``: 128 x 128 x 3 x 24 x 4
uint8): the factor grid, a folder with some cars, and one line for every damaged file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_retrieve_evaluate
from scipy.io import savemat

from vqcausal.data.cars3d import Cars3DFolder
from vqcausal.errors import DataError


def write_car(folder: Path, number: int, shade: int) -> None:
    """Car ``number``: pixel (0, 0) holds (elevation, azimuth, shade), the rest is its shade."""
    im = np.full((128, 128, 3, 24, 4), shade, np.uint8)
    for e in range(4):
        for a in range(24):
            im[0, 0, :, a, e] = (e, a, shade)
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / f"car_{number:03d}_mesh.mat", {"im": im})


def test_the_grid_of_the_cars_present(tmp_path):
    for number, shade in ((1, 40), (7, 90), (12, 200)):  # three cars of 183, as a subset
        write_car(tmp_path / "cars", number, shade)
    source = Cars3DFolder(tmp_path)  # the folder holding cars/ or cars/ itself
    assert source.image_shape == (3, 128, 128) and source.space.sizes == [4, 24, 183]
    assert len(source.stored_values()) == 3 * 4 * 24
    values = torch.tensor([[3, 23, 2], [0, 5, 0], [2, 11, 1]])
    images = source.render(values)
    assert images.shape == (3, 3, 128, 128)
    assert images[:, :, 0, 0].tolist() == [[3, 23, 200], [0, 5, 40], [2, 11, 90]]
    assert images[:, 0, 5, 5].tolist() == [200, 40, 90]  # car = rank of the file in name order
    assert source.space.factors[1].cyclic and len(Cars3DFolder(tmp_path / "cars").files) == 3


@pytest.mark.parametrize(
    "content, message",
    [
        ({"im": np.zeros((64, 64, 3, 24, 4), np.uint8)}, "'im' must be uint8"),
        ({"im": np.zeros((128, 128, 3, 24, 4), np.float32)}, "'im' must be uint8"),
        ({"images": np.zeros((2, 2), np.uint8)}, "no variable 'im'"),
        (b"not a mat file", "not a readable MATLAB file"),
    ],
)
def test_damaged_cars_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "car_001_mesh.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        savemat(path, content)
    with pytest.raises(DataError, match=message) as err:
        Cars3DFolder(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_folder_without_cars_is_one_line(tmp_path):
    with pytest.raises(DataError, match="no car_XXX_mesh.mat files"):
        Cars3DFolder(tmp_path)


@pytest.mark.slow
def test_a_tiny_model_trains_retrieves_and_evaluates_on_cars3d(tmp_path):
    for number, shade in ((1, 40), (2, 90), (3, 200)):
        write_car(tmp_path / "cars", number, shade)
    source = Cars3DFolder(tmp_path)
    a, b = source.render(torch.tensor([[0, 0, 0], [0, 1, 0]])).permute(0, 2, 3, 1).numpy()
    sets = [f'data.path="{tmp_path}"', 'data.dataset="cars3d"']
    sets += ["data.image_size=32"]  # resized on read, as most papers use 64
    actions = train_retrieve_evaluate(tmp_path, sets, a, b)
    assert actions[:2] == ["elevation+", "elevation-"]
    small = Cars3DFolder(tmp_path, image_size=32)
    images = small.render(torch.tensor([[0, 0, 1], [3, 5, 2]]))
    assert images.shape == (2, 3, 32, 32) and images[:, 0, 16, 16].tolist() == [90, 200]


def test_data_info_and_preview(tmp_path, capsys):
    from vqcausal.cli import main as cli

    for number, shade in ((1, 40), (2, 90)):
        write_car(tmp_path / "cars", number, shade)
    assert cli(["data", "info", "--dataset", "cars3d", "--path", str(tmp_path)]) == 0
    assert "elevation" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    args = ["--path", str(tmp_path), "--out", str(png), "--pairs", "1"]
    assert cli(["data", "preview", "--dataset", "cars3d", *args]) == 0 and png.is_file()

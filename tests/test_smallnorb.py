"""SmallNORB's six binary-matrix files, written here in their exact layout (magic, ndim, at
least three int32 sizes, little-endian data): labels, the left stereo image, subsets, the
official split, and one line for every damaged file."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_retrieve_evaluate

from vqcausal.data.smallnorb import SPLITS, SmallNORBFolder
from vqcausal.errors import DataError

MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}
INSTANCES = {"training": (6, 7), "testing": (0, 1)}


def write_matrix(path: Path, array: np.ndarray) -> None:
    """A SmallNORB binary matrix: magic, ndim, max(3, ndim) sizes, then the data."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = np.array([MAGIC[array.dtype], array.ndim, *dims], "<i4")
    path.write_bytes(header.tobytes() + array.astype(array.dtype.newbyteorder("<")).tobytes())


def write_split(root: Path, split: str, skip: int = 0) -> np.ndarray:
    """A few toys of one split (the last ``skip`` rows left out: a filtered copy); returns
    the (category, instance, elevation, azimuth index, lighting) of each image."""
    grid = list(itertools.product((0, 1), INSTANCES[split], (0, 1), (0, 1, 17), (2, 3)))
    grid = grid[: len(grid) - skip]
    values = np.array(grid, np.int32)
    count = len(values)
    dat = np.zeros((count, 2, 96, 96), np.uint8)
    dat[:, 0, 0, :5] = values  # the left image says which toy and view it is
    dat[:, 1] = 255  # the right image is never read
    stem = SPLITS[split][0]
    info = np.column_stack([values[:, 1], values[:, 2], 2 * values[:, 3], values[:, 4]])
    write_matrix(root / f"{stem}-dat.mat", dat)
    write_matrix(root / f"{stem}-cat.mat", values[:, 0].astype(np.int32))
    write_matrix(root / f"{stem}-info.mat", info.astype(np.int32))
    return values


def test_both_splits_labels_and_the_left_image(tmp_path):
    train = write_split(tmp_path, "training")
    test = write_split(tmp_path, "testing")
    source = SmallNORBFolder(tmp_path)
    assert source.image_shape == (1, 96, 96) and source.space.sizes == [5, 10, 9, 18, 6]
    stored = source.stored_values()
    assert torch.equal(stored, torch.from_numpy(np.concatenate([train, test])).long())
    assert source.stored_split().tolist() == [0] * len(train) + [1] * len(test)
    picked = stored[[0, len(train) + 5, 3]]
    images = source.render(picked)
    assert images.shape == (3, 1, 96, 96)
    assert torch.equal(images[:, 0, 0, :5], picked.to(torch.uint8))  # the left image, its row
    assert (images[:, 0, 1:] == 0).all()  # not the right one (all 255)
    assert source.describe()["stored_images"] == len(train) + len(test)


def test_one_split_or_a_filtered_copy_loads(tmp_path):
    values = write_split(tmp_path, "testing", skip=5)
    source = SmallNORBFolder(tmp_path)
    assert len(source.stored_values()) == len(values) and set(source.stored_split().tolist()) == {1}
    with pytest.raises(DataError, match="no stored image has factor values"):
        source.render(torch.tensor([[0, 0, 0, 0, 0]]))  # a view that is not in the copy


def damage(root: Path, how: str) -> None:
    stem = SPLITS["training"][0]
    dat, cat, info = (root / f"{stem}-{k}.mat" for k in ("dat", "cat", "info"))
    if how == "truncated":
        dat.write_bytes(dat.read_bytes()[:-100])
    elif how == "missing":
        cat.unlink()
    elif how == "magic":
        cat.write_bytes(b"\0\0\0\0" + cat.read_bytes()[4:])
    elif how == "odd azimuth":
        data = np.frombuffer(info.read_bytes()[20:], "<i4").reshape(-1, 4).copy()
        data[0, 2] = 3
        write_matrix(info, data)
    elif how == "instance":
        data = np.frombuffer(info.read_bytes()[20:], "<i4").reshape(-1, 4).copy()
        data[0, 0] = 12
        write_matrix(info, data)
    elif how == "count":
        write_matrix(cat, np.zeros(3, np.int32))


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "training-dat.mat: truncated: its header says"),
        ("missing", "missing smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat"),
        ("magic", "training-cat.mat: not a SmallNORB matrix"),
        ("odd azimuth", "azimuth must be stored as 0, 2, ..., 34"),
        ("instance", "instance must lie in 0..9, found 6..12"),
        ("count", "training-cat.mat: must be an int32 matrix of 48"),
    ],
)
def test_damaged_files_are_one_line_naming_the_file(tmp_path, how, message):
    write_split(tmp_path, "training")
    damage(tmp_path, how)
    with pytest.raises(DataError, match=message) as err:
        SmallNORBFolder(tmp_path)
    assert "\n" not in str(err.value)


def test_an_empty_or_missing_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match="no SmallNORB files"):
        SmallNORBFolder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        SmallNORBFolder(tmp_path / "nope")


@pytest.mark.slow
def test_a_tiny_model_trains_retrieves_and_evaluates_on_smallnorb(tmp_path):
    data = tmp_path / "norb"
    data.mkdir()
    write_split(data, "training")
    write_split(data, "testing")
    source = SmallNORBFolder(data)
    a, b = source.render(source.stored_values()[:2])[:, 0].numpy()
    sets = [f'data.path="{data}"', 'data.dataset="smallnorb"', "transitions.test_fraction=0.3"]
    sets += ["data.image_size=32"]  # resized on read, as most papers use 64
    actions = train_retrieve_evaluate(tmp_path, sets, a, b)
    assert actions[:2] == ["category+", "category-"]
    small = SmallNORBFolder(data, image_size=32)
    assert small.image_shape == (1, 32, 32)
    assert small.render(small.stored_values()[:2]).shape == (2, 1, 32, 32)


def test_data_info_and_preview(tmp_path, capsys):
    from vqcausal.cli import main as cli

    write_split(tmp_path, "training")
    write_split(tmp_path, "testing")
    assert cli(["data", "info", "--dataset", "smallnorb", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smallnorb" in out and "azimuth" in out and "96" in out
    png = tmp_path / "grid.png"
    args = ["--path", str(tmp_path), "--out", str(png), "--pairs", "1"]
    assert cli(["data", "preview", "--dataset", "smallnorb", *args]) == 0 and png.is_file()

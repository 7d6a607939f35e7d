"""MPI3D files as distributed (an ``.npz`` with one stored ``images`` array, or a ``.npy``): the
grid order gives the labels, rows are read from a memory map, bad files are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_retrieve_evaluate

from vqcausal.data import mpi3d
from vqcausal.data.mpi3d import MPI3D_SPACE, MPI3DFile
from vqcausal.errors import DataError

SMALL = (2, 2, 2, 2, 2, 3, 2)  # a 192-point grid for the format tests (the real one is exact)


@pytest.fixture
def small_grid(monkeypatch):
    """The reader on a 192-point grid: the same code, a file of a few MB."""
    from vqcausal.data.factors import Factor, FactorSpace

    space = FactorSpace(
        [Factor(f.name, n) for f, n in zip(mpi3d.MPI3D_FACTORS, SMALL, strict=True)]
    )
    monkeypatch.setattr(mpi3d, "MPI3D_SPACE", space)
    return space


def grid_images(space) -> np.ndarray:
    """Image i encodes its own grid point: pixel (0, 0) holds the factor values."""
    n = space.num_values
    images = np.zeros((n, 64, 64, 3), np.uint8)
    values = space.unravel(torch.arange(n)).numpy()
    images[:, 0, : values.shape[1], 0] = values
    images[:, 1:, :, :] = (np.arange(n) % 251)[:, None, None, None]
    return images


def test_reads_the_npz_as_distributed_and_the_order_gives_the_labels(tmp_path, small_grid):
    images = grid_images(small_grid)
    path = tmp_path / "mpi3d_real.npz"
    np.savez(path, images=images)  # what the authors did: stored, not compressed
    source = MPI3DFile(path)
    assert source.image_shape == (3, 64, 64) and source.describe()["grid_points"] == 192
    values = small_grid.unravel(torch.tensor([191, 0, 7, 7, 120]))
    out = source.render(values)
    assert out.shape == (5, 3, 64, 64) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0, 0, :7], values.to(torch.uint8))  # the right rows, in order
    assert torch.equal(out.permute(0, 2, 3, 1), torch.from_numpy(images[[191, 0, 7, 7, 120]]))


def test_a_plain_npy_reads_the_same(tmp_path, small_grid):
    images = grid_images(small_grid)
    np.save(tmp_path / "images.npy", images)
    source = MPI3DFile(tmp_path / "images.npy")
    values = small_grid.unravel(torch.arange(192))
    assert torch.equal(source.render(values).permute(0, 2, 3, 1), torch.from_numpy(images))


def test_truncated_wrong_size_compressed_and_foreign_files_are_one_line(tmp_path, small_grid):
    images = grid_images(small_grid)
    cases = {}
    np.savez(tmp_path / "short.npz", images=images[:-1])
    cases["short.npz"] = "must be \\(192, 64, 64, 3\\)"
    np.savez_compressed(tmp_path / "packed.npz", images=images)
    cases["packed.npz"] = "is compressed"
    np.savez(tmp_path / "other.npz", imgs=images)
    cases["other.npz"] = "no array 'images'"
    np.savez(tmp_path / "floats.npz", images=images.astype(np.float32))
    cases["floats.npz"] = "must be a C-order uint8 array"
    np.save(tmp_path / "cut.npy", images)
    with open(tmp_path / "cut.npy", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 1000)
    cases["cut.npy"] = "is truncated"
    (tmp_path / "junk.npz").write_bytes(b"not an array at all")
    cases["junk.npz"] = "not a .npy array"
    for name, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            MPI3DFile(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def sparse_real_size_npy(path: Path) -> None:
    """The real array's size (12.7 GB) as a ``.npy`` that takes no disk: its header, then a hole
    (the reader maps an ``.npz`` member and a ``.npy`` with the same code, tested above)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0,), np.uint8))
    header["shape"] = (MPI3D_SPACE.num_values, 64, 64, 3)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + int(np.prod(header["shape"])))


@pytest.mark.skipif(sys.platform != "linux", reason="sparse files and ru_maxrss as on Linux")
def test_a_real_size_file_is_read_in_bounded_memory(tmp_path):
    """1,036,800 images (12.7 GB): opening the file and rendering batches adds under 100 MB
    to the process's peak RSS (it was 390 MB when the array was memory-mapped)."""
    path = tmp_path / "mpi3d_real.npy"
    sparse_real_size_npy(path)
    assert path.stat().st_size > 12 * 10**9 and path.stat().st_blocks * 512 < 10**8
    script = (
        "import resource, torch\n"
        "from vqcausal.data.mpi3d import MPI3DFile, MPI3D_SPACE\n"
        "def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "g = torch.Generator().manual_seed(0)\n"
        "before = peak()\n"
        f"source = MPI3DFile({str(path)!r})\n"
        "for _ in range(20):\n"
        "    rows = torch.randint(MPI3D_SPACE.num_values, (256,), generator=g)\n"
        "    assert source.render(MPI3D_SPACE.unravel(rows)).shape == (256, 3, 64, 64)\n"
        "print(before, peak())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    before, after = (int(v) / 1024 for v in done.stdout.split()[-2:])
    # 20 batches of 256 images (3 MB each) on top of torch: the file adds next to nothing
    assert after - before < 100, f"peak RSS grew {after - before:.0f} MB (from {before:.0f} MB)"


@pytest.mark.slow
def test_a_tiny_model_trains_retrieves_and_evaluates_on_mpi3d(tmp_path, small_grid):
    images = grid_images(small_grid)
    images[:, 8:40, 8:40, :] = np.arange(len(images))[:, None, None, None] % 200 + 40
    np.savez(tmp_path / "mpi3d_real.npz", images=images)
    data = [f'data.path="{tmp_path / "mpi3d_real.npz"}"', 'data.dataset="mpi3d"']
    actions = train_retrieve_evaluate(tmp_path, data, images[0], images[96])
    assert actions[:2] == ["object_color+", "object_color-"]


def test_data_info_and_preview_on_a_real_size_file(tmp_path, capsys):
    from vqcausal.cli import main as cli

    path = tmp_path / "mpi3d_toy.npy"
    sparse_real_size_npy(path)
    assert cli(["data", "info", "--dataset", "mpi3d", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1036800" in out.replace(",", "") and "vertical_axis" in out
    png = tmp_path / "grid.png"
    args = ["--path", str(path), "--out", str(png), "--pairs", "1"]
    assert cli(["data", "preview", "--dataset", "mpi3d", *args]) == 0 and png.is_file()

"""User images in any mode Pillow reads are converted the way the model was trained."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vqcausal.imageio import ImageError, load_image


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_rgb_round_trip_is_exact(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 3, (16, 16))
    assert x.shape == (3, 16, 16)
    assert torch.equal((x * 255).round().byte(), torch.from_numpy(rgb).permute(2, 0, 1))


def test_modes_are_converted(tmp_path, rgb):
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "gray.png")
    as_rgb = load_image(tmp_path / "gray.png", 3, (16, 16))
    assert torch.equal(as_rgb[0], as_rgb[1]) and torch.equal(as_rgb[1], as_rgb[2])

    rgba = np.dstack([rgb, np.zeros((16, 16), np.uint8)])  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(load_image(tmp_path / "rgba.png", 3, (16, 16)), torch.ones(3, 16, 16))

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png", 3, (16, 16)).shape == (3, 16, 16)

    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    x = load_image(tmp_path / "deep.png", 1, (16, 16))
    assert x.shape == (1, 16, 16)
    assert x.min() == 0 and x.max() == 1  # the full 16-bit range maps onto [0, 1]


def test_resize_to_model_size(tmp_path, rgb):
    Image.fromarray(rgb).resize((40, 24)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", 3, (16, 16)).shape == (3, 16, 16)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an image"),
        (b"hello, I am text", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "cannot decode"),
    ],
)
def test_bad_files_are_image_errors(tmp_path, content, message):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path, 3, (16, 16))


def test_missing_directory_and_huge_header(tmp_path, rgb):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png", 3, (16, 16))
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path, 3, (16, 16))
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR width, height
    (tmp_path / "huge.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="huge.png"):
        load_image(tmp_path / "huge.png", 3, (16, 16))


def test_float_tiff_with_nan_pixels_loads_without_warnings(tmp_path):
    """NaN / inf pixels of a float image read as black, and no NumPy warning reaches the user."""
    array = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    array[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    path = tmp_path / "nan.tiff"
    Image.fromarray(array, mode="F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path, channels=1, size=(16, 16))
    assert torch.isfinite(image).all() and image[0, 0, 0] == 0 and image[0, -1, -1] == 1


def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo, channels=3, size=(16, 16))

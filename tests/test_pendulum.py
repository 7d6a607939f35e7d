"""CausalVAE pendulum: geometry, procedural renderer and the on-disk folder format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcausal.data.pendulum import (
    LIGHT_INDICES,
    PENDULUM_INDICES,
    PendulumRenderer,
    grid_sizes,
    indices_to_values,
    shadow_geometry,
    sun_x,
    values_to_indices,
)
from vqcausal.data.pendulum_folder import PendulumFolder, write_causalvae_folder
from vqcausal.errors import DataError

DEG = math.pi / 180


def _t(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64)


# ---- geometry ------------------------------------------------------------------------------
def test_shadow_geometry_by_hand() -> None:
    # Light straight down (phi = 90 deg, j = 100 is off the grid but the formula works): both
    # rays hit the ground under the pivot, so the shadow is centred at 10 with the minimum 3.
    shade, mid = shadow_geometry(_t(0.0), _t(90 * DEG))
    assert shade.item() == pytest.approx(3.0)
    assert mid.item() == pytest.approx(10.0)
    # phi = 45 deg (tan = 1): ground hit x = x + (-0.5 - y). Pivot (10, 10.5) -> -1,
    # ball tip (10, 1) -> 8.5: shade 9.5, mid 3.75.
    shade, mid = shadow_geometry(_t(0.0), _t(45 * DEG))
    assert (shade.item(), mid.item()) == pytest.approx((9.5, 3.75))
    # phi = 135 deg (tan = -1): x + y + 0.5. Pivot -> 21, tip -> 11.5: shade 9.5, mid 16.25.
    shade, mid = shadow_geometry(_t(0.0), _t(135 * DEG))
    assert (shade.item(), mid.item()) == pytest.approx((9.5, 16.25))
    # Pendulum horizontal (theta = 90 deg), phi = 135 deg: tip (19.5, 10.5) -> 30.5.
    shade, mid = shadow_geometry(_t(90 * DEG), _t(135 * DEG))
    assert (shade.item(), mid.item()) == pytest.approx((9.5, 25.75))
    # The sun sits on the ray through the pivot at height 20.5: 10 + 10 / tan(phi).
    assert sun_x(_t(45 * DEG)).item() == pytest.approx(20.0)
    assert sun_x(_t(135 * DEG)).item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "name", ["a_0_147_8_15.png", "a_9_99_3_10.png", "a_-10_105_3_9.png", "a_-40_60_3_2.png"]
)
def test_geometry_matches_generator_file_names(name: str) -> None:
    """File names the CausalVAE script wrote carry int(shade) and int(mid)."""
    i, j, shade_int, mid_int = (int(p) for p in name[2:-4].split("_"))
    shade, mid = shadow_geometry(_t(i * math.pi / 200), _t(j * math.pi / 200))
    assert (int(shade.item()), int(mid.item())) == (shade_int, mid_int)


def test_grid_constants_and_index_mapping() -> None:
    assert len(PENDULUM_INDICES) == 84 and len(LIGHT_INDICES) == 87
    assert 100 not in LIGHT_INDICES and LIGHT_INDICES[0] == 60 and LIGHT_INDICES[-1] == 147
    assert grid_sizes(1) == (84, 87) and grid_sizes(3) == (28, 29)
    values = torch.tensor([[0, 0], [27, 28], [13, 13]])
    i, j = values_to_indices(values, 3)
    assert i.tolist() == [-40, 41, -1] and j.tolist() == [60, 145, 99]
    assert torch.equal(indices_to_values(i, j, 3), values)
    assert indices_to_values(torch.tensor([43]), torch.tensor([147]), 1).tolist() == [[83, 86]]
    for bad_i, bad_j, stride in [(0, 100, 1), (44, 60, 1), (-41, 60, 1), (-39, 60, 3)]:
        with pytest.raises(DataError):
            indices_to_values(torch.tensor([bad_i]), torch.tensor([bad_j]), stride)


# ---- renderer ----------------------------------------------------------------------------
def test_renderer_shapes_dtypes_and_determinism() -> None:
    source = PendulumRenderer()
    assert source.name == "pendulum"
    assert source.space.names == ["pendulum_angle", "light_angle"]
    assert source.space.sizes == [28, 29]
    assert not any(f.cyclic for f in source.space.factors)
    values = source.space.sample_values(16, generator=torch.Generator().manual_seed(0))
    images = source.render(values)
    assert images.shape == (16, 3, 96, 96) and images.dtype == torch.uint8
    assert source.image_shape == (3, 96, 96)
    assert torch.equal(images, source.render(values))
    assert torch.equal(images[3:4], source.render(values[3:4]))  # independent of the batch
    assert (images[:, :, :4, :4] == 255).all()  # white margins, as matplotlib left them
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    for colour in ([178, 34, 34], [255, 165, 0], [0, 0, 0]):  # ball, sun, rod and shadow
        assert (pixels == torch.tensor(colour, dtype=torch.uint8)).all(1).any()


def test_renderer_image_size_and_stride_options() -> None:
    small = PendulumRenderer(image_size=64)
    images = small.render(torch.tensor([[0, 0], [27, 28]]))
    assert images.shape == (2, 3, 64, 64) and small.image_shape == (3, 64, 64)
    exact = PendulumRenderer(stride=1)
    assert exact.space.sizes == [84, 87] and exact.space.num_values == 7308
    # Stride 3 is a subgrid of stride 1: the same scene, pixel for pixel.
    coarse = PendulumRenderer(stride=3)
    assert torch.equal(
        coarse.render(torch.tensor([[5, 7]])), exact.render(torch.tensor([[15, 21]]))
    )
    for bad in ({"stride": 0}, {"stride": 84}, {"image_size": 8}):
        with pytest.raises(DataError):
            PendulumRenderer(**bad)


def test_every_action_changes_the_image() -> None:
    source = PendulumRenderer()
    space = source.space
    values = space.unravel(torch.arange(space.num_values))
    images = source.render(values)
    for action in range(space.num_actions):
        moved, valid = space.apply(values, torch.full((len(values),), action))
        after = images[space.ravel(moved[valid])]
        changed = (after != images[valid]).flatten(1).any(1)
        assert valid.sum() > 0 and changed.all(), space.action_names[action]


def test_concepts_and_dag() -> None:
    source = PendulumRenderer()
    assert source.concept_names == [
        "pendulum_angle",
        "light_angle",
        "shadow_length",
        "shadow_position",
    ]
    values = torch.tensor([[0, 0], [27, 28], [13, 13]])
    concepts = source.concepts(values)
    assert concepts.shape == (3, 4) and concepts.dtype == torch.float32
    assert concepts[:, 0].tolist() == pytest.approx([-36.0, 36.9, -0.9])
    assert concepts[:, 1].tolist() == pytest.approx([54.0, 130.5, 89.1])
    shade, mid = shadow_geometry(_t(-36 * DEG), _t(54 * DEG))
    assert concepts[0, 2:].tolist() == pytest.approx([shade.item(), mid.item()], abs=1e-5)
    assert concepts[0, 3].item() != int(concepts[0, 3].item())  # exact, not truncated
    dag = source.true_dag
    assert dag.shape == (4, 4)
    assert {tuple(e) for e in dag.nonzero().tolist()} == {(0, 2), (0, 3), (1, 2), (1, 3)}


# ---- the on-disk folder ----------------------------------------------------------------------
FOLDER_INDICES = [(-40, 60, "train"), (0, 99, "train"), (12, 101, "train"), (43, 147, "test"),
                  (-7, 120, "test")]  # fmt: skip


def _write_folder(root: Path, stride: int = 1) -> PendulumRenderer:
    """A tiny CausalVAE-format folder, written as the generator names and saves its PNGs."""
    renderer = PendulumRenderer(stride=1)
    i = torch.tensor([e[0] for e in FOLDER_INDICES])
    j = torch.tensor([e[1] for e in FOLDER_INDICES])
    splits = torch.tensor([("train", "test").index(e[2]) for e in FOLDER_INDICES])
    write_causalvae_folder(renderer, root, indices_to_values(i, j), splits)
    return renderer


def test_folder_rows_split_concepts_and_round_trip(tmp_path: Path) -> None:
    renderer = _write_folder(tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*/*.png"))
    assert "a_-40_60_3_2.png" in names and len(names) == 5  # the generator's names
    with Image.open(tmp_path / "train" / "a_-40_60_3_2.png") as png:
        assert png.mode == "RGBA" and png.size == (96, 96)  # as matplotlib saves them
    folder = PendulumFolder(tmp_path)
    assert folder.name == "pendulum" and folder.image_shape == (3, 96, 96)
    assert folder.space == renderer.space
    values = folder.stored_values()
    assert values.shape == (5, 2)
    expected = {(i + 40, LIGHT_INDICES.index(j)): sub for i, j, sub in FOLDER_INDICES}
    splits = folder.stored_split().tolist()
    got = {tuple(v): ("train", "test")[s] for v, s in zip(values.tolist(), splits, strict=True)}
    assert got == expected
    # The saved pixels come back exactly, and equal the renderer's at stride 1.
    images = folder.render(values)
    assert images.dtype == torch.uint8 and torch.equal(images, renderer.render(values))
    assert torch.equal(folder.load_rows(torch.tensor([2, 2, 0])), images[[2, 2, 0]])
    # Concepts: the same numbers as the renderer's (the names only keep truncated shadows).
    assert torch.equal(folder.concepts(values), renderer.concepts(values))
    assert folder.true_dag.tolist() == renderer.true_dag.tolist()
    with pytest.raises(DataError):
        folder.render(torch.tensor([[1, 1]]))  # a grid point without a file
    resized = PendulumFolder(tmp_path, image_size=64)
    assert resized.render(values[:2]).shape == (2, 3, 64, 64)


def test_folder_at_a_stride_is_the_renderer_at_that_stride(tmp_path: Path) -> None:
    coarse = PendulumRenderer(stride=3)
    values = torch.tensor([[0, 0], [5, 7], [27, 28], [13, 2]])
    write_causalvae_folder(coarse, tmp_path, values, torch.tensor([0, 0, 1, 1]))
    extra = PendulumRenderer(stride=1)  # a file off the stride-3 grid is left out
    write_causalvae_folder(extra, tmp_path, torch.tensor([[1, 1]]), torch.tensor([0]))
    folder = PendulumFolder(tmp_path, stride=3)
    assert folder.space == coarse.space
    stored = folder.stored_values()
    assert sorted(map(tuple, stored.tolist())) == sorted(map(tuple, values.tolist()))
    assert torch.equal(folder.render(stored), coarse.render(stored))
    assert torch.equal(folder.concepts(stored), coarse.concepts(stored))
    assert PendulumFolder(tmp_path, stride=1).stored_values().shape == (5, 2)  # every file
    (tmp_path / "train" / "a_-39_61_3_2.png").unlink()  # the off-grid file goes: stride found
    assert PendulumFolder(tmp_path).space == coarse.space
    with pytest.raises(DataError, match="stride"):
        PendulumFolder(tmp_path, stride=84)


def test_folder_composites_transparency_on_white(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    rgba = np.zeros((96, 96, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "a_0_80_3_9.png")
    folder = PendulumFolder(tmp_path)
    (row,) = folder.rows_of(indices_to_values(torch.tensor([0]), torch.tensor([80]))).tolist()
    assert (folder.load_rows(torch.tensor([row])) == 255).all()


@pytest.mark.parametrize(
    "bad_name",
    ["b_0_80_3_9.png", "a_0_80_3.png", "a_x_80_3_9.png", "a_0_100_3_9.png", "a_44_80_3_9.png"],
)
def test_folder_bad_names(tmp_path: Path, bad_name: str) -> None:
    _write_folder(tmp_path)
    Image.new("RGBA", (96, 96), "white").save(tmp_path / "train" / bad_name)
    with pytest.raises(DataError, match=bad_name.replace(".", r"\.")):
        PendulumFolder(tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        PendulumFolder(tmp_path / "missing")
    with pytest.raises(DataError, match="no train/ subfolder"):
        PendulumFolder(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no PNG"):
        PendulumFolder(tmp_path)
    Image.new("RGBA", (96, 96), "white").save(tmp_path / "train" / "a_0_80_3_9.png")
    with pytest.raises(DataError, match="no test/ subfolder"):  # reported, not accepted
        PendulumFolder(tmp_path)
    (tmp_path / "test").mkdir()
    Image.new("RGBA", (96, 96), "white").save(tmp_path / "test" / "a_0_80_4_9.png")
    with pytest.raises(DataError, match="same i=0, j=80"):
        PendulumFolder(tmp_path)
    (tmp_path / "test" / "a_0_80_4_9.png").write_bytes(b"not a png")
    (tmp_path / "test" / "a_0_80_4_9.png").rename(tmp_path / "test" / "a_1_80_4_9.png")
    folder = PendulumFolder(tmp_path)
    with pytest.raises(DataError, match=r"a_1_80_4_9\.png: unreadable PNG"):
        folder.render(torch.tensor([[41, 20]]))

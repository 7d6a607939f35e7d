"""Procedural Shapes3D and dSprites renderers: layout, determinism and factor visibility."""

from __future__ import annotations

import pytest
import torch

from vqcausal.data import shapes3d
from vqcausal.data.shapes3d import SHAPES3D_SPACE, Shapes3DRenderer
from vqcausal.data.sprites import SPRITES_SPACE, SYMMETRY, SpritesRenderer
from vqcausal.errors import DataError


@pytest.fixture(scope="module")
def scenes() -> Shapes3DRenderer:
    return Shapes3DRenderer()


@pytest.fixture(scope="module")
def sprites() -> SpritesRenderer:
    return SpritesRenderer()


def _sample(space, n: int, seed: int) -> torch.Tensor:
    return space.sample_values(n, generator=torch.Generator().manual_seed(seed))


def _one_step_pairs(space, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Every one-step move (v -> v + 1, wrapping for cyclic factors) in every context."""
    before, after, labels = [], [], []
    for k, factor in enumerate(space.factors):
        steps = factor.size if factor.cyclic else factor.size - 1
        for v in range(steps):
            a, b = contexts.clone(), contexts.clone()
            a[:, k], b[:, k] = v, (v + 1) % factor.size
            before.append(a)
            after.append(b)
            labels += [(factor.name, v)] * len(contexts)
    return torch.cat(before), torch.cat(after), labels


# ---- spaces and shapes ------------------------------------------------------------------
def test_factor_spaces_match_the_real_datasets() -> None:
    assert SHAPES3D_SPACE.names == [
        "floor_hue",
        "wall_hue",
        "object_hue",
        "scale",
        "shape",
        "orientation",
    ]
    assert SHAPES3D_SPACE.sizes == [10, 10, 10, 8, 4, 15]
    assert [f.cyclic for f in SHAPES3D_SPACE.factors] == [True, True, True, False, False, False]
    assert SPRITES_SPACE.names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert SPRITES_SPACE.sizes == [3, 6, 40, 32, 32]
    assert [f.cyclic for f in SPRITES_SPACE.factors] == [False, False, True, False, False]
    assert shapes3d.SHAPE_NAMES == ("cube", "cylinder", "sphere", "capsule")


def test_image_shapes_and_dtypes(scenes: Shapes3DRenderer, sprites: SpritesRenderer) -> None:
    rgb_sprites = SpritesRenderer(channels=3)
    for source, shape in [
        (scenes, (3, 64, 64)),
        (sprites, (1, 64, 64)),
        (rgb_sprites, (3, 64, 64)),
    ]:
        assert source.image_shape == shape
        images = source.render(_sample(source.space, 5, seed=0))
        assert images.shape == (5, *shape) and images.dtype == torch.uint8
        assert source.describe()["grid_points"] == source.space.num_values
    values = _sample(SPRITES_SPACE, 4, seed=1)
    grey, rgb = sprites.render(values), rgb_sprites.render(values)
    assert torch.equal(rgb, grey.expand(-1, 3, -1, -1))
    with pytest.raises(DataError):
        SpritesRenderer(channels=2)


def test_scene_layout(scenes: Shapes3DRenderer) -> None:
    """Wall on top, floor at the bottom, object in the middle, each in its own hue."""
    red, green, blue = 0, 3, 7  # hues 0.0, 0.3, 0.7: dominant channel R, G, B
    values = _sample(SHAPES3D_SPACE, 64, seed=2)
    for floor, wall, obj in [(red, green, blue), (green, blue, red), (blue, red, green)]:
        values[:, :3] = torch.tensor([floor, wall, obj])
        images = scenes.render(values).int()
        dominant = [images[:, :, r, c].argmax(1) for r, c in [(62, 32), (1, 32), (38, 30)]]
        for pixel, hue in zip(dominant, (floor, wall, obj), strict=True):
            assert (pixel == [red, green, blue].index(hue)).all()


def test_sprites_are_white_on_black(sprites: SpritesRenderer) -> None:
    images = sprites.render(_sample(SPRITES_SPACE, 32, seed=3))
    assert (images.amax((1, 2, 3)) == 255).all()
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all()
    edge = images[:, :, [0, -1], :].sum() + images[:, :, :, [0, -1]].sum()
    assert edge == 0  # even at the largest scale the shape stays inside the frame
    big = torch.tensor(
        [[s, 5, o, p, p] for s in range(3) for o in range(0, 40, 3) for p in (0, 31)]
    )
    frame = sprites.render(big)
    assert frame[:, :, [0, -1], :].sum() + frame[:, :, :, [0, -1]].sum() == 0


# ---- determinism --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["shapes3d", "sprites"])
def test_deterministic_across_calls_instances_and_batches(kind: str) -> None:
    make = Shapes3DRenderer if kind == "shapes3d" else SpritesRenderer
    first = make()
    if kind == "shapes3d":
        shapes3d._weight_table.cache_clear()  # the second instance rebuilds its tables
    second = make()
    values = _sample(first.space, 64, seed=4)
    images = first.render(values)
    assert torch.equal(images, first.render(values))
    assert torch.equal(images, second.render(values))
    singles = torch.cat([second.render(values[i : i + 1]) for i in range(8)])
    assert torch.equal(images[:8], singles)
    assert torch.equal(images[:8], second.render(values.flip(0))[-8:].flip(0))


# ---- every factor is visible ----------------------------------------------------------------
def test_every_one_step_change_is_visible_shapes3d(scenes: Shapes3DRenderer) -> None:
    before, after, labels = _one_step_pairs(SHAPES3D_SPACE, _sample(SHAPES3D_SPACE, 12, seed=5))
    diff = (scenes.render(before).float() - scenes.render(after).float()).abs().mean((1, 2, 3))
    invisible = [labels[i] for i in (diff == 0).nonzero().flatten().tolist()]
    assert not invisible, f"one-step changes leave the image unchanged: {invisible[:5]}"


def test_every_one_step_change_is_visible_sprites(sprites: SpritesRenderer) -> None:
    before, after, labels = _one_step_pairs(SPRITES_SPACE, _sample(SPRITES_SPACE, 12, seed=6))
    diff = (sprites.render(before).float() - sprites.render(after).float()).abs().mean((1, 2, 3))
    invisible = [labels[i] for i in (diff == 0).nonzero().flatten().tolist()]
    assert not invisible, f"one-step changes leave the image unchanged: {invisible[:5]}"


# ---- distinct factors give distinct images ----------------------------------------------------
def _distinct_images(images: torch.Tensor) -> int:
    return len({bytes(img.numpy().tobytes()) for img in images})


def test_distinct_values_give_distinct_images_shapes3d(scenes: Shapes3DRenderer) -> None:
    values = torch.unique(_sample(SHAPES3D_SPACE, 400, seed=7), dim=0)
    assert _distinct_images(scenes.render(values)) == len(values)


def test_distinct_values_give_distinct_images_sprites(sprites: SpritesRenderer) -> None:
    values = _sample(SPRITES_SPACE, 400, seed=8)
    # the square looks the same every 10 orientation steps, the ellipse every 20
    period = 40 // torch.tensor(SYMMETRY)[values[:, 0]]
    canonical = values.clone()
    canonical[:, 2] = values[:, 2] % period
    canonical = torch.unique(canonical, dim=0)
    assert _distinct_images(sprites.render(canonical)) == len(canonical)


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["shapes3d", "sprites"])
def test_out_of_range_values_raise(kind: str, scenes, sprites) -> None:
    source = scenes if kind == "shapes3d" else sprites
    good = _sample(source.space, 2, seed=9)
    for k, size in enumerate(source.space.sizes):
        for bad in (-1, size):
            values = good.clone()
            values[1, k] = bad
            with pytest.raises(DataError):
                source.render(values)
    with pytest.raises(DataError):
        source.render(good[:, :-1])
    with pytest.raises(DataError):
        source.render(good[0])

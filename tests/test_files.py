"""On-disk dataset sources: tiny files in the exact real formats, good and malformed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vqcausal.data.dsprites_file import SPRITES_FACTORS, DSpritesFile
from vqcausal.data.factors import FactorSpace
from vqcausal.data.image_folder import ImageFolderSource
from vqcausal.data.shapes3d_file import SHAPES3D_FACTORS, SHAPES3D_LABEL_GRIDS, Shapes3DFile
from vqcausal.errors import DataError

h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")

SHAPES3D_SPACE = FactorSpace(SHAPES3D_FACTORS)
SPRITES_SPACE = FactorSpace(SPRITES_FACTORS)


def grid_sample(space: FactorSpace, n: int, seed: int = 0) -> torch.Tensor:
    """n distinct grid points in shuffled order, like a subset of the real file."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(space.num_values, size=n, replace=False)
    return space.unravel(torch.from_numpy(flat))


def query_rows(n: int) -> torch.Tensor:
    """Unsorted stored rows with repeats, to check render keeps the requested order."""
    return torch.tensor([n - 1, 3, 0, 3, n // 2, 1, n - 1, 0])


def assert_names_file(err: pytest.ExceptionInfo, path: Path) -> None:
    assert path.name in str(err.value)


# ---- 3dshapes ------------------------------------------------------------------------


def shapes3d_labels(values: torch.Tensor) -> np.ndarray:
    """Real-valued labels on the real 3dshapes grids, as in 3dshapes.h5."""
    v = values.numpy()
    return np.stack([grid[v[:, k]] for k, grid in enumerate(SHAPES3D_LABEL_GRIDS)], axis=1)


def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, data in datasets.items():
            f.create_dataset(key, data=data)
    return path


@pytest.fixture
def shapes3d(tmp_path: Path) -> tuple[Path, torch.Tensor, np.ndarray]:
    values = grid_sample(SHAPES3D_SPACE, 300)
    images = np.random.default_rng(1).integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    path = write_h5(tmp_path / "3dshapes.h5", images=images, labels=shapes3d_labels(values))
    return path, values, images


def test_shapes3d_space_matches_procedural() -> None:
    module = pytest.importorskip("vqcausal.data.shapes3d")
    assert module.SHAPES3D_SPACE == SHAPES3D_SPACE


def test_shapes3d_values_and_render(shapes3d) -> None:
    path, values, images = shapes3d
    source = Shapes3DFile(path)
    assert source.space == SHAPES3D_SPACE
    assert source.space.names == [
        "floor_hue",
        "wall_hue",
        "object_hue",
        "scale",
        "shape",
        "orientation",
    ]
    assert source.image_shape == (3, 64, 64)
    assert torch.equal(source.stored_values(), values)
    rows = query_rows(len(values))
    out = source.render(values[rows])
    assert out.dtype == torch.uint8 and out.shape == (len(rows), 3, 64, 64)
    assert torch.equal(out, torch.from_numpy(images[rows.numpy()]).permute(0, 3, 1, 2))
    assert source.render(values[:0]).shape == (0, 3, 64, 64)


def test_shapes3d_missing_grid_point(shapes3d) -> None:
    path, values, _ = shapes3d
    source = Shapes3DFile(path)
    stored = set(SHAPES3D_SPACE.ravel(values).tolist())
    absent = next(i for i in range(SHAPES3D_SPACE.num_values) if i not in stored)
    with pytest.raises(DataError, match="no stored image"):
        source.render(SHAPES3D_SPACE.unravel(torch.tensor([absent])))


def test_shapes3d_partial_grid_keeps_real_indices(tmp_path: Path) -> None:
    """A file with only hues 0.3 and 0.5 must index them 3 and 5, not 0 and 1."""
    values = torch.tensor([[3, 0, 0, 0, 0, 7], [5, 0, 0, 0, 0, 7], [5, 9, 9, 7, 3, 14]])
    labels = shapes3d_labels(values).astype(np.float32)  # float noise is tolerated
    images = np.zeros((3, 64, 64, 3), np.uint8)
    path = write_h5(tmp_path / "part.h5", images=images, labels=labels)
    assert torch.equal(Shapes3DFile(path).stored_values(), values)


def test_shapes3d_other_scale_ranked(tmp_path: Path) -> None:
    """A column on another scale with one value per grid point is indexed by rank."""
    values = torch.zeros(15, 6, dtype=torch.long)
    values[:, 5] = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    labels = shapes3d_labels(values)
    labels[:, 5] = np.deg2rad(labels[:, 5])
    path = write_h5(tmp_path / "rad.h5", images=np.zeros((15, 64, 64, 3), np.uint8), labels=labels)
    assert torch.equal(Shapes3DFile(path).stored_values(), values)


def test_shapes3d_pickle_and_reopen(shapes3d) -> None:
    path, values, images = shapes3d
    source = Shapes3DFile(path)
    source.render(values[:2])
    clone = pickle.loads(pickle.dumps(source))
    source.close()
    expected = torch.from_numpy(images[:4]).permute(0, 3, 1, 2)
    assert torch.equal(clone.render(values[:4]), expected)
    assert torch.equal(source.render(values[:4]), expected)


def _bad_shapes3d(tmp_path: Path, case: str) -> Path:
    values = grid_sample(SHAPES3D_SPACE, 20)
    labels = shapes3d_labels(values)
    images = np.zeros((20, 64, 64, 3), np.uint8)
    path = tmp_path / f"bad_{case}.h5"
    if case == "not_hdf5":
        path.write_text("this is not an HDF5 file\n")
        return path
    data = {"images": images, "labels": labels}
    if case == "missing_images":
        del data["images"]
    elif case == "missing_labels":
        del data["labels"]
    elif case == "images_shape":
        data["images"] = images[..., 0]
    elif case == "images_channels":
        data["images"] = np.zeros((20, 64, 64, 4), np.uint8)
    elif case == "images_dtype":
        data["images"] = images.astype(np.float32)
    elif case == "labels_shape":
        data["labels"] = labels[:, :5]
    elif case == "lengths":
        data["labels"] = labels[:19]
    elif case == "too_many_values":
        data["labels"][:11, 0] = np.arange(11) / 20
    elif case == "off_grid":
        data["labels"][:, 3] = 0.75
        data["labels"][0, 3] = 3.5
    elif case == "nan":
        data["labels"][0, 1] = np.nan
    elif case == "duplicate":
        data["labels"][1] = data["labels"][0]
    elif case == "images_group":
        with h5py.File(path, "w") as f:
            f.create_group("images")
            f.create_dataset("labels", data=labels)
        return path
    return write_h5(path, **data)


@pytest.mark.parametrize(
    "case",
    [
        "not_hdf5",
        "missing_images",
        "missing_labels",
        "images_group",
        "images_shape",
        "images_channels",
        "images_dtype",
        "labels_shape",
        "lengths",
        "too_many_values",
        "off_grid",
        "nan",
        "duplicate",
    ],
)
def test_shapes3d_malformed(tmp_path: Path, case: str) -> None:
    path = _bad_shapes3d(tmp_path, case)
    with pytest.raises(DataError) as err:
        Shapes3DFile(path)
    assert_names_file(err, path)


def test_shapes3d_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.h5"):
        Shapes3DFile(tmp_path / "nope.h5")


# ---- dSprites ------------------------------------------------------------------------


def sprites_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays laid out like dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz."""
    values = grid_sample(SPRITES_SPACE, n, seed).numpy()
    classes = np.concatenate([np.zeros((n, 1), np.int64), values], axis=1)
    latents_values = np.stack(
        [
            np.ones(n),
            values[:, 0] + 1.0,
            np.linspace(0.5, 1, 6)[values[:, 1]],
            np.linspace(0, 2 * np.pi, 40)[values[:, 2]],
            np.linspace(0, 1, 32)[values[:, 3]],
            np.linspace(0, 1, 32)[values[:, 4]],
        ],
        axis=1,
    )
    imgs = np.random.default_rng(seed + 1).integers(0, 2, (n, 64, 64), dtype=np.uint8)
    return {"imgs": imgs, "latents_classes": classes, "latents_values": latents_values}


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    meta = np.array({"description": "dSprites", "latents_sizes": [1, 3, 6, 40, 32, 32]})
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as fh:  # keep the exact name (np.savez would append .npz)
        save(fh, metadata=meta, **arrays)  # metadata is a pickle, like the real file
    return path


@pytest.mark.parametrize("compressed", [True, False])
def test_sprites_values_and_render(tmp_path: Path, compressed: bool) -> None:
    arrays = sprites_arrays(200)
    path = write_npz(tmp_path / "dsprites.npz", arrays, compressed)
    source = DSpritesFile(path)
    assert (source._mapped is None) == compressed  # stored archives are memory-mapped
    assert source.space == SPRITES_SPACE
    assert source.space.names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert source.space.sizes == [3, 6, 40, 32, 32]
    assert [f.cyclic for f in source.space.factors] == [False, False, True, False, False]
    values = torch.from_numpy(arrays["latents_classes"][:, 1:])
    assert torch.equal(source.stored_values(), values)
    rows = query_rows(200)
    out = source.render(values[rows])
    expected = torch.from_numpy(arrays["imgs"][rows.numpy()] * 255).unsqueeze(1)
    assert out.dtype == torch.uint8 and out.shape == (len(rows), 1, 64, 64)
    assert torch.equal(out, expected)
    rgb = DSpritesFile(path, channels=3)
    assert rgb.image_shape == (3, 64, 64)
    assert torch.equal(rgb.render(values[rows]), expected.repeat(1, 3, 1, 1))


def test_sprites_space_matches_procedural() -> None:
    module = pytest.importorskip("vqcausal.data.sprites")
    assert module.SPRITES_SPACE == SPRITES_SPACE


def test_sprites_missing_grid_point(tmp_path: Path) -> None:
    arrays = sprites_arrays(50)
    source = DSpritesFile(write_npz(tmp_path / "d.npz", arrays))
    stored = set(SPRITES_SPACE.ravel(source.stored_values()).tolist())
    absent = next(i for i in range(SPRITES_SPACE.num_values) if i not in stored)
    with pytest.raises(DataError, match="no stored image"):
        source.render(SPRITES_SPACE.unravel(torch.tensor([absent])))


def test_sprites_bool_images(tmp_path: Path) -> None:
    arrays = sprites_arrays(10)
    arrays["imgs"] = arrays["imgs"].astype(bool)
    source = DSpritesFile(write_npz(tmp_path / "d.npz", arrays))
    assert torch.equal(
        source.render(source.stored_values())[:, 0],
        torch.from_numpy(arrays["imgs"] * np.uint8(255)),
    )


def _bad_sprites(tmp_path: Path, case: str) -> Path:
    arrays = sprites_arrays(20)
    path = tmp_path / f"bad_{case}.npz"
    if case == "not_zip":
        path.write_text("not a zip archive\n")
        return path
    if case == "single_array":
        with open(path, "wb") as fh:
            np.save(fh, arrays["imgs"])
        return path
    if case == "truncated":
        write_npz(path, arrays)
        path.write_bytes(path.read_bytes()[:2000])
        return path
    if case == "corrupt":
        write_npz(path, arrays)
        data = bytearray(path.read_bytes())
        start = data.index(b"imgs.npy") + 200  # inside the compressed pixels
        data[start : start + 64] = bytes(64)
        path.write_bytes(bytes(data))
        return path
    if case == "missing_imgs":
        del arrays["imgs"]
    elif case == "missing_classes":
        del arrays["latents_classes"]
    elif case == "imgs_shape":
        arrays["imgs"] = arrays["imgs"].reshape(20, -1)
    elif case == "imgs_dtype":
        arrays["imgs"] = arrays["imgs"].astype(np.float32)
    elif case == "imgs_pickled":
        arrays["imgs"] = np.empty((20, 64, 64), dtype=object)
    elif case == "imgs_values":
        arrays["imgs"][3, 5, 5] = 255
    elif case == "classes_shape":
        arrays["latents_classes"] = arrays["latents_classes"][:, 1:]
    elif case == "classes_dtype":
        arrays["latents_classes"] = arrays["latents_classes"].astype(np.float64)
    elif case == "classes_range":
        arrays["latents_classes"][0, 1] = 3  # shape has 3 values
    elif case == "classes_negative":
        arrays["latents_classes"][0, 5] = -1
    elif case == "colour":
        arrays["latents_classes"][0, 0] = 1
    elif case == "lengths":
        arrays["latents_classes"] = arrays["latents_classes"][:19]
    elif case == "duplicate":
        arrays["latents_classes"][1] = arrays["latents_classes"][0]
    return write_npz(path, arrays)


@pytest.mark.parametrize(
    "case",
    [
        "not_zip",
        "single_array",
        "truncated",
        "corrupt",
        "missing_imgs",
        "missing_classes",
        "imgs_shape",
        "imgs_dtype",
        "imgs_pickled",
        "imgs_values",
        "classes_shape",
        "classes_dtype",
        "classes_range",
        "classes_negative",
        "colour",
        "lengths",
        "duplicate",
    ],
)
def test_sprites_malformed(tmp_path: Path, case: str) -> None:
    path = _bad_sprites(tmp_path, case)
    with pytest.raises(DataError) as err:
        DSpritesFile(path)
    assert_names_file(err, path)


def test_sprites_bad_pixels_in_mapped_archive(tmp_path: Path) -> None:
    """Memory-mapped pixels are checked when read, not by scanning 3 GB up front."""
    arrays = sprites_arrays(20)
    arrays["imgs"][0, 0, 0] = 7
    path = write_npz(tmp_path / "mapped.npz", arrays, compressed=False)
    source = DSpritesFile(path)
    with pytest.raises(DataError) as err:
        source.load_rows(torch.tensor([0]))
    assert_names_file(err, path)


def test_sprites_bad_channels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="channels"):
        DSpritesFile(write_npz(tmp_path / "d.npz", sprites_arrays(5)), channels=2)


# ---- folder + factors.csv --------------------------------------------------------------


def write_folder(
    root: Path, rows: list[tuple[str, ...]], header: str = "filename,a,b", size=(8, 6)
) -> dict[str, np.ndarray]:
    """PNG images named in rows plus factors.csv; returns each file's HWC pixels."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = {}
    lines = [header]
    for row in rows:
        name = row[0]
        if name not in pixels:
            pixels[name] = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels[name]).save(root / name)
        lines.append(",".join(row))
    (root / "factors.csv").write_text("\n".join(lines) + "\n")
    return pixels


GOOD_ROWS = [
    (f"img{i}.png", str(a), str(b))
    for i, (a, b) in enumerate([(2, 1), (0, 0), (1, 1), (2, 0), (0, 1)])
]


def test_folder_values_and_render(tmp_path: Path) -> None:
    pixels = write_folder(tmp_path / "f", GOOD_ROWS)
    source = ImageFolderSource(tmp_path / "f", cyclic=["b"])
    assert source.space.names == ["a", "b"]
    assert source.space.sizes == [3, 2]
    assert [f.cyclic for f in source.space.factors] == [False, True]
    assert source.image_shape == (3, 6, 8)
    values = torch.tensor([[int(a), int(b)] for _, a, b in GOOD_ROWS])
    assert torch.equal(source.stored_values(), values)
    rows = torch.tensor([4, 0, 0, 3, 1, 4])
    expected = np.stack([pixels[GOOD_ROWS[r][0]] for r in rows.tolist()]).transpose(0, 3, 1, 2)
    out = source.render(values[rows])
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(expected))
    with pytest.raises(DataError, match="no stored image"):
        source.render(torch.tensor([[1, 0]]))


def test_folder_options(tmp_path: Path) -> None:
    pixels = write_folder(tmp_path / "f", GOOD_ROWS)
    csv_path = tmp_path / "f" / "factors.csv"
    gray = ImageFolderSource(csv_path, channels=1, sizes={"a": 5})
    assert gray.space.sizes == [5, 2] and gray.image_shape == (1, 6, 8)
    expected = np.array(Image.fromarray(pixels["img0.png"]).convert("L"))
    assert torch.equal(gray.render(torch.tensor([[2, 1]]))[0, 0], torch.from_numpy(expected))
    small = ImageFolderSource(tmp_path / "f", image_size=4)
    assert small.image_shape == (3, 4, 4)
    assert small.render(small.stored_values()).shape == (5, 3, 4, 4)
    assert ImageFolderSource(tmp_path / "f", sizes=[4, 3]).space.sizes == [4, 3]


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    root = tmp_path / "f"
    write_folder(root, GOOD_ROWS)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "img3.png")
    with pytest.raises(DataError) as err:
        ImageFolderSource(root)
    assert "factors.csv" in str(err.value) and "line 5" in str(err.value)
    assert ImageFolderSource(root, image_size=(6, 8)).image_shape == (3, 6, 8)


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("missing_csv", None),
        ("no_filename", "line 1"),
        ("no_factors", "line 1"),
        ("non_integer", "line 3"),
        ("float_value", "line 3"),
        ("negative", "line 4"),
        ("field_count", "line 3"),
        ("missing_image", "line 2"),
        ("unreadable_image", "line 3"),
        ("unknown_cyclic", None),
        ("unknown_size", None),
        ("small_size", None),
        ("constant_factor", None),
        ("duplicate", "line 5"),
        ("no_rows", None),
    ],
)
def test_folder_malformed(tmp_path: Path, case: str, line: str | None) -> None:
    root = tmp_path / "f"
    rows = [list(r) for r in GOOD_ROWS]
    header = "filename,a,b"
    kwargs: dict = {}
    if case == "no_filename":
        header = "file,a,b"
    elif case == "no_factors":
        header, rows = "filename", [[r[0]] for r in rows]
    elif case == "non_integer":
        rows[1][1] = "big"
    elif case == "float_value":
        rows[1][2] = "1.5"
    elif case == "negative":
        rows[2][1] = "-1"
    elif case == "field_count":
        rows[1].append("7")
    elif case == "unknown_cyclic":
        kwargs["cyclic"] = ["c"]
    elif case == "unknown_size":
        kwargs["sizes"] = {"z": 3}
    elif case == "small_size":
        kwargs["sizes"] = {"a": 2}
    elif case == "constant_factor":
        rows = [[f"i{i}.png", str(i), "0"] for i in range(3)]
    elif case == "duplicate":
        rows[3] = ["img9.png", *rows[0][1:]]
    elif case == "no_rows":
        rows = []
    write_folder(root, [tuple(r) for r in rows], header=header)
    if case == "missing_csv":
        (root / "factors.csv").unlink()
    elif case == "missing_image":
        (root / "img0.png").unlink()
    elif case == "unreadable_image":
        (root / "img1.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError) as err:
        ImageFolderSource(root, **kwargs)
    message = str(err.value)
    assert "factors.csv" in message
    if line is not None:
        assert line in message
    if case == "duplicate":
        assert "line 2" in message
    if case in ("missing_image", "unreadable_image"):
        assert ".png" in message


def test_folder_image_broken_after_header(tmp_path: Path) -> None:
    """Pixels are decoded lazily, so a truncated image fails at render, naming the file."""
    root = tmp_path / "f"
    write_folder(root, GOOD_ROWS, size=(64, 64))
    data = (root / "img2.png").read_bytes()
    (root / "img2.png").write_bytes(data[: len(data) // 2])
    source = ImageFolderSource(root)
    with pytest.raises(DataError, match="img2.png"):
        source.render(torch.tensor([[1, 1]]))
    assert source.render(torch.tensor([[2, 1]])).shape == (1, 3, 64, 64)

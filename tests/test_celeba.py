"""CelebA's files, written here as distributed: 178 x 218 JPEGs in ``img_align_celeba/``, the
attribute list (count line, the 40 names, ``000001.jpg -1  1 ...`` rows) and the official
partition. Pairs are two photos whose chosen attributes differ in exactly one, of one split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_retrieve_evaluate
from PIL import Image

from vqcausal.data.celeba import DEFAULT_ATTRIBUTES, CelebAFolder
from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.errors import DataError

NAMES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
GREY_STEP = 3  # photo i is a plain grey of level GREY_STEP * i: its identity survives JPEG


def write_celeba(root: Path, photos: int = 80, seed: int = 0) -> np.ndarray:
    """A CelebA folder of ``photos`` photos; returns their (photos, 40) attribute signs.
    Every combination of the four default attributes occurs in train and in test; photos
    cycle through partitions train, train, validation, test."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1, 1], size=(photos, len(NAMES)))
    columns = [NAMES.index(a) for a in DEFAULT_ATTRIBUTES]
    for i in range(photos):  # the 16 combinations in turn
        signs[i, columns] = [1 if (i // 4 % 16) >> b & 1 else -1 for b in range(4)]
    (root / "img_align_celeba").mkdir(parents=True)
    rows = [str(photos), " ".join(NAMES) + " "]
    partition = []
    for i in range(photos):
        name = f"{i + 1:06d}.jpg"
        rows.append(name + " " + " ".join(f"{s:2d}" for s in signs[i]))
        partition.append(f"{name} {(0, 0, 1, 2)[i % 4]}")
        grey = np.full((218, 178, 3), GREY_STEP * i, np.uint8)
        Image.fromarray(grey).save(root / "img_align_celeba" / name, quality=95)
    (root / "list_attr_celeba.txt").write_text("\r\n".join(rows) + "\r\n")
    (root / "list_eval_partition.txt").write_text("\r\n".join(partition) + "\r\n")
    return signs


def photo_index(images: torch.Tensor) -> list[int]:
    """Which photo each image is (its grey level / GREY_STEP)."""
    return (images[:, :, 32, 32].float().mean(1) / GREY_STEP).round().long().tolist()


def test_attributes_are_the_factors_and_the_split_is_the_official_one(tmp_path):
    signs = write_celeba(tmp_path)
    source = CelebAFolder(tmp_path)
    assert source.space.names == list(DEFAULT_ATTRIBUTES) and source.space.sizes == [2] * 4
    assert source.image_shape == (3, 64, 64)
    assert source.describe()["photos"] == 60  # validation photos (every 4th) left out
    assert source.describe()["left_out"] == {"validation": 20, "missing": 0}
    kept = [i for i in range(80) if i % 4 != 2]
    columns = [NAMES.index(a) for a in DEFAULT_ATTRIBUTES]
    assert source.photo_values.tolist() == ((signs[kept][:, columns] + 1) // 2).tolist()
    assert source.photo_split.tolist() == [int(i % 4 == 3) for i in kept]
    assert photo_index(source.load_rows(torch.tensor([0, 5, 59]))) == [0, 7, 79]
    dag = source.true_dag  # Male, Smiling -> Narrow_Eyes; Smiling -> Mouth_Slightly_Open
    assert dag.nonzero().tolist() == [[0, 2], [1, 2], [1, 3]]
    chosen = CelebAFolder(tmp_path, ["Smiling", "Eyeglasses"], image_size=32)
    assert chosen.space.names == ["Smiling", "Eyeglasses"] and chosen.true_dag is None
    assert chosen.load_rows(torch.tensor([0])).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("split", [0, 1])
def test_a_pair_is_two_photos_one_attribute_apart_in_one_split(tmp_path, split):
    write_celeba(tmp_path)
    source = CelebAFolder(tmp_path)
    sampler = TransitionSampler(source)
    t = sampler.sample(400, ("train", "test")[split], torch.Generator().manual_seed(1))
    assert t.rows is not None and t.rows_next is not None
    assert torch.equal(source.photo_values[t.rows], t.values)
    assert torch.equal(source.photo_values[t.rows_next], t.values_next)
    differ = (t.values != t.values_next).sum(1)
    assert bool((differ == 1).all())
    moved = (t.values != t.values_next).long().argmax(1)
    assert torch.equal(moved, t.actions // 2)  # the action names the attribute that changed
    assert set(source.photo_split[torch.cat([t.rows, t.rows_next])].tolist()) == {split}
    assert len(set(t.actions.tolist())) == 8 and (t.rows != t.rows_next).all()
    x, x_next = sampler.images(t[:6])  # the photos the sampler drew
    files = source.files
    assert photo_index(x) == [int(files[r][:6]) - 1 for r in t.rows[:6].tolist()]
    assert photo_index(x_next) == [int(files[r][:6]) - 1 for r in t.rows_next[:6].tolist()]
    assert sampler.split_sizes() == {"train": 40, "test": 20}


def test_a_subset_of_the_photos_loads_and_pairs_only_what_is_there(tmp_path):
    write_celeba(tmp_path)
    for i in range(0, 80, 8):  # a filtered copy: every 8th photo gone
        (tmp_path / "img_align_celeba" / f"{i + 1:06d}.jpg").unlink()
    source = CelebAFolder(tmp_path)
    assert source.describe()["left_out"]["missing"] == 10 and len(source.photo_values) == 50
    t = TransitionSampler(source).sample(300, "train", torch.Generator().manual_seed(0))
    present = {f.name for f in (tmp_path / "img_align_celeba").iterdir()}
    assert {source.files[r] for r in torch.cat([t.rows, t.rows_next]).tolist()} <= present


def test_one_action_held_at_k_distinct_photo_pairs(tmp_path):
    write_celeba(tmp_path)
    config = TransitionConfig(rare_action="Smiling+", rare_examples=5)
    sampler = TransitionSampler(CelebAFolder(tmp_path), config)
    rare = sampler.rare_pairs
    assert rare is not None and len(rare) == 5
    fixed = set(zip(rare.rows.tolist(), rare.rows_next.tolist(), strict=True))
    assert len(fixed) == 5
    t = sampler.sample(600, "train", torch.Generator().manual_seed(3))
    mask = t.actions == sampler.rare_action
    drawn = set(zip(t.rows[mask].tolist(), t.rows_next[mask].tolist(), strict=True))
    assert mask.any() and drawn <= fixed


def _damage(root: Path, what: str) -> Path:
    attributes, partition = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    if what == "truncated":
        attributes.write_text("\n".join(attributes.read_text().splitlines()[:30]))
        return attributes
    if what == "bad value":
        lines = attributes.read_text().splitlines()
        lines[5] = lines[5].replace("-1", " 2", 1)
        attributes.write_text("\n".join(lines))
        return attributes
    if what == "no count":
        attributes.write_text("\n".join(attributes.read_text().splitlines()[1:]))
        return attributes
    if what == "no partition":
        partition.write_text("\n".join(partition.read_text().splitlines()[:-1]))
        return partition
    if what == "bad partition":
        partition.write_text(partition.read_text().replace(" 2", " 5", 1))
        return partition
    if what == "missing file":
        partition.unlink()
        return partition
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what, message",
    [
        ("truncated", "its first line says 80 (truncated?)"),
        ("bad value", "line 6 must be a file name and 40 values of 1 or -1"),
        ("no count", "must start with the photo count"),
        ("no partition", "no partition for 000080.jpg"),
        ("bad partition", "must be a file name and 0, 1 or 2"),
        ("missing file", "not found"),
    ],
)
def test_damaged_lists_are_one_line_naming_the_file(tmp_path, what, message):
    write_celeba(tmp_path, photos=80)
    path = _damage(tmp_path, what)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        CelebAFolder(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_attributes_and_damaged_photos_are_one_line(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(DataError, match="no attribute 'Smile'; it has 5_o_Clock_Shadow"):
        CelebAFolder(tmp_path, ["Smile"])
    with pytest.raises(DataError, match="names one twice"):
        CelebAFolder(tmp_path, ["Male", "Male"])
    photo = tmp_path / "img_align_celeba" / "000001.jpg"
    photo.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="not a readable photo") as err:
        CelebAFolder(tmp_path).load_rows(torch.tensor([0]))
    assert str(photo) in str(err.value) and "\n" not in str(err.value)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(photo)
    with pytest.raises(DataError, match="100 x 100 photo"):
        CelebAFolder(tmp_path).load_rows(torch.tensor([0]))


@pytest.mark.slow
def test_a_tiny_model_trains_retrieves_and_evaluates_on_celeba(tmp_path):
    write_celeba(tmp_path / "celeba")  # torchvision's layout: the files in celeba/
    source = CelebAFolder(tmp_path, image_size=32)
    a, b = source.load_rows(torch.tensor([0, 1])).permute(0, 2, 3, 1).numpy()
    sets = [f'data.path="{tmp_path}"', 'data.dataset="celeba"', "data.image_size=32"]
    actions = train_retrieve_evaluate(tmp_path, sets, a, b)
    assert actions[:2] == ["Male+", "Male-"]
    (run,) = list((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    counterfactual = metrics["counterfactual"]
    assert "a different person" in counterfactual["reference"]
    assert np.isfinite(counterfactual["psnr_unchanged"])


@pytest.mark.slow
def test_scm_trains_on_celeba_with_the_four_concept_graph(tmp_path):
    from vqcausal.cli import main as cli
    from vqcausal.train.run import main as train

    write_celeba(tmp_path)
    sets = [f'data.path="{tmp_path}"', 'data.dataset="celeba"', "data.image_size=16"]
    sets += ['model.latent="scm"', f'runs="{tmp_path / "runs"}"', "train.stage1_steps=6"]
    sets += ["train.stage2_steps=4", "train.cache_pairs=64", "train.eval_pairs=16"]
    sets += ["train.batch_size=8"]
    assert train(["--config", "configs/smoke.toml", *(x for s in sets for x in ("--set", s))]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    out = tmp_path / "eval"
    argv = ["evaluate", str(run), "--fast", "--pairs", "32", "--out", str(out)]
    assert cli([*argv, "--no-disentanglement"]) == 0
    structure = json.loads((out / "metrics.json").read_text())["structure"]
    assert np.array(structure["true_graph"]).sum() == 3 and 0 <= structure["shd"] <= 6
    assert structure["mic"]["names"] == list(DEFAULT_ATTRIBUTES)
    assert structure["mic"]["points"] == 60  # every photo, not the 16 attribute vectors


def test_data_info_and_preview(tmp_path, capsys):
    from vqcausal.cli import main as cli

    write_celeba(tmp_path)
    assert cli(["data", "info", "--dataset", "celeba", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Narrow_Eyes" in out and "photos" in out
    png = tmp_path / "grid.png"
    args = ["--path", str(tmp_path), "--out", str(png), "--pairs", "1"]
    assert cli(["data", "preview", "--dataset", "celeba", *args]) == 0 and png.is_file()
    args = ["--dataset", "celeba", "--path", str(tmp_path), "--set", 'data.attributes=["Bald"]']
    assert cli(["data", "info", *args]) == 0 and "Bald" in capsys.readouterr().out

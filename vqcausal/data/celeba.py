"""CelebA (Liu et al. 2015): 202,599 aligned face photos, each labelled with 40 binary attributes.

Read from the files as distributed, in one folder (or its ``celeba/``, torchvision's layout)::

    img_align_celeba/000001.jpg ...   178 x 218 JPEG photos
    list_attr_celeba.txt              the photo count; the 40 attribute names; then per photo
                                      its file name and 40 values, 1 or -1
    list_eval_partition.txt           per photo its file name and 0 train, 1 validation, 2 test

The factors are the chosen attributes (``data.attributes``), each binary: value 0 is the
attribute's -1, value 1 its 1. The default is CausalVAE's four concepts: gender, smile, eyes
and mouth open, with its DAG (gender and smile cause the eyes, smile causes the mouth) as the
known graph for ``scm`` and SHD. CelebA labels no "eyes open"; ``Narrow_Eyes`` is the nearest.
The official split: train photos are split 0, test photos split 1; validation photos are left
out (nothing here selects models on them). Photos listed but missing from ``img_align_celeba/``
are skipped, so a user's subset or filtered copy loads, pairs drawn among what is there.

Real photos have no one-attribute neighbours: a pair is two photos whose chosen attributes
differ in exactly one (:mod:`vqcausal.data.photos`, as the official CT-VAE code pairs CelebA),
so x' is a different person with other hair, pose and background. Counterfactual PSNR against
x' then measures closeness to a stranger; atomicity (an oracle reading the attributes) is what
counts. Photos are centre-cropped to 148 x 148 (the face; CT-VAE's CelebA transform) and
resized to ``data.image_size`` (default 64).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.photos import PhotoSource
from vqcausal.data.source import resized
from vqcausal.errors import DataError

IMAGES, ATTRIBUTES, PARTITION = (
    "img_align_celeba",
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
)
DEFAULT_ATTRIBUTES = ("Male", "Smiling", "Narrow_Eyes", "Mouth_Slightly_Open")
#: CausalVAE's CelebA graph over the default attributes (cause, effect)
KNOWN_EDGES = (
    ("Male", "Narrow_Eyes"),
    ("Smiling", "Narrow_Eyes"),
    ("Smiling", "Mouth_Slightly_Open"),
)
CROP, DEFAULT_SIZE = 148, 64
PARTITIONS = {"0": 0, "2": 1}  # official train -> split 0, test -> split 1; "1" (valid) left out


def _lines(path: Path):
    """The lines of a text file, one clear error for a missing or non-text file."""
    try:
        with open(path, encoding="ascii") as fh:
            yield from fh
    except FileNotFoundError:
        raise DataError(f"{path}: not found (CelebA needs {ATTRIBUTES} and {PARTITION})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a CelebA text file ({err})") from None


def read_attributes(path: Path, chosen: list[str]) -> tuple[list[str], np.ndarray]:
    """(file names, chosen attribute values as 0/1 uint8 (N, len(chosen))) of the attribute
    file; checks its count line, its names and that every value is 1 or -1."""
    lines = _lines(path)
    try:
        count = int(next(lines).strip())
        names = next(lines).split()
    except (StopIteration, ValueError):
        raise DataError(
            f"{path}: must start with the photo count and the attribute names"
        ) from None
    unknown = [a for a in chosen if a not in names]
    if unknown:
        raise DataError(f"{path}: no attribute {unknown[0]!r}; it has {', '.join(names)}")
    columns = [1 + names.index(a) for a in chosen]
    files, values = [], np.empty((count, len(chosen)), np.uint8)
    signs = {"1", "-1"}
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts:
            continue
        if i >= count:
            raise DataError(f"{path}: more photos than the {count} its first line says")
        if len(parts) != len(names) + 1 or not signs.issuperset(parts[1:]):
            raise DataError(
                f"{path}: line {i + 3} must be a file name and {len(names)} values of 1 or -1"
            )
        files.append(parts[0])
        values[len(files) - 1] = [parts[c] == "1" for c in columns]
    if len(files) != count:
        raise DataError(f"{path}: {len(files)} photos, its first line says {count} (truncated?)")
    return files, values


def read_partition(path: Path) -> dict[str, str]:
    """File name -> official partition ("0", "1" or "2")."""
    out = {}
    for i, line in enumerate(_lines(path)):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i + 1} must be a file name and 0, 1 or 2")
        out[parts[0]] = parts[1]
    return out


class CelebAFolder(PhotoSource):
    """The CelebA files in a folder; the chosen binary attributes are the factors."""

    name = "celeba"

    def __init__(
        self,
        root: str | os.PathLike[str],
        attributes: list[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        root = Path(root)
        if (root / "celeba").is_dir():
            root = root / "celeba"
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (CelebA is a folder with {IMAGES}/)")
        self.root, self.image_size = root, image_size or DEFAULT_SIZE
        chosen = list(attributes or DEFAULT_ATTRIBUTES)
        if len(set(chosen)) != len(chosen):
            raise DataError(f"celeba: data.attributes names one twice: {chosen}")
        self.attributes = chosen
        images = root / IMAGES
        if not images.is_dir():
            raise DataError(f"{root}: no {IMAGES}/ folder of photos")
        files, values = read_attributes(root / ATTRIBUTES, chosen)
        partition = read_partition(root / PARTITION)
        present = set(os.listdir(images))
        keep, split = [], []
        for i, f in enumerate(files):
            if f not in partition:
                raise DataError(f"{root / PARTITION}: no partition for {f}")
            if f in present and partition[f] in PARTITIONS:
                keep.append(i)
                split.append(PARTITIONS[partition[f]])
        if not keep:
            raise DataError(f"{images}: none of the train or test photos the lists name is there")
        self.files = np.array(files)[keep]
        self.left_out = {
            "validation": sum(p == "1" for p in partition.values()),
            "missing": len(files) - sum(f in present for f in files),
        }
        self.image_shape = (3, self.image_size, self.image_size)
        space = FactorSpace([Factor(a, 2) for a in chosen])
        super().__init__(space, torch.from_numpy(values[keep]).long(), torch.tensor(split))

    @property
    def true_dag(self) -> torch.Tensor | None:
        """CausalVAE's graph, when the attributes are its four (in any order)."""
        if set(self.attributes) != set(DEFAULT_ATTRIBUTES):
            return None
        dag = torch.zeros(len(self.attributes), len(self.attributes))
        for cause, effect in KNOWN_EDGES:
            dag[self.attributes.index(cause), self.attributes.index(effect)] = 1
        return dag

    def _photo(self, row: int) -> np.ndarray:
        """Photo ``row``'s centre 148 x 148 crop, (H, W, 3) uint8."""
        from PIL import Image, UnidentifiedImageError

        path = self.root / IMAGES / str(self.files[row])
        try:
            with Image.open(path) as image:
                w, h = image.size
                if min(h, w) < CROP:
                    raise DataError(f"{path}: {w} x {h} photo; CelebA's aligned are 178 x 218")
                top, left = (h - CROP) // 2, (w - CROP) // 2
                crop = image.convert("RGB").crop((left, top, left + CROP, top + CROP))
                return np.asarray(crop)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{path}: not a readable photo ({err})") from None

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        crops = np.stack([self._photo(r) for r in rows.tolist()])
        return resized(torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(), self.image_size)

    def describe(self) -> dict:
        return {**super().describe(), "left_out": self.left_out}

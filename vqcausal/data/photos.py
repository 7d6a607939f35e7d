"""Photo collections: many images per factor vector, no image *of* a factor vector.

A renderer or a factor grid (Shapes3D, SmallNORB, ...) has one image per factor vector, and
x' of a pair is the same scene with one factor moved. Labelled photographs (CelebA) have
thousands of photos per attribute vector and no photo of *this* person with one attribute
changed, so a pair is two photos whose labels differ in exactly one factor (what the official
CT-VAE code does for CelebA): x' is a different person as well. Each photo has its own split,
and a pair's two photos are drawn from the same split.

:class:`PhotoSource` keeps the photos' factor vectors and splits and draws photos of given
vectors; the transition sampler draws pairs of photo *rows*, so the pair's images are the
photos it drew. ``render(values)`` (used where a metric asks for "an image with these factors",
e.g. disentanglement scores) draws a photo of each vector from a seeded stream: reproducible
from run to run, different from call to call.

:class:`UnlabelledFactors` turns any one-image-per-vector source into such a collection by
dropping the labels of some factors (``data.unlabelled``): a pair then differs in one labelled
factor and in any of the unlabelled ones, as two CelebA photos differ in identity. On data
with full ground truth this measures what photo-style pairing does to every metric.
"""

from __future__ import annotations

import copy
from abc import abstractmethod

import torch

from vqcausal.data.factors import FactorSpace
from vqcausal.data.source import GroundTruthSource
from vqcausal.errors import DataError


class _Groups:
    """Rows grouped by an integer key; draws a random row of each asked-for key."""

    def __init__(self, keys: torch.Tensor) -> None:
        sorted_keys, self.order = torch.sort(keys, stable=True)
        self.keys, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def _locate(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(group position of each key, whether that group has the key)."""
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return pos, self.keys[pos] == keys

    def count(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows with each key (0 where none)."""
        pos, found = self._locate(keys)
        return torch.where(found, self.counts[pos], torch.zeros_like(keys))

    def draw(self, keys: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A uniformly drawn row of each key, -1 where no row has it."""
        pos, found = self._locate(keys)
        unit = torch.rand(keys.shape, generator=generator, dtype=torch.float64)
        offset = unit * self.counts[pos]
        row = self.order[self.starts[pos] + offset.long().clamp(max=self.counts[pos] - 1)]
        return torch.where(found, row, torch.full_like(row, -1))


class PhotoSource(GroundTruthSource):
    """Labelled photos: subclasses set ``name`` and ``image_shape``, call ``__init__`` with the
    photos' factor vectors and splits (0 train, 1 test) and implement :meth:`load_rows`.

    A collection without a split of its own (``photo_split=None``) implements
    :meth:`split_keys`; the transition sampler then splits it by its seeded hash."""

    unique_images = False

    def __init__(
        self, space: FactorSpace, photo_values: torch.Tensor, photo_split: torch.Tensor | None
    ) -> None:
        self.space = space
        self.photo_values = space.check_values(photo_values)
        if len(self.photo_values) == 0:
            raise DataError(f"{self.name}: no photos")
        self._flat = space.ravel(self.photo_values)
        self._any = _Groups(self._flat)
        self._stream = torch.Generator().manual_seed(0)
        self.split_given = photo_split is not None
        self._set_split(
            torch.zeros(len(self._flat), dtype=torch.long) if photo_split is None else photo_split
        )

    def with_split(self, photo_split: torch.Tensor) -> PhotoSource:
        """The same photos with each one's split (0 train, 1 test) set; ``self`` keeps its own, so
        two samplers with other seeds or test fractions can share one collection."""
        view = copy.copy(self)
        view._set_split(photo_split)
        return view

    def _set_split(self, photo_split: torch.Tensor) -> None:
        self.photo_split = photo_split.long()
        if len(self.photo_split) != len(self.photo_values) or not bool(
            ((self.photo_split == 0) | (self.photo_split == 1)).all()
        ):
            raise DataError(f"{self.name}: each photo needs a split, 0 (train) or 1 (test)")
        self._by_split = _Groups(self._flat * 2 + self.photo_split)

    def split_keys(self) -> torch.Tensor:
        """An integer per photo for the sampler's split hash (collections without a split)."""
        raise NotImplementedError(f"{self.name} comes with its own split")

    @abstractmethod
    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) uint8 of photo rows (any order, repeats allowed)."""

    def photos_of(
        self, values: torch.Tensor, split: int | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A random photo row with each factor vector (of ``split`` when given), -1 if none."""
        flat = self.space.ravel(values)
        if split is None:
            return self._any.draw(flat, generator)
        return self._by_split.draw(flat * 2 + split, generator)

    def photo_counts(self, values: torch.Tensor, split: int) -> torch.Tensor:
        """How many photos of ``split`` have each factor vector."""
        return self._by_split.count(self.space.ravel(values) * 2 + split)

    def split_rows(self, split: int | None) -> torch.Tensor:
        """Every photo row of a split (None: all)."""
        if split is None:
            return torch.arange(len(self.photo_values))
        return (self.photo_split == split).nonzero().squeeze(1)

    def render(self, values: torch.Tensor) -> torch.Tensor:
        rows = self.photos_of(self.space.check_values(values), None, self._stream)
        if (rows < 0).any():
            missing = values[rows < 0][0].tolist()
            raise DataError(f"{self.name}: no photo has factor values {missing}")
        return self.load_rows(rows)

    def stored_values(self) -> torch.Tensor:
        """The distinct factor vectors of the photos (sorted by grid index)."""
        return self.space.unravel(self._any.keys)

    def describe(self) -> dict:
        info = super().describe()
        info["photos"] = len(self.photo_values)
        return info


class UnlabelledFactors(PhotoSource):
    """A one-image-per-vector source whose ``hidden`` factors lose their labels.

    Every image of the base (every grid point, or every stored image) is a "photo" labelled
    with the remaining factors; the split is the base's own (a folder's) or the sampler's hash
    of the full grid point, so the images of each split are the base's.
    """

    def __init__(self, base: GroundTruthSource, hidden: list[str]) -> None:
        names = base.space.names
        unknown = [h for h in hidden if h not in names]
        if unknown:
            raise DataError(
                f"data.unlabelled: {base.name} has no factor {unknown[0]!r} ({', '.join(names)})"
            )
        keep = [k for k, n in enumerate(names) if n not in hidden]
        if not keep:
            raise DataError("data.unlabelled: at least one factor must keep its labels")
        if not base.unique_images:
            raise DataError(f"data.unlabelled: {base.name} is already a photo collection")
        self.name, self.image_shape = base.name, base.image_shape
        self.base, self.hidden = base, hidden
        stored = base.stored_values()
        if stored is None:
            stored = base.space.unravel(torch.arange(base.space.num_values))
        self.grid_values = stored
        space = FactorSpace([base.space.factors[k] for k in keep])
        given = base.stored_split()
        super().__init__(space, stored[:, keep], None if given is None else given.long())

    def split_keys(self) -> torch.Tensor:
        return self.base.space.ravel(self.grid_values)

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.base.render(self.grid_values[rows])

    def describe(self) -> dict:
        return {**super().describe(), "unlabelled": list(self.hidden)}

"""Rendering and encoding for the evaluation, at most once per grid point on factor grids
small enough to hold in memory (the toy scene, the pendulum), however often the metrics ask."""

from __future__ import annotations

import math

import torch

from vqcausal.data.source import GroundTruthSource
from vqcausal.eval.pairs import chunks, encode_images
from vqcausal.models.base import CausalImageModel

IMAGE_CACHE_BYTES = 512 * 2**20
REPRESENTATION_CACHE_ELEMENTS = 32 * 2**20


class ImageCache:
    """``source.render`` remembering every image of a grid small enough to hold in memory."""

    def __init__(self, source: GroundTruthSource, max_bytes: int = IMAGE_CACHE_BYTES) -> None:
        self.source = source
        self.space = source.space
        per_image = math.prod(source.image_shape)
        self.images: torch.Tensor | None = None
        # a photo collection draws a different photo each time: nothing to remember
        if source.unique_images and self.space.num_values * per_image <= max_bytes:
            self.images = torch.empty(
                (self.space.num_values, *source.image_shape), dtype=torch.uint8
            )
            self.have = torch.zeros(self.space.num_values, dtype=torch.bool)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        values = values.long().cpu()
        if self.images is None:
            return self.source.render(values)
        index = self.space.ravel(values)
        missing = index[~self.have[index]].unique()
        if missing.numel():
            self.images[missing] = self.source.render(self.space.unravel(missing))
            self.have[missing] = True
        return self.images[index]


class Representation:
    """represent(values) = encode(render(values)) flattened, memoised per grid point.

    The memo (one row per grid point) is kept when it has at most
    ``REPRESENTATION_CACHE_ELEMENTS`` entries; larger grids are encoded on every call.
    """

    def __init__(self, model: CausalImageModel, render: ImageCache) -> None:
        self.model, self.render, self.space = model, render, render.space
        self.table: torch.Tensor | None = None
        self.have: torch.Tensor | None = None
        self.sized = False

    def _encode(self, values: torch.Tensor) -> torch.Tensor:
        return encode_images(self.model, self.render(values)).flatten(1)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(values).long()
        if not self.sized:
            self.sized = True
            first = self._encode(values[:1])
            small = self.space.num_values * first.shape[1] <= REPRESENTATION_CACHE_ELEMENTS
            if small and self.render.source.unique_images:
                shape = (self.space.num_values, first.shape[1])
                self.table = torch.empty(shape, dtype=first.dtype)
                self.have = torch.zeros(self.space.num_values, dtype=torch.bool)
        if self.table is None or self.have is None:
            return self._encode(values)
        index = self.space.ravel(values)
        missing = index[~self.have[index]].unique()
        for part in chunks(len(missing), 1024):
            rows = missing[part]
            self.table[rows] = self._encode(self.space.unravel(rows))
            self.have[rows] = True
        return self.table[index]

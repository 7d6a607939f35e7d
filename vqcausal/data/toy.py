"""A two-factor 16x16 scene for tests and smoke runs: a coloured bar at a position.

Tiny on purpose: a model learns its transitions in well under a minute on a CPU, so tests
can check that learning works without a real dataset. The bar moves two pixels (half a
code cell) per step and the hue wheel has 12 steps: 96 images, enough that held-out images
are new combinations of things seen in training.
"""

from __future__ import annotations

import torch
from einops import rearrange

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource

TOY_SIZE = 16
BAR_WIDTH = 2
TOY_SPACE = FactorSpace([Factor("position", TOY_SIZE // BAR_WIDTH), Factor("hue", 12, cyclic=True)])


def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """(B,) hues in [0, 1) -> (B, 3) fully saturated RGB in [0, 1]."""
    k = (hue[:, None] * 6 + torch.tensor([5.0, 3.0, 1.0])) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


class ToyRenderer(GroundTruthSource):
    """A 2-px wide vertical bar on a dark background; ``position`` moves it, ``hue`` colours it."""

    name = "toy"
    space = TOY_SPACE
    image_shape = (3, TOY_SIZE, TOY_SIZE)

    def render(self, values: torch.Tensor) -> torch.Tensor:
        values = self.space.check_values(values)
        columns = torch.arange(TOY_SIZE)
        left = BAR_WIDTH * values[:, 0:1]
        bar = ((columns >= left) & (columns < left + BAR_WIDTH)).float()  # (B, W)
        rows = torch.zeros(TOY_SIZE)
        rows[3:13] = 1.0
        mask = rows[None, :, None] * bar[:, None, :]  # (B, H, W)
        rgb = hue_to_rgb(values[:, 1].float() / self.space.sizes[1])
        image = 0.1 + 0.9 * mask[:, None] * rearrange(rgb, "b c -> b c 1 1")
        return (image * 255).round().to(torch.uint8)

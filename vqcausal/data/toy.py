"""A two-factor 16x16 scene for tests and smoke runs: a coloured bar at a position.

Tiny on purpose: a model learns its transitions in seconds on a CPU, so tests can check
that learning works without a real dataset.
"""

from __future__ import annotations

import torch
from einops import rearrange

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource

TOY_SPACE = FactorSpace([Factor("position", 8), Factor("hue", 6, cyclic=True)])


def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """(B,) hues in [0, 1) -> (B, 3) fully saturated RGB in [0, 1]."""
    k = (hue[:, None] * 6 + torch.tensor([5.0, 3.0, 1.0])) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


class ToyRenderer(GroundTruthSource):
    """A 2-px wide vertical bar; ``position`` moves it, ``hue`` colours it."""

    name = "toy"
    space = TOY_SPACE
    image_shape = (3, 16, 16)

    def render(self, values: torch.Tensor) -> torch.Tensor:
        values = self.space.check_values(values)
        columns = torch.arange(16)
        left = 2 * values[:, 0:1]
        bar = ((columns >= left) & (columns < left + 2)).float()  # (B, W)
        rows = torch.zeros(16)
        rows[3:13] = 1.0
        mask = rows[None, :, None] * bar[:, None, :]  # (B, H, W)
        rgb = hue_to_rgb(values[:, 1].float() / self.space.sizes[1])
        image = 0.1 + 0.9 * mask[:, None] * rearrange(rgb, "b c -> b c 1 1")
        return (image * 255).round().to(torch.uint8)

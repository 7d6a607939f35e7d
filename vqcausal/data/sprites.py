"""Procedural dSprites: a white square, ellipse or heart on black, on the dSprites grid.

Shapes are rasterised from signed distances with a one-pixel linear ramp (antialiasing).
Per-row parameters come from lookup tables computed once in Python double precision and
per-pixel work uses only exactly rounded float32 ops (+, *, /, sqrt, min/max), so a factor
vector gives the same bytes whatever batch it is rendered in.

Unlike dSprites, whose 40 orientations run 0..2pi *inclusive* (first and last identical),
orientation here is cyclic with step 2pi/40, so every one-step move changes the angle. The
square (4-fold) and ellipse (2-fold) symmetries still make some orientations look the same.
"""

from __future__ import annotations

import math

import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource
from vqcausal.errors import DataError

SPRITES_SPACE = FactorSpace(
    [
        Factor("shape", 3),
        Factor("scale", 6),
        Factor("orientation", 40, cyclic=True),
        Factor("pos_x", 32),
        Factor("pos_y", 32),
    ]
)
SHAPE_NAMES = ("square", "ellipse", "heart")
SYMMETRY = (4, 2, 1)  # rotational symmetry order of each shape

SCALES = [0.5 + 0.5 * i / 5 for i in range(6)]  # 0.5..1 like dSprites
POS_RANGE = (0.125, 0.875)  # centre positions, in image units
_RADIUS = 7 / 64  # circumscribed radius at scale 1, in image units: antialiased edge stays inside
_HEART_C, _HEART_R = 0.63, 0.63  # centre and circumscribed radius of the unit heart below


def _sd_box(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Square inscribed in the unit circle (half side 1/sqrt 2)."""
    h = math.sqrt(0.5)
    qu, qv = u.abs() - h, v.abs() - h
    outside = (qu.clamp(min=0) ** 2 + qv.clamp(min=0) ** 2).sqrt()
    return outside + torch.maximum(qu, qv).clamp(max=0)


def _sd_ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ellipse with semi-axes 1 and 0.5; first-order distance f / |grad f| near the edge."""
    a2, b2 = 1.0, 0.25
    f = u * u / a2 + v * v / b2 - 1
    grad = ((u / a2) ** 2 + (v / b2) ** 2).sqrt() * 2
    return f / grad  # -inf at the centre, which only means "fully inside"


def _sd_heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Heart inside the unit circle, lobes up (Inigo Quilez's exact heart distance)."""
    x = u.abs() * _HEART_R
    y = v * _HEART_R + _HEART_C  # tip at y = 0, lobes reach y ~ 1.1
    lobe = ((x - 0.25) ** 2 + (y - 0.75) ** 2).sqrt() - math.sqrt(2) / 4
    m = (x + y).clamp(min=0) * 0.5
    point = torch.minimum(x * x + (y - 1) ** 2, (x - m) ** 2 + (y - m) ** 2).sqrt()
    body = torch.where(x > y, point, -point)
    return torch.where(x + y > 1, lobe, body) / _HEART_R


_SDFS = (_sd_box, _sd_ellipse, _sd_heart)


class SpritesRenderer(GroundTruthSource):
    """dSprites-like images on the full 3x6x40x32x32 grid, drawn on the fly."""

    name = "sprites"
    space = SPRITES_SPACE

    def __init__(self, channels: int = 1, size: int = 64) -> None:
        if channels not in (1, 3):
            raise DataError(f"sprites: channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.image_shape = (channels, size, size)
        centres = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres, in pixels
        self._grid = centres
        lo, hi = POS_RANGE
        n_pos = SPRITES_SPACE.sizes[3]
        self._pos = torch.tensor([size * (lo + (hi - lo) * i / (n_pos - 1)) for i in range(n_pos)])
        self._radius = torch.tensor([size * _RADIUS * s for s in SCALES])
        n_rot = SPRITES_SPACE.sizes[2]
        angles = [2 * math.pi * i / n_rot for i in range(n_rot)]
        self._cos = torch.tensor([math.cos(a) for a in angles])
        self._sin = torch.tensor([math.sin(a) for a in angles])

    def render(self, values: torch.Tensor) -> torch.Tensor:
        values = self.space.check_values(values)
        dev = values.device
        shape, scale, rot, px, py = values.unbind(1)
        # (B, 1, 1) per-row parameters, in pixels
        pos, radius, grid = self._pos.to(dev), self._radius.to(dev), self._grid.to(dev)
        cx, cy = pos[px].view(-1, 1, 1), pos[py].view(-1, 1, 1)
        r = radius[scale].view(-1, 1, 1)
        c, s = self._cos.to(dev)[rot].view(-1, 1, 1), self._sin.to(dev)[rot].view(-1, 1, 1)
        dx = (grid.view(1, 1, -1) - cx) / r
        dy = (cy - grid.view(1, -1, 1)) / r  # image rows go down, the shapes' y goes up
        # sample points turned by -angle, i.e. the shape turned counter-clockwise by +angle
        u, v = c * dx + s * dy, c * dy - s * dx
        ink = torch.zeros_like(u)
        for k, sdf in enumerate(_SDFS):  # one pass per shape type, never per image
            rows = (shape == k).nonzero().squeeze(1)
            if rows.numel():
                dist = sdf(u[rows], v[rows]) * r[rows]  # in pixels
                ink[rows] = (0.5 - dist).clamp(0, 1)
        img = (ink * 255).round_().to(torch.uint8).unsqueeze(1)
        return img.expand(-1, self.channels, -1, -1).contiguous()

"""CausalVAE's pendulum, rendered procedurally.

The scene of Yang et al. (CausalVAE, CVPR 2021): a pendulum hangs from a pivot, a sun shines
from above and the pendulum casts a shadow on the ground. The pendulum angle and the light
angle are the causes; the shadow's length and position are their effects. The geometry is
the CausalVAE generator's, number for number, and the raster emulates what its matplotlib
script drew (a 1-inch figure saved at ``dpi = image_size``, default subplot margins, 3 pt
rods, 1 pt circle outlines, pixel snapping of axis-aligned strokes, clipping to the axes),
so stride-1 renders line up with the published PNGs up to antialiasing.
"""

from __future__ import annotations

import math

import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource
from vqcausal.errors import DataError

# ---- the CausalVAE index grid -----------------------------------------------------------
#: Pendulum indices i: theta = i * pi / 200 (-36 deg .. 38.7 deg).
PENDULUM_INDICES: tuple[int, ...] = tuple(range(-40, 44))
#: Light indices j: phi = j * pi / 200 (54 deg .. 132.3 deg); j = 100 (vertical light, where
#: tan(phi) is infinite) is skipped by the generator.
LIGHT_INDICES: tuple[int, ...] = tuple(j for j in range(60, 148) if j != 100)
#: Radians per index step.
ANGLE_STEP = math.pi / 200.0

# ---- world geometry (data coordinates of the generator's axes) ---------------------------
X_LIM = (0.0, 20.0)
Y_LIM = (-1.0, 21.0)
PIVOT = (10.0, 10.5)
ROD_LENGTH = 8.0
BALL_RADIUS = 1.5
TIP_DISTANCE = 9.5  # pivot to the far side of the ball: the shadow's second ray
SUN_RADIUS = 3.0
SUN_HEIGHT = 20.5
GROUND = -0.5

# ---- matplotlib's raster conventions -------------------------------------------------------
#: Default subplot box (left, right, bottom, top) in figure fractions: the generator never
#: changed it, so the scene fills only this box and the rest of the image stays white.
AXES_BOX = (0.125, 0.9, 0.11, 0.88)
ROD_WIDTH_PT = 3.0  # rod and shadow linewidth
OUTLINE_WIDTH_PT = 1.0  # default patch edge around ball and sun
BLACK = (0.0, 0.0, 0.0)
FIREBRICK = (178.0, 34.0, 34.0)
ORANGE = (255.0, 165.0, 0.0)

RENDER_CHUNK = 32  # images per vectorised pass: keeps the float buffers in cache

CONCEPT_NAMES = ["pendulum_angle", "light_angle", "shadow_length", "shadow_position"]


# ---- geometry: vectorised, float64 so that concepts match the generator's numbers ----------
def projection(
    x: torch.Tensor, y: torch.Tensor, phi: torch.Tensor, base: float = GROUND
) -> torch.Tensor:
    """x where the light ray through (x, y) at angle phi meets the line y = base."""
    tan = torch.tan(phi)
    return (base - (y - x * tan)) / tan


def ball_centre(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World position of the ball's centre (the rod's end)."""
    return PIVOT[0] + ROD_LENGTH * torch.sin(theta), PIVOT[1] - ROD_LENGTH * torch.cos(theta)


def sun_x(phi: torch.Tensor) -> torch.Tensor:
    """The sun sits on the light ray through the pivot, at height SUN_HEIGHT."""
    return projection(
        torch.full_like(phi, PIVOT[0]), torch.full_like(phi, PIVOT[1]), phi, SUN_HEIGHT
    )


def shadow_geometry(theta: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shade, mid): shadow length and centre on the ground, exactly as CausalVAE computes them.

    The rays through the pivot and through the ball's far side hit the ground at two points;
    the shadow is centred between them and at least 3 units long.
    """
    theta, phi = torch.broadcast_tensors(torch.as_tensor(theta), torch.as_tensor(phi))
    tip_x = PIVOT[0] + TIP_DISTANCE * torch.sin(theta)
    tip_y = PIVOT[1] - TIP_DISTANCE * torch.cos(theta)
    from_pivot = projection(torch.full_like(phi, PIVOT[0]), torch.full_like(phi, PIVOT[1]), phi)
    from_tip = projection(tip_x, tip_y, phi)
    mid = (from_pivot + from_tip) / 2
    shade = torch.clamp((from_pivot - from_tip).abs(), min=3.0)
    return shade, mid


# ---- grid values <-> CausalVAE indices -----------------------------------------------------
def grid_sizes(stride: int) -> tuple[int, int]:
    """Number of pendulum and light values when keeping every stride-th index."""
    return math.ceil(len(PENDULUM_INDICES) / stride), math.ceil(len(LIGHT_INDICES) / stride)


def checked_grid_sizes(stride: int) -> tuple[int, int]:
    """:func:`grid_sizes` of a stride that leaves at least two values of each angle."""
    n_i, n_j = grid_sizes(stride) if stride >= 1 else (0, 0)
    if stride < 1 or min(n_i, n_j) < 2:
        raise DataError(f"pendulum: stride must be in 1..83, got {stride}")
    return n_i, n_j


def values_to_indices(values: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """CausalVAE indices (i, j) of factor values (B, 2) on the stride grid."""
    values = values.long()
    i_table = torch.tensor(PENDULUM_INDICES, dtype=torch.long, device=values.device)
    j_table = torch.tensor(LIGHT_INDICES, dtype=torch.long, device=values.device)
    return i_table[values[:, 0] * stride], j_table[values[:, 1] * stride]


def indices_to_values(i: torch.Tensor, j: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Factor values (B, 2) of CausalVAE indices; a DataError if one is off the stride grid."""
    i, j = torch.as_tensor(i).long().contiguous(), torch.as_tensor(j).long().contiguous()
    i_rank = i - PENDULUM_INDICES[0]
    j_rank = torch.searchsorted(torch.tensor(LIGHT_INDICES, device=j.device), j)
    j_ok = (j_rank < len(LIGHT_INDICES)) & (
        torch.tensor(LIGHT_INDICES, device=j.device)[j_rank.clamp(max=len(LIGHT_INDICES) - 1)] == j
    )
    ok = (i_rank >= 0) & (i_rank < len(PENDULUM_INDICES)) & j_ok
    ok &= (i_rank % stride == 0) & (j_rank % stride == 0)
    if not ok.all():
        bad = int((~ok).nonzero()[0, 0])
        raise DataError(
            f"pendulum: indices (i={int(i[bad])}, j={int(j[bad])}) are not on the grid "
            f"(i in -40..43, j in 60..147 without 100, stride {stride})"
        )
    return torch.stack([i_rank // stride, j_rank // stride], dim=1)


def index_angles(i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta, phi) in radians, float64, of CausalVAE indices."""
    return i.double() * ANGLE_STEP, j.double() * ANGLE_STEP


# ---- rasterisation -------------------------------------------------------------------------
def _round_half_up(x: torch.Tensor | float) -> torch.Tensor | float:
    """Agg's snapping rounds with floor(x + 0.5)."""
    return torch.floor(x + 0.5) if isinstance(x, torch.Tensor) else math.floor(x + 0.5)


def _box(lo: torch.Tensor, hi: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Exact 1-D coverage of the pixel [centre - 0.5, centre + 0.5] by the interval [lo, hi]."""
    return (torch.minimum(hi, centre + 0.5) - torch.maximum(lo, centre - 0.5)).clamp(0.0, 1.0)


def _ellipse(
    u: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    cv: torch.Tensor,
    a: float,
    b: float,
    grow: float,
) -> torch.Tensor:
    """Antialiased coverage of an axis-aligned ellipse grown by ``grow`` px (its outline).

    Signed distance by the first-order estimate f / |grad f|, accurate to a small fraction
    of a pixel near the boundary, which is all antialiasing needs.
    """
    du, dv = u - cu, v - cv
    k0 = torch.sqrt((du / a) ** 2 + (dv / b) ** 2)
    k1 = torch.sqrt((du / (a * a)) ** 2 + (dv / (b * b)) ** 2).clamp_min(1e-6)
    dist = k0 * (k0 - 1.0) / k1
    return (0.5 + grow - dist).clamp(0.0, 1.0)


class PendulumRenderer(GroundTruthSource):
    """CausalVAE's pendulum scene on a grid of pendulum and light angles.

    ``stride`` keeps every stride-th value of the CausalVAE index grid (84 pendulum x 87
    light values at stride 1). One CausalVAE step is 0.9 degrees: the ball moves under half
    a pixel at 96 px, only antialiased edges change, and the shadow (snapped to whole pixels)
    moves in under half of the pendulum steps, so an action's effect is barely visible. The
    default stride 3 (2.7 degrees, 28 x 29 values over the same ranges) changes about three
    times as many pixels per step and moves the shadow in over 99% of steps.
    """

    name = "pendulum"

    def __init__(self, image_size: int = 96, stride: int = 3) -> None:
        if image_size < 16:
            raise DataError(f"pendulum: image_size must be at least 16, got {image_size}")
        n_i, n_j = checked_grid_sizes(stride)
        self.image_size = int(image_size)
        self.stride = int(stride)
        self.space = FactorSpace([Factor("pendulum_angle", n_i), Factor("light_angle", n_j)])
        self.image_shape = (3, self.image_size, self.image_size)
        self._setup_canvas()

    # ---- canvas: the generator's figure at dpi = image_size --------------------------------
    def _setup_canvas(self) -> None:
        size = self.image_size
        left, right, bottom, top = (f * size for f in AXES_BOX)
        self._sx = (right - left) / (X_LIM[1] - X_LIM[0])
        self._sy = (top - bottom) / (Y_LIM[1] - Y_LIM[0])
        self._left, self._bottom = left, bottom
        px_per_pt = size / 72.0
        self._line_width = ROD_WIDTH_PT * px_per_pt
        self._outline = OUTLINE_WIDTH_PT * px_per_pt / 2  # half the outline lies outside
        # Agg snaps axis-aligned strokes to pixel edges (even widths) or centres (odd widths).
        self._snap = 0.5 if int(_round_half_up(self._line_width)) % 2 else 0.0
        # The axes clip box, rounded to whole pixels as matplotlib hands it to Agg.
        self._clip_cols = (int(_round_half_up(left)), int(_round_half_up(right)))
        self._clip_rows = (int(_round_half_up(size - top)), int(_round_half_up(size - bottom)))
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        self._u = centres.view(1, 1, size)  # columns
        self._v = centres.view(1, size, 1)  # rows, downwards
        col_in = (centres >= self._clip_cols[0]) & (centres < self._clip_cols[1])
        row_in = (centres >= self._clip_rows[0]) & (centres < self._clip_rows[1])
        self._clip = (row_in.view(size, 1) & col_in.view(1, size)).float()

        # Each shape stays in a fixed band of rows over the whole grid: draw it there only.
        def row_of(y: float) -> float:
            return size - (bottom + (y - Y_LIM[0]) * self._sy)

        pad = self._line_width / 2 + self._outline + 1
        r0, r1 = self._clip_rows
        sun_low = row_of(SUN_HEIGHT - SUN_RADIUS) + pad
        self._sun_rows = slice(r0, max(r0, min(r1, math.ceil(sun_low))))
        ball_low = row_of(PIVOT[1] - ROD_LENGTH - BALL_RADIUS) + pad
        pivot = row_of(PIVOT[1]) - pad
        self._pendulum_rows = slice(max(r0, math.floor(pivot)), min(r1, math.ceil(ball_low)))
        ground = self._snapped(torch.tensor(row_of(GROUND)))
        shadow_top, shadow_low = float(ground) - pad, float(ground) + pad
        self._shadow_rows = slice(max(r0, math.floor(shadow_top)), min(r1, math.ceil(shadow_low)))

    def _to_canvas(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World (x, y) -> Agg pixel coordinates (u right, v down), float32."""
        u = self._left + (x - X_LIM[0]) * self._sx
        v = self.image_size - (self._bottom + (y - Y_LIM[0]) * self._sy)
        return u.float(), v.float()

    def _snapped(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x + 0.5) + self._snap

    # ---- shapes: coverage in [0, 1] on a band of rows, (B, rows, S) ------------------------
    def _rod(self, theta: torch.Tensor, rows: slice) -> torch.Tensor:
        """The 3 pt rod from the pivot to the ball centre, flat ends.

        The generator draws it as a closed two-point polygon; Agg's miter-revert join turns
        both 180-degree turns into flat ends, and snaps the vertical rod (theta = 0).
        """
        bx, by = ball_centre(theta)
        pu, pv = self._to_canvas(torch.full_like(bx, PIVOT[0]), torch.full_like(by, PIVOT[1]))
        bu, bv = self._to_canvas(bx, by)
        straight = ((bu - pu).abs() < 1e-4) | ((bv - pv).abs() < 1e-4)
        pu, pv, bu, bv = (torch.where(straight, self._snapped(t), t) for t in (pu, pv, bu, bv))
        length = torch.sqrt((bu - pu) ** 2 + (bv - pv) ** 2).clamp_min(1e-6)
        eu, ev = ((bu - pu) / length).view(-1, 1, 1), ((bv - pv) / length).view(-1, 1, 1)
        du, dv = self._u - pu.view(-1, 1, 1), self._v[:, rows] - pv.view(-1, 1, 1)
        along = du * eu + dv * ev
        across = du * ev - dv * eu
        half = torch.tensor(self._line_width / 2)
        return _box(torch.zeros(()), length.view(-1, 1, 1), along) * _box(-half, half, across)

    def _ball(self, theta: torch.Tensor, rows: slice) -> torch.Tensor:
        bu, bv = self._to_canvas(*ball_centre(theta))
        a, b = BALL_RADIUS * self._sx, BALL_RADIUS * self._sy
        v = self._v[:, rows]
        return _ellipse(self._u, v, bu.view(-1, 1, 1), bv.view(-1, 1, 1), a, b, self._outline)

    def _sun(self, phi: torch.Tensor, rows: slice) -> torch.Tensor:
        """The sun, clipped by the axes (only its lower half shows, as in the dataset)."""
        su, sv = self._to_canvas(sun_x(phi), torch.full_like(phi, SUN_HEIGHT))
        a, b = SUN_RADIUS * self._sx, SUN_RADIUS * self._sy
        v = self._v[:, rows]
        cov = _ellipse(self._u, v, su.view(-1, 1, 1), sv.view(-1, 1, 1), a, b, self._outline)
        return cov * self._clip[rows]

    def _shadow(self, theta: torch.Tensor, phi: torch.Tensor, rows: slice) -> torch.Tensor:
        """The 3 pt horizontal shadow: snapped to whole pixels, clipped, so its box is exact."""
        shade, mid = shadow_geometry(theta, phi)
        lu, v = self._to_canvas(mid - shade / 2, torch.full_like(mid, GROUND))
        ru, _ = self._to_canvas(mid + shade / 2, torch.full_like(mid, GROUND))
        lu, ru, v = self._snapped(lu), self._snapped(ru), self._snapped(v)
        half = self._line_width / 2
        c0, c1 = self._clip_cols
        r0, r1 = self._clip_rows
        across = _box(lu.clamp(min=c0).view(-1, 1, 1), ru.clamp(max=c1).view(-1, 1, 1), self._u)
        top, low = (v - half).clamp(min=r0), (v + half).clamp(max=r1)
        down = _box(top.view(-1, 1, 1), low.view(-1, 1, 1), self._v[:, rows])
        return across * down

    # ---- the source interface ----------------------------------------------------------------
    def indices(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CausalVAE indices (i, j) of factor values."""
        return values_to_indices(self.space.check_values(values), self.stride)

    def render(self, values: torch.Tensor) -> torch.Tensor:
        i, j = self.indices(values)
        return self.render_indices(i.cpu(), j.cpu()).to(values.device)

    def render_indices(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) uint8 for CausalVAE indices, also off this renderer's stride."""
        i, j = torch.as_tensor(i).long().reshape(-1), torch.as_tensor(j).long().reshape(-1)
        size = self.image_size
        out = torch.empty((len(i), 3, size, size), dtype=torch.uint8)
        # Small chunks keep the float work in cache: large batches would be memory-bound.
        for start in range(0, len(i), RENDER_CHUNK):
            part = slice(start, start + RENDER_CHUNK)
            out[part] = self._render_chunk(*index_angles(i[part], j[part]))
        return out

    def _render_chunk(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        image = torch.full((len(theta), 3, size, size), 255.0)

        def paint(cov: torch.Tensor, colour: tuple[float, float, float], rows: slice) -> None:
            """Source-over compositing of one opaque colour, in matplotlib's drawing order."""
            for ch in range(3):
                region = image[:, ch, rows]
                region += (colour[ch] - region) * cov

        paint(self._rod(theta, self._pendulum_rows), BLACK, self._pendulum_rows)
        paint(self._ball(theta, self._pendulum_rows), FIREBRICK, self._pendulum_rows)
        paint(self._sun(phi, self._sun_rows), ORANGE, self._sun_rows)
        paint(self._shadow(theta, phi, self._shadow_rows), BLACK, self._shadow_rows)
        return image.round_().clamp_(0, 255).to(torch.uint8)

    @property
    def concept_names(self) -> list[str]:
        return list(CONCEPT_NAMES)

    def concepts(self, values: torch.Tensor) -> torch.Tensor:
        """(B, 4) float: pendulum and light angle in degrees, shadow length and centre (world)."""
        i, j = self.indices(values)
        return index_concepts(i, j).to(values.device)

    @property
    def true_dag(self) -> torch.Tensor:
        return pendulum_dag()


def index_concepts(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Exact concepts (theta deg, phi deg, shade, mid) of CausalVAE indices, float32 (B, 4)."""
    theta, phi = index_angles(i.cpu(), j.cpu())
    shade, mid = shadow_geometry(theta, phi)
    return torch.stack([torch.rad2deg(theta), torch.rad2deg(phi), shade, mid], dim=1).float()


def pendulum_dag() -> torch.Tensor:
    """Both angles cause both shadow concepts; nothing else is causal."""
    dag = torch.zeros(4, 4)
    dag[0, 2] = dag[0, 3] = dag[1, 2] = dag[1, 3] = 1.0
    return dag

"""Procedural Shapes3D: a ray-cast 2.5-D room with a shaded object, in the 3dshapes.h5 order.

A wall stands behind a floor; an object (cube, cylinder, sphere or capsule) stands on the
floor in the middle and casts a shadow. ``orientation`` orbits the camera about the vertical
axis (-30..30 degrees) like the real dataset, so the wall/floor boundary tilts and the
object turns even when it is rotationally symmetric.

Colour enters linearly (a shade times a saturated hue), so the geometry of every
(shape, scale, orientation) combination is ray-cast once, 4x4 supersampled, into three
per-pixel weights (floor, wall, object); :meth:`Shapes3DRenderer.render` only gathers those
weights and mixes in the three hues, which is exact, deterministic and fast.
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource

SHAPES3D_SPACE = FactorSpace(
    [
        Factor("floor_hue", 10, cyclic=True),
        Factor("wall_hue", 10, cyclic=True),
        Factor("object_hue", 10, cyclic=True),
        Factor("scale", 8),
        Factor("shape", 4),
        Factor("orientation", 15),
    ]
)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")

SCALES = [0.75 + 0.5 * i / 7 for i in range(8)]  # relative object size, like 3dshapes
ORIENTATIONS_DEG = [-30.0 + 60.0 * i / 14 for i in range(15)]

# Scene constants (world units, y up; the object stands at the origin on the floor y = 0).
_WALL_Z = 3.0
_CAM_DIST, _CAM_HEIGHT, _TARGET_HEIGHT, _FOV_DEG = 6.0, 2.8, 0.65, 32.0
_LIGHT = (-0.6, 1.0, -0.8)  # towards the light: upper left, in front of the object
_AMBIENT = 0.3
_EPS = 1e-4
_INF = float("inf")


def _hue_table() -> torch.Tensor:
    """(10, 3) saturated RGB of hues h/10, as in the real dataset."""
    return torch.tensor([colorsys.hsv_to_rgb(h / 10, 1.0, 1.0) for h in range(10)])


Vec = tuple  # (x, y, z): floats or broadcastable tensors, kept apart for speed


def _unit(v: Vec) -> Vec:
    n = math.sqrt(sum(c * c for c in v))
    return (v[0] / n, v[1] / n, v[2] / n)


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Vec, b: Vec):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _at(o: Vec, d: Vec, t: torch.Tensor) -> Vec:
    t = t.clamp(max=1e6)  # misses are inf; keep the arithmetic finite
    return (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])


class _Camera:
    """Pinhole camera orbiting the object by ``theta_deg`` about the vertical axis."""

    def __init__(self, theta_deg: float) -> None:
        th = math.radians(theta_deg)
        self.origin = (-_CAM_DIST * math.sin(th), _CAM_HEIGHT, -_CAM_DIST * math.cos(th))
        o = self.origin
        self.forward = _unit((-o[0], _TARGET_HEIGHT - o[1], -o[2]))
        self.right = _unit(_cross((0.0, 1.0, 0.0), self.forward))
        self.up = _cross(self.forward, self.right)
        self.half = math.tan(math.radians(_FOV_DEG) / 2)

    def rays(self, res: int) -> Vec:
        """Unit directions through the centres of a res x res pixel grid, each (res, res)."""
        coords = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1
        u = (coords * self.half).view(1, res)  # columns go right
        v = (-coords * self.half).view(res, 1)  # rows go down
        d = [self.forward[i] + u * self.right[i] + v * self.up[i] for i in range(3)]
        norm = (d[0] ** 2 + d[1] ** 2 + d[2] ** 2).sqrt()
        return tuple((c / norm).float() for c in d)

    def pixel(self, p: Vec) -> tuple[float, float]:
        """(row, col) in [0, 1] image units of a world point."""
        v = tuple(p[i] - self.origin[i] for i in range(3))
        z = _dot(v, self.forward)
        u, w = _dot(v, self.right) / z / self.half, _dot(v, self.up) / z / self.half
        return (1 - w) / 2, (u + 1) / 2


def _miss(t: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, t, _INF)


def _pick(a: tuple, b: tuple) -> tuple:
    """Nearer of two (t, nx, ny, nz) hits."""
    closer = b[0] < a[0]
    return tuple(torch.where(closer, y, x) for x, y in zip(a, b, strict=True))


def _hit_sphere(o: Vec, d: Vec, c: Vec, r: torch.Tensor, normals: bool) -> tuple:
    """Ray/sphere hit distance t (inf on a miss) and, if asked, the unit normal."""
    oc = (o[0] - c[0], o[1] - c[1], o[2] - c[2])
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - r * r)
    t = -b - disc.clamp(min=0).sqrt()
    t = _miss(t, (disc >= 0) & (t > _EPS))
    if not normals:
        return (t,)
    p = _at(o, d, t)
    return (t, *((p[i] - c[i]) / r for i in range(3)))


def _hit_tube(o: Vec, d: Vec, axis: int, c: Vec, r, lo, hi, normals: bool) -> tuple:
    """Ray vs the side of a finite open cylinder along world ``axis`` (0 = x, 1 = y)."""
    a0, a1 = (1, 2) if axis == 0 else (0, 2)
    oc = (o[0] - c[0], o[1] - c[1], o[2] - c[2])
    qa = d[a0] * d[a0] + d[a1] * d[a1]
    qb = oc[a0] * d[a0] + oc[a1] * d[a1]
    disc = qb * qb - qa * (oc[a0] * oc[a0] + oc[a1] * oc[a1] - r * r)
    t = (-qb - disc.clamp(min=0).sqrt()) / qa.clamp(min=1e-12)
    along = o[axis] + t * d[axis]
    t = _miss(t, (disc >= 0) & (t > _EPS) & (along >= lo) & (along <= hi))
    if not normals:
        return (t,)
    p = _at(oc, d, t)
    n = [p[0] / r, p[1] / r, p[2] / r]
    n[axis] = torch.zeros_like(t)
    return (t, *n)


def _hit_object(shape: int, s: torch.Tensor, o: Vec, d: Vec, normals: bool = True) -> tuple:
    """Nearest hit (t, normal) of object ``shape`` at relative sizes s for rays o + t d."""
    if shape == 0:  # cube of side s, faces parallel to the wall
        lo, hi = (-s / 2, 0.0, -s / 2), (s / 2, s, s / 2)
        near, far = [], []
        for i in range(3):
            inv = 1.0 / torch.where(d[i].abs() < 1e-9, 1e-9, d[i])
            t1, t2 = (lo[i] - o[i]) * inv, (hi[i] - o[i]) * inv
            near.append(torch.minimum(t1, t2))
            far.append(torch.maximum(t1, t2))
        t_near = torch.maximum(torch.maximum(near[0], near[1]), near[2])
        t_far = torch.minimum(torch.minimum(far[0], far[1]), far[2])
        t = _miss(t_near, (t_far >= t_near) & (t_near > _EPS))
        if not normals:
            return (t,)
        return (t, *((near[i] == t_near) * -torch.sign(d[i]) for i in range(3)))
    if shape == 1:  # cylinder: radius s/2, height s, flat top cap
        r = 0.5 * s
        side = _hit_tube(o, d, 1, (0.0, 0.0, 0.0), r, 0.0, s, normals)
        down = d[1] < 0
        t_cap = (s - o[1]) / torch.where(down, d[1], -1e-9)
        p = _at(o, d, t_cap)
        t_cap = _miss(t_cap, down & (t_cap > _EPS) & (p[0] * p[0] + p[2] * p[2] <= r * r))
        if not normals:
            return (torch.minimum(side[0], t_cap),)
        zero = torch.zeros_like(t_cap)
        return _pick(side, (t_cap, zero, zero + 1, zero))
    if shape == 2:  # sphere resting on the floor
        r = 0.55 * s
        return _hit_sphere(o, d, (0.0, r, 0.0), r, normals)
    # capsule lying along x: a tube with two hemispherical ends
    r, half = 0.36 * s, 0.45 * s
    hit = _hit_tube(o, d, 0, (0.0, r, 0.0), r, -half, half, normals)
    for sign in (-1.0, 1.0):
        end = _hit_sphere(o, d, (sign * half, r, 0.0), r, normals)
        hit = _pick(hit, end)
    return hit


def _object_window(cam: _Camera, size: int) -> tuple[int, int, int, int]:
    """Pixel rows/cols (r0, r1, c0, c1) that the largest object or its shadow can reach."""
    s, light = max(SCALES), _unit(_LIGHT)
    reach = 0.9 * s  # capsule half-length plus radius, the widest footprint
    x0, x1, z0, z1 = -reach, reach, -reach, reach
    drop = s / light[1]  # shadow of the top of the object falls this far along -light
    x1, z1 = x1 + drop * abs(light[0]), z1 + drop * abs(light[2])
    corners = [(x, y, z) for x in (x0, x1) for y in (0.0, s) for z in (z0, z1)]
    rows, cols = zip(*(cam.pixel(p) for p in corners), strict=True)
    r0, r1 = math.floor(min(rows) * size) - 1, math.ceil(max(rows) * size) + 1
    c0, c1 = math.floor(min(cols) * size) - 1, math.ceil(max(cols) * size) + 1
    return max(r0, 0), min(r1, size), max(c0, 0), min(c1, size)


def _render_weights(theta_deg: float, size: int, ss: int) -> torch.Tensor:
    """(shape, scale, 3, size, size) antialiased shades of floor, wall and object."""
    cam, res = _Camera(theta_deg), size * ss
    light = tuple(torch.tensor(c) for c in _unit(_LIGHT))
    o, d = cam.origin, cam.rays(res)

    # background: the floor (y = 0) in front of the wall (z = WALL_Z), else the wall
    t_floor = torch.where(d[1] < 0, -o[1] / d[1].clamp(max=-1e-9), _INF)
    t_wall = torch.where(d[2] > 0, (_WALL_Z - o[2]) / d[2].clamp(min=1e-9), _INF)
    floor = t_floor < t_wall
    t_bg = torch.minimum(t_floor, t_wall).clamp(max=1e3)
    p_bg = _at(o, d, t_bg)
    # floor: brighter near the camera (perspective gradient); wall: darker higher up
    floor_shade = torch.where(floor, (1.15 - 0.07 * t_bg).clamp(0.55, 1.0), 0.0)
    wall_shade = torch.where(floor, 0.0, (0.92 - 0.06 * p_bg[1] - 0.015 * p_bg[0]).clamp(0.55, 1))

    # object and its shadow, traced only in the window they can reach, for all scales
    r0, r1, c0, c1 = (k * ss for k in _object_window(cam, size))
    win = (slice(r0, r1), slice(c0, c1))
    d_w, p_w, t_w = tuple(c[win] for c in d), tuple(c[win] for c in p_bg), t_bg[win]
    s = torch.tensor(SCALES).view(-1, 1, 1)
    out = torch.zeros(len(SHAPE_NAMES), len(SCALES), 3, res, res)
    for shape in range(len(SHAPE_NAMES)):
        t_obj, *normal = _hit_object(shape, s, o, d_w)
        obj = t_obj < t_w
        lambert = _dot(normal, light).clamp(min=0)
        (t_shadow,) = _hit_object(shape, s, p_w, light, normals=False)
        lit = torch.where(t_shadow < _INF, 0.55, 1.0)
        out[shape, :, 0] = floor_shade
        out[shape, :, 1] = wall_shade
        out[shape, :, 0, r0:r1, c0:c1] *= lit * ~obj
        out[shape, :, 1, r0:r1, c0:c1] *= ~obj
        out[shape, :, 2, r0:r1, c0:c1] = obj * (_AMBIENT + (1 - _AMBIENT) * lambert)
    return F.avg_pool2d(out.flatten(0, 2), ss).view(len(SHAPE_NAMES), len(SCALES), 3, size, size)


@lru_cache(maxsize=2)
def _weight_table(size: int, supersample: int) -> torch.Tensor:
    """(shape, scale, orientation, 3, size, size) antialiased shade weights, times 255.

    Built on one thread: the many mid-sized ops run ~1 s there but can take 10x longer
    when intra-op threads compete with other busy processes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = [_render_weights(th, size, supersample) for th in ORIENTATIONS_DEG]
    finally:
        torch.set_num_threads(threads)
    return (torch.stack(table, 2) * 255.0).contiguous()


class Shapes3DRenderer(GroundTruthSource):
    """Shapes3D-like scenes on the full 10x10x10x8x4x15 grid; hues are mixed in per call."""

    name = "shapes3d"
    space = SHAPES3D_SPACE

    def __init__(self, size: int = 64, supersample: int = 4) -> None:
        self.image_shape = (3, size, size)
        weights = _weight_table(size, supersample)
        # one row per (shape, scale, orientation), in that row-major order
        self._weights = rearrange(weights, "sh sc o k h w -> (sh sc o) k h w")
        self._hues = _hue_table()
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = (self._weights.to(device), self._hues.to(device))
        return self._cache[device]

    def render(self, values: torch.Tensor) -> torch.Tensor:
        values = self.space.check_values(values)
        weights, hues = self._tables(values.device)
        n_orient, n_scale = self.space.sizes[5], self.space.sizes[3]
        row = (values[:, 4] * n_scale + values[:, 3]) * n_orient + values[:, 5]
        w = weights[row]  # (B, 3 surfaces, H, W)
        floor, wall, obj = (hues[values[:, k]].view(-1, 3, 1, 1) for k in range(3))
        img = w[:, 0:1] * floor + w[:, 1:2] * wall + w[:, 2:3] * obj
        return img.round_().clamp_(0, 255).to(torch.uint8)

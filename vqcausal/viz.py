"""Pictures people look at: labelled PNG grids of images and transition pairs."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange, repeat
from PIL import Image, ImageDraw, ImageFont

from vqcausal.atomic import atomic_path
from vqcausal.errors import VQCausalError


def to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 or float in [0, 1] -> (B, 3, H, W) uint8."""
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = repeat(images, "b 1 h w -> b 3 h w")
    return images[:, :3]


def upscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling so small images stay crisp in a grid."""
    if factor == 1:
        return images
    return repeat(images, "b c h w -> b c (h f1) (w f2)", f1=factor, f2=factor)


def labelled_rows(
    rows: list[torch.Tensor],
    labels: list[str],
    scale: int = 2,
    gap: int = 4,
    group: int = 1,
) -> Image.Image:
    """One row per tensor (N, C, H, W), a text label at the left of each row.

    ``group`` > 1 puts an extra gap after every ``group`` images (e.g. 2 for x | x' pairs).
    """
    font = ImageFont.load_default()
    label_width = 8 + max(int(font.getlength(text)) for text in labels)
    tiles = [upscale(to_rgb_uint8(r), scale) for r in rows]
    h, w = tiles[0].shape[2], tiles[0].shape[3]
    ncols = max(t.shape[0] for t in tiles)
    extra = (ncols - 1) // group * gap * 2
    canvas = Image.new(
        "RGB", (label_width + ncols * (w + gap) + extra, len(rows) * (h + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, (tile, text) in enumerate(zip(tiles, labels, strict=True)):
        y = gap + r * (h + gap)
        draw.text((4, y + h // 2 - 6), text, fill="black", font=font)
        for c in range(tile.shape[0]):
            x = label_width + c * (w + gap) + c // group * gap * 2
            canvas.paste(Image.fromarray(rearrange(tile[c], "c h w -> h w c").numpy()), (x, y))
    return canvas


# anchor colours of a perceptually ordered dark-blue -> teal -> yellow map (viridis-like)
_MAP = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
)


def heatmap(matrix: torch.Tensor, cell: int = 6) -> Image.Image:
    """A (R, C) matrix with values in [0, 1] as a colour image, ``cell`` pixels per entry."""
    v = matrix.float().clamp(0, 1) * (len(_MAP) - 1)
    low = v.floor().long().clamp(max=len(_MAP) - 2)
    frac = (v - low)[..., None]
    rgb = _MAP[low] * (1 - frac) + _MAP[low + 1] * frac  # (R, C, 3)
    rgb = repeat(rgb, "r c k -> (r f1) (c f2) k", f1=cell, f2=cell)
    return Image.fromarray(rgb.round().to(torch.uint8).numpy())


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (temp file + rename) and return its path."""
    path = Path(path)
    if path.is_dir():
        raise VQCausalError(f"{path} is a folder; name a PNG file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path

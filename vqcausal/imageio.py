"""Reading user images the way the model was trained.

Any format and mode Pillow reads is accepted and converted as at training time: palette,
16-bit and grayscale images become 8-bit; transparency is composited onto white (as the
CausalVAE pendulum files are); the image becomes RGB or single-channel to match the model
and is resized (bilinear, antialiased) to the model's input size. Anything unreadable is a
one-line :class:`ImageError`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqcausal.errors import VQCausalError

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding a single pixel
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageError(VQCausalError):
    """An input image that cannot be used."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float modes -> 8-bit L by scaling their full range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = np.where(np.isfinite(array), array, 0.0)  # NaN / inf pixels (float TIFF): black
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max()), 1.0) if array.max() > 1 else 1.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def load_image(path: str | Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """An image file -> float tensor (channels, H, W) in [0, 1] at ``size`` = (H, W)."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, expected an image file")
    if path.exists() and not path.is_file():  # reading a FIFO would block for ever
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: image is {width}x{height}, larger than the "
                        f"{MAX_PIXELS:,}-pixel limit"
                    )
                image.load()
                image = _to_8bit(image)
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, rgba)
                image = image.convert("RGB" if channels == 3 else "L")
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"{path}: cannot decode image ({err})") from None
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def image_files(folder: str | Path) -> dict[str, Path]:
    """Image files of a folder by name (for pairing two folders of images)."""
    folder = Path(folder)
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }

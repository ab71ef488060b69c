"""Image decoding: any file Pillow reads becomes an RGB uint8 array (H, W, 3), upright.

Conversions (documented in the README):
- EXIF orientation is applied;
- grayscale (L, 1, I, I;16, F) is replicated to three channels; 16-bit and 32-bit integer images are scaled to 8 bits
  by their nominal range (65535 -> 255), float images are clipped to [0, 255];
- alpha (RGBA, LA, PA, palette with transparency) is composited over white, as a viewer would show it;
- palette, CMYK, YCbCr and other modes go through Pillow's RGB conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

__all__ = ["IMAGE_SUFFIXES", "ImageDecodeError", "expand_paths", "load_image"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"})


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float64) / 65535.0 * 255.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "I":
        a = np.asarray(img, dtype=np.float64)
        # Pillow stores 16-bit PNGs as mode I; scale by the nominal 16-bit range when values exceed 8 bits.
        if a.max(initial=0.0) > 255:
            a = a / 65535.0 * 255.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one file to an upright RGB uint8 array (H, W, 3); raises ImageDecodeError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ImageDecodeError(p, "file not found")
    if p.is_dir():
        raise ImageDecodeError(p, "is a directory, not an image")
    try:
        with Image.open(p) as opened:
            opened.load()  # decode now so truncated files fail here, not later
            rgb = _to_rgb(ImageOps.exif_transpose(opened))
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image file Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(p, f"corrupt or truncated image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(p, f"empty image of shape {rgb.shape}")
    return rgb


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Files are kept as given (so bad ones get reported); directories expand to their images, sorted, recursively."""
    out: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out

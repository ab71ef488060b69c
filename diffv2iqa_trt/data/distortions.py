"""Synthetic distortions of RGB uint8 images (KADID-style): 10 types x 5 levels, deterministic given a seed.

The one distortion set of the project: the demo weights were trained on it (`training.data`), and tests and
benchmarks distort photographs with it. NumPy and Pillow only.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ConfigError

LEVELS = 5


def _f(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64)


def _u8(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return out


def _gaussian_blur(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    radius = (0.6, 1.2, 2.0, 3.2, 5.0)[level - 1]
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=radius)))


def _motion_blur(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # A straight horizontal or vertical smear: box filter of the given length along one axis (edges replicated).
    length = (3, 5, 9, 15, 25)[level - 1]
    axis = int(rng.integers(0, 2))
    a = np.moveaxis(_f(rgb), axis, 0)
    r0, r1 = length // 2, length - 1 - length // 2
    p = np.pad(a, ((r0 + 1, r1), (0, 0), (0, 0)), mode="edge")
    c = np.cumsum(p, axis=0)
    out = (c[length:] - c[:-length]) / length
    return _u8(np.moveaxis(out, 0, axis))


def _white_noise(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (4.0, 8.0, 16.0, 28.0, 48.0)[level - 1]
    return _u8(_f(rgb) + rng.normal(0.0, sigma, rgb.shape))


def _impulse_noise(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Salt and pepper on whole pixels.
    p = (0.005, 0.015, 0.04, 0.09, 0.18)[level - 1]
    out: np.ndarray = rgb.copy()
    u = rng.random(rgb.shape[:2])
    out[u < p / 2] = 0
    out[(u >= p / 2) & (u < p)] = 255
    return out


def _jpeg(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    quality = (50, 25, 12, 6, 2)[level - 1]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _saturation(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Over-saturation: chroma around the BT.601 luma scaled up, then clipped (clipping is what alters luminance).
    factor = (1.6, 2.2, 3.0, 4.0, 6.0)[level - 1]
    a = _f(rgb)
    y = (a @ np.array([0.299, 0.587, 0.114]))[..., None]
    return _u8(y + factor * (a - y))


def _contrast(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.75, 0.55, 0.4, 0.25, 0.12)[level - 1]
    a = _f(rgb)
    return _u8(a.mean() + factor * (a - a.mean()))


def _brightness(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    offset = (20.0, 40.0, 65.0, 95.0, 130.0)[level - 1]
    return _u8(_f(rgb) + offset)


def _pixelate(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    block = (2, 3, 4, 6, 9)[level - 1]
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def _quantise(rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Uniform quantisation of each channel to n values, no dithering.
    n = (24, 12, 7, 4, 2)[level - 1]
    step = 255.0 / (n - 1)
    return _u8(np.rint(_f(rgb) / step) * step)


Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
DISTORTIONS: dict[str, Distortion] = {
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "white_noise": _white_noise,
    "impulse_noise": _impulse_noise,
    "jpeg": _jpeg,
    "saturation": _saturation,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "quantise": _quantise,
}


def distort(rgb: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """A distorted copy of an RGB uint8 image; level 1 (mild) ... 5 (strong). Deterministic given the seed."""
    if kind not in DISTORTIONS:
        raise ConfigError(f"unknown distortion {kind!r}; use one of {', '.join(DISTORTIONS)}")
    if not 1 <= level <= LEVELS:
        raise ConfigError(f"level must be 1..{LEVELS}, got {level}")
    return DISTORTIONS[kind](np.ascontiguousarray(rgb, dtype=np.uint8), level, np.random.default_rng(seed))

"""Real photographs shipped in scikit-image's wheel (nothing is downloaded), and simple synthetic distortions.

Used by tests and benchmarks; needs scikit-image (the `dev` extra).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

# Photographs (not drawings or synthetic patterns) that load from the wheel without a download.
PHOTO_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
               "immunohistochemistry", "moon", "page", "rocket", "text", "retina", "clock", "microaneurysms",
               "stereo_motorcycle")
DISTORTIONS = ("gaussian_blur", "white_noise", "jpeg")


def photo(name: str) -> np.ndarray:
    """One photograph as RGB uint8 (grayscale replicated)."""
    from skimage import data

    a = getattr(data, name)()
    if isinstance(a, tuple):  # stereo pairs: the left view
        a = a[0]
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def photos(max_side: int | None = None) -> dict[str, np.ndarray]:
    out = {}
    for name in PHOTO_NAMES:
        rgb = photo(name)
        if max_side is not None and max(rgb.shape[:2]) > max_side:
            img = Image.fromarray(rgb)
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            rgb = np.asarray(img)
        out[name] = rgb
    return out


def distort(rgb: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """A distorted copy; level 1 (mild) ... 5 (strong)."""
    if not 1 <= level <= 5:
        raise ValueError(f"level must be 1..5, got {level}")
    if kind == "gaussian_blur":
        return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=0.6 * level)))
    if kind == "white_noise":
        noise = np.random.default_rng(seed).normal(0.0, 6.0 * level, rgb.shape)
        return np.clip(rgb.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(60 / level))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise ValueError(f"unknown distortion {kind!r}; use one of {', '.join(DISTORTIONS)}")


def distorted_set(max_side: int = 256, level: int = 3) -> list[tuple[str, np.ndarray]]:
    """Every photograph under every distortion at one level: (name, image) pairs."""
    return [(f"{name}-{kind}{level}", distort(rgb, kind, level, seed=i))
            for i, (name, rgb) in enumerate(photos(max_side).items()) for kind in DISTORTIONS]

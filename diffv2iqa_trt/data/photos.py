"""Real photographs shipped in scikit-image's wheel (nothing is downloaded), and distorted sets of them.

Used by training, tests and benchmarks; needs scikit-image (the `dev` extra).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .distortions import distort

# Photographs (not drawings or synthetic patterns) that load from the wheel without a download.
PHOTO_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
               "immunohistochemistry", "moon", "page", "rocket", "text", "retina", "clock", "microaneurysms",
               "stereo_motorcycle")
# A small, varied subset of the distortion set for parity and benchmark sets: blur, noise, compression.
SET_DISTORTIONS = ("gaussian_blur", "white_noise", "jpeg")


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
    """Every photograph, shrunk (bicubic, aspect kept) so its long side is at most `max_side`."""
    out = {}
    for name in PHOTO_NAMES:
        rgb = photo(name)
        if max_side is not None and max(rgb.shape[:2]) > max_side:
            img = Image.fromarray(rgb)
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            rgb = np.asarray(img)
        out[name] = rgb
    return out


def distorted_set(max_side: int = 256, level: int = 3,
                  kinds: tuple[str, ...] = SET_DISTORTIONS) -> list[tuple[str, np.ndarray]]:
    """Every photograph under each distortion of `kinds` at one level: (name, image) pairs."""
    return [(f"{name}-{kind}{level}", distort(rgb, kind, level, seed=i))
            for i, (name, rgb) in enumerate(photos(max_side).items()) for kind in kinds]

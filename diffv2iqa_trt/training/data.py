"""The training data: KADID-style synthetic distortions of real photographs, a pseudo-MOS, and a split by photo.

Everything is made at run time from the photographs in scikit-image's wheel (`benchmarks.photos`); nothing is
downloaded. The quality target is a **pseudo-MOS**: the SSIM (`training.ssim`, on luminance) of the distorted image
against its pristine photograph. It is not a human opinion score.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..benchmarks.photos import PHOTO_NAMES, photos
from .ssim import luminance, ssim_map

LEVELS = 5
MAX_SIDE = 256  # photographs are shrunk (bicubic, aspect kept) so their long side is at most this

# Fixed split by source photograph (no photograph is in two splits).
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "brick", "camera", "grass", "hubble_deep_field", "immunohistochemistry", "moon", "page",
              "text", "retina", "clock", "microaneurysms"),
    "val": ("coffee", "gravel", "rocket"),
    "test": ("chelsea", "coins", "stereo_motorcycle"),
}


def _f(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


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
    out = rgb.copy()
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
        raise ValueError(f"unknown distortion {kind!r}; use one of {', '.join(DISTORTIONS)}")
    if not 1 <= level <= LEVELS:
        raise ValueError(f"level must be 1..{LEVELS}, got {level}")
    return DISTORTIONS[kind](np.ascontiguousarray(rgb, dtype=np.uint8), level, np.random.default_rng(seed))


@dataclass(frozen=True)
class Sample:
    photo: str
    kind: str  # a distortion name, or "pristine"
    level: int  # 0 for the pristine photograph
    image: np.ndarray  # (H, W, 3) uint8
    pristine: np.ndarray  # (H, W, 3) uint8, the source photograph
    ssim_map: np.ndarray  # (H, W) float32, per-pixel SSIM against the pristine photograph (luminance)
    pseudo_mos: float  # SSIM of the whole image (skimage's convention): the image's quality target

    def crop_target(self, top: int, left: int, size: int) -> float:
        """The pseudo-MOS of one crop: the mean of the SSIM map over the crop window."""
        return float(self.ssim_map[top:top + size, left:left + size].mean(dtype=np.float64))


def split_of(name: str) -> str:
    for split, names in SPLITS.items():
        if name in names:
            return split
    raise KeyError(f"photograph {name!r} is in no split")


def make_samples(names: Iterable[str], *, include_pristine: bool = True, max_side: int = MAX_SIDE) -> list[Sample]:
    """Every listed photograph under every distortion at every level (and itself, pristine)."""
    from .ssim import ssim

    library = photos(max_side)
    out: list[Sample] = []
    for name in names:
        ref = library[name]
        ref_y = luminance(ref)
        pid = PHOTO_NAMES.index(name)
        variants: list[tuple[str, int, np.ndarray]] = [("pristine", 0, ref)] if include_pristine else []
        for k, kind in enumerate(DISTORTIONS):
            # One seed per (photograph, distortion): the levels share their noise pattern and smear axis.
            variants.extend((kind, level, distort(ref, kind, level, seed=100 * pid + k))
                            for level in range(1, LEVELS + 1))
        for kind, level, img in variants:
            img_y = luminance(img)
            out.append(Sample(name, kind, level, img, ref, ssim_map(img_y, ref_y).astype(np.float32),
                              ssim(img_y, ref_y)))
    return out


def split_samples(split: str, **kwargs: object) -> list[Sample]:
    return make_samples(SPLITS[split], **kwargs)  # type: ignore[arg-type]

"""Fixed crop policies and the two restoration modes (no randomness at inference).

A prepared image is a list of work units: a restoration input (3, H, W) in [-1, 1] and the crop boxes to cut from it
(and from its restored snapshots) afterwards.
- mode `crops`: every crop is its own unit, restored at crop size (cheap on large images).
- mode `faithful`: the whole image is restored once (resized to a multiple of the U-Net's size multiple, as the authors
  did), and every crop is cut from it.
Policy `resize224` squashes the whole image to the crop size (the authors' KonIQ/LIVEC handling): one unit, one crop,
the same in both modes.
Images whose short side is below the crop size are first upscaled (the contract's bicubic, runtime/resize.py; aspect
kept) so the short side equals it.

Work per image is bounded (an ImageSizeError refuses the image, not the run): upscaling at most MAX_UPSCALE times and
only images whose long side is at most MAX_UPSCALE_ASPECT times the short side (a 1 x 60000 strip would become
64 x 3840000); faithful restoration of at most MAX_FAITHFUL_PIXELS; grid:N with N at most config.MAX_GRID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import grid_size
from ..contract import normalise_uint8
from ..errors import EXIT_FAILED, ConfigError, DiffV2IQAError
from .resize import resize_rgb

MAX_UPSCALE = 16  # a 64-pixel crop needs a short side of at least 4 pixels, a 224-pixel crop at least 14
MAX_UPSCALE_ASPECT = 32  # an upscaled image is at most crop x 32 crop pixels
# Faithful mode restores the whole image, and the noise bank holds (steps + 1) images of that size: 2048 x 2048 with
# 50 steps is already 2.6 GB of noise. Larger images are refused there (crops mode handles them).
MAX_FAITHFUL_PIXELS = 2048 * 2048



class ImageSizeError(DiffV2IQAError, ValueError):
    """An image whose size the pipeline refuses (too small or thin to upscale, too large for faithful mode); it is
    that image's error, the others are still scored."""

    exit_code = EXIT_FAILED

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class WorkUnit:
    pixels: np.ndarray  # (H, W, 3) uint8, often a view of the decoded image: normalised only when restored
    boxes: tuple[tuple[int, int], ...]  # (top, left) of each crop_size x crop_size crop in x

    @property
    def x(self) -> np.ndarray:
        """(3, H, W) float32 in [-1, 1]; computed on each access, so a unit waiting for its batch stays uint8."""
        return normalise(self.pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w = self.pixels.shape[:2]
        return 3, int(h), int(w)


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) by the contract's formula (the authors' (v / 255 - 0.5) / 0.5)."""
    x: np.ndarray = normalise_uint8(rgb).transpose(2, 0, 1).copy()
    return x


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    return resize_rgb(rgb, height, width)  # the contract's own bicubic (runtime/resize.py), not a library's


def check_upscale(height: int, width: int, size: int) -> None:
    """ImageSizeError when an image this small or thin cannot be upscaled to `size` within the bounds."""
    short, long = min(height, width), max(height, width)
    if short >= size:
        return
    if short * MAX_UPSCALE < size:
        raise ImageSizeError(f"image of {width}x{height} pixels is too small: its short side must be at least "
                             f"{-(-size // MAX_UPSCALE)} pixels (it is upscaled to the {size}-pixel crop, at most "
                             f"{MAX_UPSCALE}x)")
    if long > short * MAX_UPSCALE_ASPECT:
        raise ImageSizeError(f"image of {width}x{height} pixels is too thin to upscale to the {size}-pixel crop: "
                             f"its long side may be at most {MAX_UPSCALE_ASPECT} times its short side; crop it or use "
                             "--crops resize224")


def upscale_to_fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """Upscale so the short side is at least `size` (aspect kept); larger images are returned unchanged.

    ImageSizeError for images too small or thin to upscale within the bounds (see check_upscale)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short >= size:
        return rgb
    check_upscale(h, w, size)
    scale = size / short
    return _resize(rgb, max(size, round(h * scale)), max(size, round(w * scale)))


def crop_boxes(policy: str, height: int, width: int, size: int) -> tuple[tuple[int, int], ...]:
    """Top-left corners of the crops of `policy` in an image of at least size x size."""
    n = grid_size(policy)
    if height < size or width < size:
        raise ConfigError(f"image {height}x{width} is smaller than the crop size {size}")
    bottom, right = height - size, width - size
    center = (bottom // 2, right // 2)
    if policy in ("center", "resize224"):
        return (center,)
    if policy == "five":
        return ((0, 0), (0, right), (bottom, 0), (bottom, right), center)
    assert n is not None  # grid_size accepted only these policies
    tops = np.rint(np.linspace(0, bottom, n)).astype(int) if n > 1 else [bottom // 2]
    lefts = np.rint(np.linspace(0, right, n)).astype(int) if n > 1 else [right // 2]
    return tuple((int(t), int(left)) for t in tops for left in lefts)


def prepare(rgb: np.ndarray, policy: str, mode: str, crop_size: int, size_multiple: int) -> list[WorkUnit]:
    """Turn a decoded image into work units for the pipeline (ImageSizeError for an image it refuses)."""
    if crop_size < 1 or size_multiple < 1 or crop_size % size_multiple:
        raise ConfigError(f"crop size {crop_size} must be a positive multiple of {size_multiple}")
    grid_size(policy)
    if mode not in ("crops", "faithful"):
        raise ConfigError(f"unknown mode {mode!r}; use crops or faithful")
    if policy == "resize224":
        return [WorkUnit(_resize(rgb, crop_size, crop_size), ((0, 0),))]
    rgb = upscale_to_fit(rgb, crop_size)
    if mode == "crops":
        boxes = crop_boxes(policy, rgb.shape[0], rgb.shape[1], crop_size)
        return [WorkUnit(rgb[t:t + crop_size, left:left + crop_size], ((0, 0),)) for t, left in boxes]
    h, w = rgb.shape[:2]
    h, w = h // size_multiple * size_multiple, w // size_multiple * size_multiple
    if h * w > MAX_FAITHFUL_PIXELS:
        raise ImageSizeError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too large for faithful mode (it "
                             f"restores the whole image; at most {MAX_FAITHFUL_PIXELS / 1e6:.1f} megapixels); use "
                             "--mode crops or downscale the image")
    rgb = _resize(rgb, h, w)
    return [WorkUnit(rgb, crop_boxes(policy, h, w, crop_size))]

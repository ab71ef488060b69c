"""Fixed crop policies and the two restoration modes (no randomness at inference).

A prepared image is a list of work units: a restoration input (3, H, W) in [-1, 1] and the crop boxes to cut from it
(and from its restored snapshots) afterwards.
- mode `crops`: every crop is its own unit, restored at crop size (cheap on large images).
- mode `faithful`: the whole image is restored once (resized to a multiple of the U-Net's size multiple, as the authors
  did), and every crop is cut from it.
Policy `resize224` squashes the whole image to the crop size (the authors' KonIQ/LIVEC handling): one unit, one crop,
the same in both modes.
Images whose short side is below the crop size are first upscaled (bicubic, aspect kept) so the short side equals it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..contract import normalise_uint8
from ..errors import ConfigError


@dataclass(frozen=True)
class WorkUnit:
    x: np.ndarray  # (3, H, W) float32 in [-1, 1]
    boxes: tuple[tuple[int, int], ...]  # (top, left) of each crop_size x crop_size crop in x


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) by the contract's formula (the authors' (v / 255 - 0.5) / 0.5)."""
    x: np.ndarray = normalise_uint8(rgb).transpose(2, 0, 1).copy()
    return x


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def upscale_to_fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """Upscale so the short side is at least `size` (aspect kept); larger images are returned unchanged."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short >= size:
        return rgb
    scale = size / short
    return _resize(rgb, max(size, round(h * scale)), max(size, round(w * scale)))


def crop_boxes(policy: str, height: int, width: int, size: int) -> tuple[tuple[int, int], ...]:
    """Top-left corners of the crops of `policy` in an image of at least size x size."""
    if height < size or width < size:
        raise ConfigError(f"image {height}x{width} is smaller than the crop size {size}")
    bottom, right = height - size, width - size
    center = (bottom // 2, right // 2)
    if policy in ("center", "resize224"):
        return (center,)
    if policy == "five":
        return ((0, 0), (0, right), (bottom, 0), (bottom, right), center)
    if policy.startswith("grid:"):
        n = int(policy.split(":", 1)[1])
        tops = np.rint(np.linspace(0, bottom, n)).astype(int) if n > 1 else [bottom // 2]
        lefts = np.rint(np.linspace(0, right, n)).astype(int) if n > 1 else [right // 2]
        return tuple((int(t), int(left)) for t in tops for left in lefts)
    raise ConfigError(f"unknown crop policy {policy!r}; use center, five, grid:N or resize224")


def prepare(rgb: np.ndarray, policy: str, mode: str, crop_size: int, size_multiple: int) -> list[WorkUnit]:
    """Turn a decoded image into work units for the pipeline."""
    if crop_size % size_multiple:
        raise ConfigError(f"crop size {crop_size} must be a multiple of {size_multiple}")
    if policy == "resize224":
        return [WorkUnit(normalise(_resize(rgb, crop_size, crop_size)), ((0, 0),))]
    rgb = upscale_to_fit(rgb, crop_size)
    if mode == "crops":
        boxes = crop_boxes(policy, rgb.shape[0], rgb.shape[1], crop_size)
        return [WorkUnit(normalise(rgb[t:t + crop_size, left:left + crop_size]), ((0, 0),)) for t, left in boxes]
    if mode == "faithful":
        h, w = rgb.shape[:2]
        rgb = _resize(rgb, h // size_multiple * size_multiple, w // size_multiple * size_multiple)
        return [WorkUnit(normalise(rgb), crop_boxes(policy, rgb.shape[0], rgb.shape[1], crop_size))]
    raise ConfigError(f"unknown mode {mode!r}; use crops or faithful")

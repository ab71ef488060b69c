"""The contract's resize (runtime/resize.py): the vectorised code equals a plain scalar reading of its specification,
and stays close to Pillow's bicubic, which it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from diffv2iqa_trt.runtime.resize import cubic, resize_rgb


def _scalar_pass(values: list[list[float]], size: int) -> list[list[float]]:
    """One pass along the inner axis, straight from the docstring's formulas (no arrays, no padding)."""
    n = len(values[0])
    scale = float(n) / float(size)
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    out = []
    for line in values:
        row = []
        for i in range(size):
            centre = (float(i) + 0.5) * scale
            lo = max(0, math.floor((centre - support) + 0.5))
            hi = min(n, math.floor((centre + support) + 0.5))
            k = [cubic(((float(j) - centre) + 0.5) / fscale) for j in range(lo, hi)]
            total = 0.0
            for v in k:
                total += v
            acc = 0.0
            for j, kj in zip(range(lo, hi), k, strict=True):
                acc += (kj / total) * line[j]
            row.append(acc)
        out.append(row)
    return out


def _scalar_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        plane = [[float(v) for v in row] for row in rgb[..., c]]
        if width != w:
            plane = _scalar_pass(plane, width)
        if height != h:
            columns = _scalar_pass([list(col) for col in zip(*plane, strict=True)], height)
            plane = [list(row) for row in zip(*columns, strict=True)]
        out[..., c] = np.clip(np.rint(np.array(plane)), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("shape,size", [((7, 9), (13, 4)), ((20, 30), (64, 96)), ((31, 17), (16, 16)),
                                        ((5, 40), (5, 11)), ((12, 3), (40, 3))])
def test_vectorised_equals_the_scalar_specification(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rgb = np.random.default_rng(sum(shape) + sum(size)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_rgb(rgb, *size), _scalar_resize(rgb, *size))


def test_same_size_is_the_input_and_constants_stay_constant() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert resize_rgb(rgb, 10, 12) is rgb
    flat = np.full((9, 14, 3), 77, np.uint8)
    assert (resize_rgb(flat, 33, 5) == 77).all()  # weights sum to 1, so a constant image stays exact


def test_close_to_pillow_bicubic_on_a_photograph() -> None:
    from diffv2iqa_trt.data.photos import photo

    rgb = photo("astronaut")
    for h, w in ((224, 224), (300, 410), (700, 333)):
        ours = resize_rgb(rgb, h, w).astype(int)
        pil = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC)).astype(int)
        diff = np.abs(ours - pil)
        assert diff.mean() < 0.3 and diff.max() <= 6, (h, w, diff.mean(), diff.max())


def test_refuses_what_is_not_an_8bit_rgb_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_rgb(np.zeros((4, 4, 3), np.float32), 8, 8)

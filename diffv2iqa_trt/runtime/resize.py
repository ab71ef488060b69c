"""The scoring contract's resize: a separable bicubic specified completely here, so C++ and CUDA ports match it bit
for bit (cpp/include/diffv2iqa/resize.hpp implements the same specification; docs/bundle.md states it too).

Specification (RESIZE names it)
===============================
Input: uint8 RGB (h, w, 3); output: uint8 RGB (H, W, 3). Real arithmetic is IEEE-754 binary64 (float64), every
operation rounded on its own (no FMA, no extended precision), in exactly the order and grouping written.

1. Passes. Width first: if W != w, each row is resampled from w to W columns, giving float64 (h, W, 3) (not rounded).
   Then height: if H != h, each column is resampled from h to H rows. A pass whose size is unchanged is skipped (the
   values are copied). Finally each value becomes uint8: rint (round half to even), then clamped to [0, 255].
2. Taps of output index i for a pass from n to N samples:
       scale   = float64(n) / float64(N)
       fscale  = max(scale, 1.0)                   the kernel is stretched when reducing (antialiasing)
       support = 2.0 * fscale
       centre  = (float64(i) + 0.5) * scale
       lo      = max(0, floor((centre - support) + 0.5))        as integers
       hi      = min(n, floor((centre + support) + 0.5))        taps j = lo .. hi - 1
       k_j     = cubic(((float64(j) - centre) + 0.5) / fscale)
       total   = k_lo + k_(lo+1) + ... + k_(hi-1)                 summed left to right from 0.0
       w_j     = k_j / total                                    (total is never 0: the central taps are positive)
   cubic(x) is Keys' cubic with a = -0.5, t = |x|:
       t < 1:      ((1.5 * t - 2.5) * t) * t + 1.0
       1 <= t < 2: ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
       t >= 2:     0.0
3. A sample: out_i = (((0.0 + w_lo * v_lo) + w_(lo+1) * v_(lo+1)) + ...) + w_(hi-1) * v_(hi-1), the products summed
   left to right (v the pass's input values: uint8 converted to float64 in the first pass that runs, the first
   pass's float64 results in the second).

This is Pillow's BICUBIC kernel and support rule in plain float64 instead of Pillow's fixed-point 8-bit passes, so it
differs from Pillow by at most a few levels (the decoded uint8 image is the only input; no library version enters).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

RESIZE = "bicubic(a=-0.5,antialias)-width-then-height-f64-rint-uint8"


def cubic(x: float) -> float:
    t = abs(x)
    if t < 1.0:
        return ((1.5 * t - 2.5) * t) * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


def taps(n: int, size: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """(index, weight) arrays of shape (size, K) for a pass from n to `size` samples; rows are padded at the end with
    weight 0.0 (adding 0.0 * v leaves a float64 sum unchanged, so the padded sum equals the specification's)."""
    if n < 1 or size < 1:
        raise ValueError(f"cannot resize {n} samples to {size}")
    scale = float(n) / float(size)
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    rows: list[tuple[int, list[float]]] = []
    for i in range(size):
        centre = (float(i) + 0.5) * scale
        lo = max(0, math.floor((centre - support) + 0.5))
        hi = min(n, math.floor((centre + support) + 0.5))
        k = [cubic(((float(j) - centre) + 0.5) / fscale) for j in range(lo, hi)]
        total = 0.0
        for v in k:
            total += v
        rows.append((lo, [v / total for v in k]))
    width = max(len(w) for _, w in rows)
    index = np.empty((size, width), np.intp)
    weight = np.zeros((size, width), np.float64)
    for i, (lo, w) in enumerate(rows):
        index[i] = lo
        index[i, : len(w)] = np.arange(lo, lo + len(w))
        weight[i, : len(w)] = w
    return index, weight


def _pass(values: npt.NDArray[np.float64], size: int, axis: int) -> npt.NDArray[np.float64]:
    """Resample `values` (float64) along `axis` to `size` samples by the specification's sum order."""
    index, weight = taps(values.shape[axis], size)
    shape = [1] * values.ndim
    shape[axis] = size
    out_shape = values.shape[:axis] + (size,) + values.shape[axis + 1 :]
    acc = np.zeros(out_shape, np.float64)
    term = np.empty(out_shape, np.float64)  # one buffer for every tap's products: large reductions have ~70 taps
    for k in range(index.shape[1]):
        np.take(values, index[:, k], axis=axis, out=term)
        np.multiply(term, weight[:, k].reshape(shape), out=term)
        acc += term
    return acc


def resize_rgb(rgb: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """uint8 (h, w, 3) -> uint8 (height, width, 3) by the module's specification (unchanged when the size is)."""
    if rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[:2] == (height, width):
        return rgb
    values = rgb.astype(np.float64)
    if width != rgb.shape[1]:
        values = _pass(values, width, axis=1)
    if height != rgb.shape[0]:
        values = _pass(values, height, axis=0)
    out: npt.NDArray[np.uint8] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out

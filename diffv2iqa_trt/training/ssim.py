"""SSIM (Wang et al. 2004) on luminance, written for this project: the pseudo-MOS of the training data.

Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 taps), K1 = 0.01, K2 = 0.03, population (not sample)
statistics, borders handled by symmetric reflection. `ssim` averages the map without the (window-1)/2 border, which
matches `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`.
"""

from __future__ import annotations

import numpy as np

SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
# ITU-R BT.601 luma weights.
LUMA = np.array([0.299, 0.587, 0.114])


def luminance(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 (or float in 0..255) -> luma (H, W) float64 in 0..255; 2-D input is returned as float."""
    a = np.asarray(rgb, dtype=np.float64)
    return a if a.ndim == 2 else a[..., :3] @ LUMA


def gaussian_taps(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps: np.ndarray = k / k.sum()
    return taps


def _blur(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable filtering with symmetric ('d c b a | a b c d') border reflection."""
    r = len(taps) // 2
    p = np.pad(img, r, mode="symmetric")
    rows = sum(w * p[:, i:i + img.shape[1]] for i, w in enumerate(taps))
    out: np.ndarray = sum(w * rows[i:i + img.shape[0], :] for i, w in enumerate(taps))
    return out


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-pixel SSIM of two grayscale images (H, W) of the same size."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two grayscale images of one size, got {a.shape} and {b.shape}")
    taps = gaussian_taps()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_a, mu_b = _blur(a, taps), _blur(b, taps)
    var_a = _blur(a * a, taps) - mu_a * mu_a
    var_b = _blur(b * b, taps) - mu_b * mu_b
    cov = _blur(a * b, taps) - mu_a * mu_b
    ssim_map: np.ndarray = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM without the border of half a window (skimage's convention)."""
    m = ssim_map(a, b, data_range)
    r = len(gaussian_taps()) // 2
    return float(m[r:-r, r:-r].mean(dtype=np.float64))


def ssim_rgb(distorted: np.ndarray, pristine: np.ndarray) -> float:
    """SSIM of two RGB uint8 images on their luminance: the pseudo-MOS."""
    return ssim(luminance(distorted), luminance(pristine))

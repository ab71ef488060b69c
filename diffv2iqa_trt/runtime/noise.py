"""The deterministic noise bank of the sampler.

Row i (0 <= i < T) is the noise z_i added by step i (row 0 exists but is multiplied by sigma_0 = 0); row T is the
initial sample y_T. Row r is stream (seed, r) of the portable Philox-4x32-10 + Box-Muller generator specified in
runtime/philox.py (and docs/bundle.md): float32 standard normals of shape (3, H, W) in C order.

The same bank serves every image of a resolution, so a score depends on neither the batch size nor the batch position
nor the backend. The generator needs only 32-bit integer products and float64 arithmetic (one log), so C++
(cpp/include/diffv2iqa/philox.hpp) and CUDA ports reproduce it; bundles record its id (GENERATOR) and test vectors.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .philox import GENERATOR, normal_bank, normal_row

__all__ = ["GENERATOR", "noise_bank", "noise_row", "row_test_vectors"]


def noise_row(seed: int, row: int, height: int, width: int) -> np.ndarray:
    return normal_row(seed, row, (3, height, width))


def noise_bank(seed: int, steps: int, height: int, width: int) -> np.ndarray:
    """(steps + 1, 3, H, W) float32; see the module docstring for the layout."""
    return normal_bank(seed, steps, height, width)


def row_test_vectors(seed: int, steps: int, height: int, width: int) -> dict[str, object]:
    """What a bundle ships so a port can check its generator: the first values of rows 0 and T and the sha256 of every
    row of the (3, height, width) bank."""
    bank = noise_bank(seed, steps, height, width)
    first = {str(r): [f"0x{int(b):08x}" for b in bank[r].reshape(-1)[:8].view(np.uint32)] for r in (0, steps)}
    return {
        "shape": [3, height, width],
        "first8_bits": first,
        "row_sha256": [hashlib.sha256(bank[r].astype("<f4").tobytes()).hexdigest() for r in range(steps + 1)],
    }

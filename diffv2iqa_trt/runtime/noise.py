"""The deterministic noise bank of the sampler.

Row i (0 <= i < T) is the noise z_i added by step i (row 0 exists but is multiplied by sigma_0 = 0); row T is the
initial sample y_T. Row r is drawn as float32 standard normals of shape (3, H, W) from NumPy's Philox4x64 counter-based
generator keyed by the two 64-bit words (seed, r), counter 0:

    rng = np.random.Generator(np.random.Philox(key=np.array([seed, r], dtype=np.uint64)))
    rng.standard_normal((3, H, W), dtype=np.float32)

The same bank serves every image of a resolution, so a score depends on neither the batch size nor the batch position
nor the backend; any language with Philox4x64-10 and NumPy's ziggurat normal sampler can reproduce it.
"""

from __future__ import annotations

import numpy as np

from ..config import check_seed  # a seed is one 64-bit word of the Philox key: [0, 2**64)

GENERATOR = "numpy-philox4x64-key(seed,row)-standard_normal-float32"


def noise_row(seed: int, row: int, height: int, width: int) -> np.ndarray:
    seed = check_seed(seed)
    key = np.array([seed, row], dtype=np.uint64)
    rng = np.random.Generator(np.random.Philox(key=key))
    return rng.standard_normal((3, height, width), dtype=np.float32)


def noise_bank(seed: int, steps: int, height: int, width: int) -> np.ndarray:
    """(steps + 1, 3, H, W) float32; see the module docstring for the layout."""
    return np.stack([noise_row(seed, row, height, width) for row in range(steps + 1)])

import hashlib

import numpy as np
import pytest

from diffv2iqa_trt.runtime import philox
from diffv2iqa_trt.runtime.noise import GENERATOR, noise_bank, noise_row, row_test_vectors


def test_bank_rows_are_the_documented_philox4x32_streams():
    bank = noise_bank(seed=7, steps=4, height=8, width=16)
    assert bank.shape == (5, 3, 8, 16) and bank.dtype == np.float32
    assert GENERATOR == philox.GENERATOR
    for row in range(5):
        np.testing.assert_array_equal(bank[row], philox.normal_row(7, row, (3, 8, 16)))
    # Row 2, value 5 from the block function itself: block 1 (counter (1, 2, 0, 0),
    # key (7, 0)), value 1: the y of pair(x0, x1).
    x = philox.philox4x32_10(np.array([[1, 2, 0, 0]], np.uint32), (7, 0))[0]
    u, w = int(x[0]), int(x[1])
    a = (u + 0.5) * 2.0**-32
    rho = float(np.sqrt(-2.0 * np.log(a)))
    theta = 2 * np.pi * (w + 0.5) / 2**32
    assert abs(float(bank[2].reshape(-1)[5]) - rho * np.sin(theta)) < 1e-6


def test_rows_and_seeds_differ_and_repeat():
    a = noise_row(1, 0, 32, 32)
    assert not np.array_equal(a, noise_row(1, 1, 32, 32))
    assert not np.array_equal(a, noise_row(2, 0, 32, 32))
    np.testing.assert_array_equal(a, noise_row(1, 0, 32, 32))
    assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.05


def test_row_test_vectors_describe_the_bank():
    tv = row_test_vectors(3, 5, 16, 24)
    bank = noise_bank(3, 5, 16, 24)
    assert tv["shape"] == [3, 16, 24] and len(tv["row_sha256"]) == 6
    for r in range(6):
        assert tv["row_sha256"][r] == hashlib.sha256(bank[r].astype("<f4").tobytes()).hexdigest()
    first = tv["first8_bits"]
    assert isinstance(first, dict) and sorted(first) == ["0", "5"]
    assert [int(b, 16) for b in first["5"]] == bank[5].reshape(-1)[:8].view(np.uint32).tolist()


def test_bad_seed():
    with pytest.raises(ValueError, match="noise seed"):
        noise_row(-1, 0, 4, 4)

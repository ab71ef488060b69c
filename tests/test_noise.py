import numpy as np
import pytest

from diffv2iqa_trt.runtime.noise import noise_bank, noise_row


def test_bank_rows_are_the_documented_philox_streams():
    bank = noise_bank(seed=7, steps=4, height=8, width=16)
    assert bank.shape == (5, 3, 8, 16) and bank.dtype == np.float32
    for row in range(5):
        gen = np.random.Generator(np.random.Philox(key=np.array([7, row], dtype=np.uint64)))
        np.testing.assert_array_equal(bank[row], gen.standard_normal((3, 8, 16), dtype=np.float32))


def test_rows_and_seeds_differ_and_repeat():
    a = noise_row(1, 0, 32, 32)
    assert not np.array_equal(a, noise_row(1, 1, 32, 32))
    assert not np.array_equal(a, noise_row(2, 0, 32, 32))
    np.testing.assert_array_equal(a, noise_row(1, 0, 32, 32))
    assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.05


def test_bad_seed():
    with pytest.raises(ValueError, match="noise seed"):
        noise_row(-1, 0, 4, 4)

import numpy as np
import pytest

from diffv2iqa_trt.runtime.crops import crop_boxes, normalise, prepare, upscale_to_fit


def test_normalisation_is_the_authors():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(normalise(rgb)[:, 0, 0], [-1.0, 128 / 255 * 2 - 1, 1.0], atol=1e-7)


def test_policies():
    assert crop_boxes("center", 100, 80, 64) == ((18, 8),)
    assert set(crop_boxes("five", 100, 80, 64)) == {(0, 0), (0, 16), (36, 0), (36, 16), (18, 8)}
    grid = crop_boxes("grid:3", 100, 80, 64)
    assert len(grid) == 9 and grid[0] == (0, 0) and grid[-1] == (36, 16) and (18, 8) in grid
    assert crop_boxes("grid:1", 100, 80, 64) == ((18, 8),)
    with pytest.raises(ValueError):
        crop_boxes("random", 100, 80, 64)


def test_small_images_are_upscaled_keeping_aspect():
    out = upscale_to_fit(np.zeros((20, 40, 3), np.uint8), 64)
    assert out.shape == (64, 128, 3)
    big = np.zeros((70, 90, 3), np.uint8)
    assert upscale_to_fit(big, 64) is big


def test_modes():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    units = prepare(rgb, "five", "crops", 64, 16)
    assert len(units) == 5 and all(u.x.shape == (3, 64, 64) and u.boxes == ((0, 0),) for u in units)
    np.testing.assert_array_equal(units[0].x, normalise(rgb[:64, :64]))  # crops come from the original pixels
    (unit,) = prepare(rgb, "five", "faithful", 64, 16)
    assert unit.x.shape == (3, 96, 80) and len(unit.boxes) == 5  # lower multiples of 16
    (unit,) = prepare(rgb, "resize224", "faithful", 64, 16)
    assert unit.x.shape == (3, 64, 64) and unit.boxes == ((0, 0),)
    tiny = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert prepare(tiny, "center", "crops", 64, 16)[0].x.shape == (3, 64, 64)
    assert prepare(tiny, "center", "faithful", 64, 16)[0].x.shape == (3, 64, 64)

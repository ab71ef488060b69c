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


def test_grid_is_bounded():
    from diffv2iqa_trt.config import MAX_GRID, grid_size
    from diffv2iqa_trt.errors import ConfigError

    assert grid_size("grid:64") == MAX_GRID == 64 and grid_size("five") is None
    assert len(crop_boxes("grid:64", 200, 200, 64)) == 4096
    for bad in ("grid:65", "grid:0", "grid:100000000", "grid:" + "9" * 10_000, "grid:-1", "grid:x"):
        with pytest.raises(ConfigError):
            crop_boxes(bad, 200, 200, 64)


def test_upscale_is_bounded():
    """1 x 60000 would become 64 x 3840000 (2.5 GB); the refusal is the image's own error (ImageSizeError)."""
    from diffv2iqa_trt.runtime.crops import MAX_UPSCALE, MAX_UPSCALE_ASPECT, ImageSizeError

    with pytest.raises(ImageSizeError, match="too small"):
        upscale_to_fit(np.zeros((1, 60_000, 3), np.uint8), 64)
    with pytest.raises(ImageSizeError, match="too small.*at least 4 pixels"):
        upscale_to_fit(np.zeros((3, 3, 3), np.uint8), 64)
    assert upscale_to_fit(np.zeros((4, 4, 3), np.uint8), 64).shape == (64, 64, 3)  # exactly MAX_UPSCALE
    with pytest.raises(ImageSizeError, match="too thin"):
        upscale_to_fit(np.zeros((8, 8 * MAX_UPSCALE_ASPECT + 1, 3), np.uint8), 64)
    out = upscale_to_fit(np.zeros((8, 8 * MAX_UPSCALE_ASPECT, 3), np.uint8), 64)
    assert out.shape == (64, 64 * MAX_UPSCALE_ASPECT, 3) and MAX_UPSCALE == 16
    # a long image that needs no upscale is not bounded by the aspect rule (the pixel cap bounds it)
    assert prepare(np.zeros((64, 64 * 40, 3), np.uint8), "center", "crops", 64, 16)[0].x.shape == (3, 64, 64)
    # resize224 squashes whatever the shape
    assert prepare(np.zeros((1, 60_000, 3), np.uint8), "resize224", "crops", 64, 16)[0].x.shape == (3, 64, 64)


def test_faithful_restoration_is_bounded():
    from diffv2iqa_trt.runtime.crops import MAX_FAITHFUL_PIXELS, ImageSizeError

    side = int(MAX_FAITHFUL_PIXELS ** 0.5)
    assert prepare(np.zeros((side, side, 3), np.uint8), "center", "faithful", 64, 16)[0].shape == (3, side, side)
    with pytest.raises(ImageSizeError, match="too large for faithful mode"):
        prepare(np.zeros((side + 16, side, 3), np.uint8), "center", "faithful", 64, 16)


def test_work_units_stay_uint8_until_restored():
    """Crops mode keeps views of the decoded image; the float copy is made when the unit's batch is restored."""
    rgb = np.random.default_rng(1).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    units = prepare(rgb, "grid:4", "crops", 64, 16)
    assert len(units) == 16 and all(u.pixels.dtype == np.uint8 and np.shares_memory(u.pixels, rgb) for u in units)
    assert units[5].shape == (3, 64, 64) and units[5].x.dtype == np.float32

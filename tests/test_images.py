"""Every kind of bad or unusual input of the image decoder."""

import re

import numpy as np
import pytest
from PIL import Image

from diffv2iqa_trt.runtime.images import ImageDecodeError, expand_paths, load_image


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8 % 256, y * 12 % 256, (x + y) * 4 % 256], axis=2).astype(np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)


def test_exif_orientation_is_applied(tmp_path):
    rgb = _gradient(20, 30)
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (30, 20, 3)  # upright: width and height swap
    expected = np.asarray(Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270))
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4  # JPEG loss only


def test_grayscale_replicated(tmp_path):
    g = _gradient()[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_sixteen_bit_scaled_to_eight(tmp_path):
    g16 = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 1], np.rint(g16 / 65535 * 255).astype(np.uint8))


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255  # one opaque pixel
    rgba[1, 1, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])
    assert abs(int(out[1, 1, 1]) - 127) <= 1  # half transparent over white: 255 * (1 - 128/255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 255] + [10, 20, 30] * 255)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[2, 2], [255, 255, 255])  # transparent index shows white


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


@pytest.mark.parametrize("content,reason", [(b"not an image at all", "not an image"),
                                            (b"", "not an image")])
def test_non_image_files(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_image(p)
    assert str(p) in str(info.value)


def test_truncated_file(tmp_path):
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated") as info:
        load_image(tmp_path / "cut.png")
    assert "cut.png" in str(info.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path)


def test_expand_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_paths([tmp_path, tmp_path / "explicit.bin"])
    assert [p.name for p in found] == ["a.JPG", "b.png", "c.webp", "explicit.bin"]


def test_pixel_cap(tmp_path):
    Image.fromarray(_gradient(20, 30)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageDecodeError, match=r"30x20 = 0\.0 megapixels, above the limit .*\(at least 600\)"):
        load_image(tmp_path / "a.png", max_pixels=599)
    from diffv2iqa_trt.errors import ConfigError

    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="--max-pixels"):
            load_image(tmp_path / "a.png", max_pixels=bad)


def test_expand_paths_keeps_odd_entries_and_searches_image_named_folders(tmp_path):
    (tmp_path / "dir.png").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "dir.png" / "inner.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    found = expand_paths([tmp_path])
    assert [p.name for p in found] == ["broken.png", "inner.png"]
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(found[0])


# --- issue 22, case 11a: the conversion to RGB runs in strips -------------------------------------------------------

def _whole_image_rgb(img):
    """The conversion as it was done on the whole image at once (the rules of runtime/images.py), for comparison."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N") or mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if mode != "I" or a.max(initial=0.0) > 255:
            a = a / 65535.0 * 255.0
        return np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.nan_to_num(np.asarray(img, dtype=np.float64))), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _every_mode(tmp_path, h=21, w=30):
    """One file per decoder mode the conversion distinguishes, with values that exercise its rules."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    files = {}

    def save(name, img, **kw):
        img.save(tmp_path / name, **kw)
        files[name] = tmp_path / name

    save("rgb.png", Image.fromarray(rgb))
    save("rgb.ppm", Image.fromarray(rgb))  # raw pixels: Pillow maps them from the file
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("g16.png", Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)))
    save("g16_low.png", Image.fromarray(rng.integers(0, 200, (h, w), dtype=np.uint16)))
    save("i32.tif", Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.int32)))
    save("i32_low.tif", Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.int32)))
    f = rng.normal(128, 100, (h, w)).astype(np.float32)
    f[3, 4], f[5, 6] = np.nan, np.inf
    save("float.tif", Image.fromarray(f))
    save("rgba.png", Image.fromarray(np.dstack([rgb, alpha])))
    save("la.png", Image.fromarray(np.dstack([rgb[..., 1], alpha]), mode="LA"))
    pal = Image.fromarray(rgb).quantize(64)
    save("p_transparent.png", pal, transparency=3)
    save("p.png", pal)
    save("bilevel.png", Image.fromarray(rgb[..., 2] > 127))
    save("cmyk.jpg", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").convert("CMYK"), quality=95)
    return files


@pytest.mark.parametrize("strip_pixels", [1, 64, 1 << 20])
def test_strips_convert_exactly_like_the_whole_image(tmp_path, monkeypatch, strip_pixels):
    """One-row strips, strips of two rows with a shorter last one (21 rows), and the whole image as one strip all give
    the bytes the whole-image conversion gives, in every mode."""
    from diffv2iqa_trt.runtime import images

    files = _every_mode(tmp_path)
    monkeypatch.setattr(images, "_STRIP_PIXELS", strip_pixels)
    for name, path in files.items():
        with Image.open(path) as img:
            img.load()
            expected = _whole_image_rgb(img)
        got = load_image(path)
        assert got.shape == (21, 30, 3) and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_sixteen_bit_image_is_converted_without_whole_image_temporaries(tmp_path):
    """Before: 16-bit grey went through float64 arrays of the whole image (8 bytes per pixel, several at once): a
    100-megapixel PNG of 190 kB cost 2.65 GB. Now the NumPy allocations are the 3-byte RGB result and one strip."""
    import tracemalloc

    h, w = 3000, 4000
    g16 = np.zeros((h, w), np.uint16)
    g16[::3, ::7] = 65535
    Image.fromarray(g16).save(tmp_path / "big16.png")
    tracemalloc.start()
    try:
        out = load_image(tmp_path / "big16.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (h, w, 3) and out[0, 0, 0] == 255 and out[0, 1, 0] == 0 and out[1, 0, 0] == 0
    # measured: 44.3 MiB, of which 34.3 MiB is the result; the whole-image float64 conversion peaked near 300 MiB
    assert peak < 3 * h * w + (16 << 20), peak / 2**20


# --- issue 22, case 9: one rule for each file Pillow and the C++ decoder (libpng) once read differently ---------------

HOSTILE = __import__("pathlib").Path(__file__).resolve().parent / "data" / "hostile"


@pytest.fixture(scope="module")
def hostile_images(tmp_path_factory):
    """The shared files of tests/data/hostile/images (index.json) and the 200 MB ones made here: {path: entry}."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("make_images", HOSTILE / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    index = json.loads((HOSTILE / "images" / "index.json").read_text(encoding="utf-8"))
    assert index == module.index()  # the committed files are the generator's
    for name, (data, *_) in module.CASES.items():
        assert (HOSTILE / "images" / name).read_bytes() == data, name
    folder = tmp_path_factory.mktemp("hostile-images")
    large = module.write_large(folder)
    return {**{HOSTILE / "images" / n: e for n, e in index.items()}, **{folder / n: e for n, e in large.items()}}


def test_hostile_images_follow_the_shared_rules(hostile_images):
    """Before: Pillow refused a short or garbled eXIf, a zTXt/iCCP inflating past 1 MB and a short RGB tRNS, and
    decoded a palette PNG without PLTE (black), an over-long tRNS (used), a P6 comment right after a number (read
    "2#c\\n2" as 22) or before the pixels (as pixels) and a PPM with bytes after its pixels."""
    for path, entry in hostile_images.items():
        if entry["accept"]:
            rgb = load_image(path)
            assert rgb.dtype == np.uint8 and rgb.shape[2] == 3, path.name
        else:
            with pytest.raises(ImageDecodeError, match=re.escape(entry["python"])):
                load_image(path)


def test_metadata_chunks_are_not_shown_to_pillow(hostile_images):
    """The PNG without its text and ICC chunks decodes to the same pixels, upright by its eXIf."""
    files = hostile_images
    plain = load_image(HOSTILE / "images" / "exif-short.png")
    assert plain.shape == (3, 4, 3) and plain[0, :2].tolist() == [[0, 1, 2], [3, 4, 5]]
    for name in ("ztxt-2mb-inflated.png", "ztxt-200mb-inflated.png", "iccp-200mb-inflated.png", "iccp-200mb-chunk.png",
                 "exif-app1-prefix-rotated.png", "exif-not-tiff.png", "exif-orientation-9.png"):
        [path] = [p for p in files if p.name == name]
        np.testing.assert_array_equal(load_image(path), plain, err_msg=name)
    # a TIFF eXIf is applied, before or after the image data
    rotated = load_image(HOSTILE / "images" / "exif-after-idat-rotated.png")
    np.testing.assert_array_equal(rotated, np.rot90(plain, -1))

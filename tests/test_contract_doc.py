"""docs/bundle.md's scoring contract and the code agree: the worked numbers in the doc are recomputed here.

The doc is what a port (C++, CUDA, another language) implements from; if the code changes a rule, this test fails
until the doc says the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from diffv2iqa_trt.contract import normalise_uint8
from diffv2iqa_trt.runtime import philox
from diffv2iqa_trt.runtime.crops import crop_boxes, prepare, upscale_to_fit
from diffv2iqa_trt.runtime.noise import GENERATOR
from diffv2iqa_trt.runtime.pipeline import _aggregate
from diffv2iqa_trt.runtime.resize import RESIZE, resize_rgb, taps

DOC = Path(__file__).resolve().parents[1] / "docs" / "bundle.md"
S, MULTIPLE = 224, 16


@pytest.fixture(scope="module")
def worked() -> dict:
    text = DOC.read_text()
    section = text[text.index("## The scoring contract"):]
    block = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert block is not None, "the worked-numbers block is missing from docs/bundle.md"
    return json.loads(block.group(1))


def _boxes(policy: str, image: list[int]) -> list[list[int]]:
    return [list(b) for b in crop_boxes(policy, image[0], image[1], S)]


def test_crop_placement(worked: dict) -> None:
    for policy in ("center", "five", "grid:3"):
        assert _boxes(policy, worked[policy]["image"]) == worked[policy]["boxes"], policy
    g4 = worked["grid:4"]
    boxes = _boxes("grid:4", g4["image"])
    assert boxes[:4] == g4["boxes_first_row"] and [b[0] for b in boxes[::4]] == g4["tops"]
    ties = worked["grid:3 (ties round half to even)"]
    boxes = _boxes("grid:3", ties["image"])
    assert [b[0] for b in boxes[::3]] == ties["tops"] and [b[1] for b in boxes[:3]] == ties["lefts"]


def test_small_image_rule_and_faithful_size(worked: dict) -> None:
    small = worked["small_image"]
    assert list(upscale_to_fit(np.zeros((*small["image"], 3), np.uint8), S).shape[:2]) == small["upscaled"]
    faithful = worked["faithful_size"]
    units = prepare(np.zeros((*faithful["image"], 3), np.uint8), "center", "faithful", S, MULTIPLE)
    assert list(units[0].pixels.shape[:2]) == faithful["restored"]
    # crops mode restores each box on its own, at S x S
    units = prepare(np.zeros((*faithful["image"], 3), np.uint8), "five", "crops", S, MULTIPLE)
    assert len(units) == 5 and all(u.shape == (3, S, S) and u.boxes == ((0, 0),) for u in units)


def test_normalisation(worked: dict) -> None:
    for value, expected in worked["normalisation"].items():
        got = normalise_uint8(np.array([int(value)], np.uint8))[0]
        assert float(got) == expected and got.dtype == np.float32


def test_crop_mean_and_fusion(worked: dict) -> None:
    w = worked["crop_mean_and_fusion"]
    n = len(w["vcg"])
    [score] = _aggregate([0] * n, np.array(w["vcg"], np.float32), np.array(w["vda"], np.float32), 1, *w["weights"])
    assert (score.vcg, score.vda, score.score) == (w["mean_vcg"], w["mean_vda"], w["score"])
    # Left to right in float64: the doc's rule, not NumPy's pairwise sum (they differ on some 9-crop grids).
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1e-8], np.float32)
    total = 0.0
    for v in values:
        total += float(v)
    [nine] = _aggregate([0] * 9, values, values, 1, 1.0, 0.0)
    assert nine.score == total / 9 and nine.vda is None


def test_resize_taps_and_a_worked_resize(worked: dict) -> None:
    for key, (n, size) in (("resize_taps_5_to_2", (5, 2)), ("resize_taps_3_to_5", (3, 5))):
        index, weight = taps(n, size)
        doc = worked[key]
        assert index[:, 0].tolist() == doc["lo"], key
        for row, want in zip(weight, doc["weights"], strict=True):
            # the table pads rows with zero weights at the end; the doc lists the real taps only
            assert row[: len(want)].tolist() == want and not row[len(want):].any(), key
    r = worked["resize_2x3_to_3x5"]
    red = np.array(r["red"], np.uint8)
    assert (r["green"], r["blue"]) == ("255 - red", "red // 2")
    out = resize_rgb(np.stack([red, 255 - red, red // 2], axis=2), 3, 5)
    for c, name in enumerate(("out_red", "out_green", "out_blue")):
        assert out[..., c].tolist() == r[name], name


def test_noise_generator_numbers(worked: dict) -> None:
    kat = worked["philox_known_answer"]
    block = philox.philox4x32_10(np.array([kat["counter"]], np.uint32), tuple(kat["key"]))[0]
    assert [f"0x{int(v):08x}" for v in block] == kat["block"]
    row = philox.normal_row(0, 0, (3, 2, 2)).reshape(-1)
    doc = worked["noise_seed0_row0_shape_3x2x2"]
    assert [f"0x{int(b):08x}" for b in row.view(np.uint32)[:8]] == doc["first8_bits"]
    assert [float(v) for v in row[:8]] == doc["first8"]
    row = philox.normal_row(2**64 - 1, 7, (3, 2, 2)).reshape(-1)
    assert [f"0x{int(b):08x}" for b in row.view(np.uint32)[:4]] == worked["noise_seed2^64-1_row7_shape_3x2x2"][
        "first4_bits"]


def test_doc_names_the_ids_the_bundle_records() -> None:
    text = DOC.read_text()
    assert f"`pipeline.resize` = `{RESIZE}`" in text
    assert f"`pipeline.noise.generator` = `{GENERATOR}`" in text
    assert f"`{philox.TABLE_SHA256}`" in text


# --- what a port needs besides the prose (issue 22, "the format document") -------------------------------------------

DOCS = DOC.parent
ANGLE_TABLE = DOCS / "philox_angle_table.txt"
SCHEMA_COPY = DOCS / "manifest.schema.json"


def angle_table_text() -> str:
    """docs/philox_angle_table.txt as the code's table gives it: CT[j] and ST[j] as exact hex floats (float.hex)."""
    head = ("# The Box-Muller angle table of the noise generator (docs/bundle.md, \"The noise generator\"):\n"
            "# j, CT[j] = the float64 nearest cos(2 pi j / 1024), ST[j] = the float64 nearest sin(2 pi j / 1024),\n"
            "# as exact hexadecimal floats (C99/C++17 literals and strtod read them; Python: float.fromhex).\n"
            f"# sha256 of the 1024 little-endian float64 pairs CT[0], ST[0], CT[1], ...: {philox.TABLE_SHA256}\n"
            "# Generated from diffv2iqa_trt/runtime/philox.py (TABLE): python tests/test_contract_doc.py --write\n")
    return head + "".join(f"{j} {float(c).hex()} {float(s).hex()}\n" for j, (c, s) in enumerate(philox.TABLE))


def test_published_angle_table_is_the_codes_table() -> None:
    """Before: the doc gave only the table's sha256 and "the nearest float64 to cos/sin" (a port using its libm's
    double cos got 1208 of 2048 entries wrong); the table is now published entry by entry."""
    text = ANGLE_TABLE.read_text(encoding="ascii")
    assert text == angle_table_text()
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == list(range(1024))
    table = np.array([[float.fromhex(r[1]), float.fromhex(r[2])] for r in rows])
    assert hashlib.sha256(table.astype("<f8").tobytes()).hexdigest() == philox.TABLE_SHA256
    assert f"`{philox.TABLE_SHA256}`" in DOC.read_text() and "docs/philox_angle_table.txt" in DOC.read_text()
    # exact at the quarter turns, as the doc says; +0.0, never -0.0
    for j, (c, s) in {0: (1.0, 0.0), 256: (0.0, 1.0), 512: (-1.0, 0.0), 768: (0.0, -1.0)}.items():
        assert (table[j, 0], table[j, 1]) == (c, s) and not np.signbit(table[j][table[j] == 0]).any()
    # what a port gets from libm instead: the nearest float64 is not what double cos/sin give everywhere
    libm = np.array([[math.cos(2 * math.pi * j / 1024), math.sin(2 * math.pi * j / 1024)] for j in range(1024)])
    assert (libm != table).sum() > 500  # 1208 of 2048 with glibc 2.36


def test_schema_ships_beside_the_doc() -> None:
    """The JSON Schema was only inside the package; docs/manifest.schema.json is a byte-identical copy."""
    package = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "bundle" / "manifest.schema.json"
    assert SCHEMA_COPY.read_bytes() == package.read_bytes()
    assert "docs/manifest.schema.json" in DOC.read_text()


def test_doc_documents_the_fields_only_the_schema_described() -> None:
    text = DOC.read_text()
    for field in ("`files`", "`bytes`", "`row_sha256`", "`first8_bits`", "`noise_seed`", "`crop_count`",
                  "`images[].height`", "`images[].file`", "`runtime`"):
        assert field in text, field
    # the fusion weights are float64 on both sides (Python floats; C++ double): the doc must not call them float32
    assert "fusion weights are float32" not in text and "float32 `gamma`/`coef`/fusion weights" not in text
    assert "`vcg_weight` and `vda_weight` are float64" in text


def test_doc_names_the_onnxruntime_version_of_its_bit_identity() -> None:
    import onnxruntime

    m = re.search(r"bit for bit on ONNX Runtime (\d+\.\d+\.\d+)", DOC.read_text())
    assert m is not None and m.group(1) == onnxruntime.__version__


def test_doc_sizes_are_height_by_width() -> None:
    """The doc writes sizes as height x width (NumPy's order, the manifest's [height, width]); the CLI's messages write
    width x height. The golden coffee crop is 20 rows by 30 columns, as the doc says."""
    from diffv2iqa_trt.golden import golden_inputs, read_ppm

    text = DOC.read_text()
    assert "height × width" in text and "width x height" in text
    sizes = {path.name: read_ppm(path).shape[:2] for path in golden_inputs()}
    assert sizes == {"astronaut-64x64.ppm": (64, 64), "coffee-20x30.ppm": (20, 30)}, sizes
    assert "a 20×30 (height × width) crop of `coffee`" in text


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        ANGLE_TABLE.write_text(angle_table_text(), encoding="ascii")

"""docs/bundle.md's scoring contract and the code agree: the worked numbers in the doc are recomputed here.

The doc is what a port (C++, CUDA, another language) implements from; if the code changes a rule, this test fails
until the doc says the same.
"""

from __future__ import annotations

import json
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

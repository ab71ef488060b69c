"""Golden scores: small decoded test images a bundle carries with the scores the Python runtime gives them, so a port
(the C++ tool in cpp/, or anyone's) checks itself against the bundle in one command.

The inputs are binary PPM files (P6, maxval 255): the RGB bytes themselves, so no image decoder enters the check.
They ship in the package (diffv2iqa_trt/data/golden/, made by scripts/make_golden_inputs.py from scikit-image
photographs); `build` copies them into the bundle and scores each in both modes with the bundle's crop policy on
ONNX Runtime (CPU, FP32 graphs).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageDecodeError
from .runtime.executor import Executor
from .runtime.pipeline import Pipeline, PipelineSpec

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
BUNDLE_DIR = "golden"  # the inputs' folder inside a bundle
MODES = ("crops", "faithful")
_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")  # one whitespace byte ends the header
MAX_PPM_SIDE = 65535


def write_ppm(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    Path(path).write_bytes(b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(rgb).tobytes())


def read_ppm(path: str | os.PathLike[str]) -> np.ndarray:
    """A binary PPM (P6, maxval 255, no comments) as uint8 (H, W, 3); ImageDecodeError naming the file otherwise."""
    data = Path(path).read_bytes()
    m = _PPM_HEADER.match(data)
    if m is None:
        raise ImageDecodeError(Path(path), "not a binary PPM with maxval 255 (P6 W H 255)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (0 < w <= MAX_PPM_SIDE and 0 < h <= MAX_PPM_SIDE) or len(data) - m.end() != w * h * 3:
        raise ImageDecodeError(Path(path), f"PPM of {w}x{h} pixels has {len(data) - m.end()} bytes of pixels, "
                                           f"expected {w * h * 3}")
    return np.frombuffer(data, np.uint8, offset=m.end()).reshape(h, w, 3).copy()


def golden_inputs() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*.ppm"))


def score_golden(executor: Executor, spec: PipelineSpec, inputs: Sequence[Path]) -> dict[str, Any]:
    """The manifest's `golden` section (file names as in the bundle): every input scored in both modes with the
    spec's crop policy and noise seed."""
    images = []
    for path in inputs:
        rgb = read_ppm(path)
        cases = []
        for mode in MODES:
            result = Pipeline(executor, dataclasses.replace(spec, mode=mode)).score([rgb])[0]
            cases.append({"mode": mode, "crops": spec.crops, "score": result.score, "vcg": result.vcg,
                          "vda": result.vda, "crop_count": result.crops})
        images.append({"file": f"{BUNDLE_DIR}/{path.name}", "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                       "scores": cases})
    return {"runtime": "diffv2iqa-trt onnxruntime-cpu, fp32 graphs", "noise_seed": spec.noise_seed,
            "images": images}

"""Triton requests in, `Scorer` results out: the part the repository's two Python-backend models share.

Runs inside Triton's Python backend (`pb_utils` is its `triton_python_backend_utils` module, passed in so the code can
be exercised against a stand-in). One batch item is one image: `image` (BYTES, an encoded file) or `pixels` (UINT8,
H x W x 3). Every image of every request of an `execute` call is scored in one `Scorer.score` call, so the pipeline
forms its batches across requests; an image that cannot be scored is that item's `error`, never its neighbours'.
As with `diffv2iqa-trt serve`, a request that carries both inputs has the reason as the error of each of its rows,
and so does every request of a call whose scoring failed as a whole (a graph model not loaded, a graph that breaks
the contract). (Triton itself refuses a request without inputs.)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...api import Scorer, ScoreResult
from ...errors import DiffV2IQAError, ImageDecodeError
from ...runtime.images import load_image

IMAGE = "image"
PIXELS = "pixels"
FLOAT_OUTPUTS = ("score", "vcg", "vda")
CROPS = "crops"
ERROR = "error"


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The `parameters` of a model's config.pbtxt (Triton hands the config as JSON in args["model_config"])."""
    config = json.loads(args["model_config"])
    return {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}


def version_dir(args: Mapping[str, str]) -> Path:
    """The model's version folder (where model.py and the files beside it are)."""
    return Path(args["model_repository"]) / str(args["model_version"])


def decode_image_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """An encoded image (PNG, JPEG, PPM, ...) decoded by the runtime's checked decoder, as `score` decodes a file
    (same rules, same pixel limit, same error texts). ImageDecodeError otherwise."""
    if not data:
        raise ImageDecodeError("<request>", "empty image bytes")
    fd, name = tempfile.mkstemp(prefix="diffv2iqa-request-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_image(name, max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError("<request>", exc.reason) from None
    finally:
        os.unlink(name)


def _optional_input(pb_utils: Any, request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.asarray(tensor.as_numpy())


def request_items(pb_utils: Any, request: Any, max_pixels: int) -> list[np.ndarray | str]:
    """The request's batch items: an RGB uint8 array to score, or the reason it cannot be scored. ValueError for a
    request that is malformed as a whole."""
    image, pixels = _optional_input(pb_utils, request, IMAGE), _optional_input(pb_utils, request, PIXELS)
    if (image is None) == (pixels is None):
        given = "both" if image is not None else "neither"
        raise ValueError(f"a request carries exactly one of the inputs {IMAGE!r} (encoded bytes) or {PIXELS!r} "
                         f"(HxWx3 uint8); this one has {given}")
    if pixels is not None:
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"{PIXELS!r} must be uint8 [batch, height, width, 3], got {pixels.dtype} "
                             f"{list(pixels.shape)}")
        return [np.ascontiguousarray(p) for p in pixels]
    assert image is not None
    if image.ndim != 2 or image.shape[1] != 1:
        raise ValueError(f"{IMAGE!r} must be BYTES [batch, 1], got shape {list(image.shape)}")
    items: list[np.ndarray | str] = []
    for value in image[:, 0]:
        try:
            items.append(decode_image_bytes(bytes(value), max_pixels))
        except ImageDecodeError as exc:
            items.append(exc.reason)
    return items


def _row(result: ScoreResult | str) -> tuple[float, float, float, int, str]:
    if isinstance(result, str):
        return math.nan, math.nan, math.nan, 0, result
    if result.error is not None or result.score is None:
        return math.nan, math.nan, math.nan, 0, result.error or "not scored"
    vcg = math.nan if result.vcg is None else result.vcg
    vda = math.nan if result.vda is None else result.vda
    return result.score, vcg, vda, result.crops, ""


def response_arrays(results: Sequence[ScoreResult | str]) -> dict[str, np.ndarray]:
    """One request's outputs, [batch, 1] each, as the config declares them."""
    rows = [_row(r) for r in results]
    out: dict[str, np.ndarray] = {name: np.array([[row[i]] for row in rows], dtype=np.float64).reshape(len(rows), 1)
           for i, name in enumerate(FLOAT_OUTPUTS)}
    out[CROPS] = np.array([[row[3]] for row in rows], dtype=np.int32).reshape(len(rows), 1)
    out[ERROR] = np.array([[row[4].encode("utf-8")] for row in rows], dtype=np.object_).reshape(len(rows), 1)
    return out


def _rows(pb_utils: Any, request: Any) -> int:
    """A request's batch size (1 when no input says: one error row)."""
    arrays = [a for name in (IMAGE, PIXELS) if (a := _optional_input(pb_utils, request, name)) is not None]
    return max((int(a.shape[0]) for a in arrays if a.ndim > 0), default=1)


def execute(pb_utils: Any, scorer: Scorer, requests: Sequence[Any], max_pixels: int) -> list[Any]:
    """One response per request, in order (the Python backend's `execute`)."""
    parsed: list[list[np.ndarray | str]] = []
    for request in requests:
        try:
            parsed.append(request_items(pb_utils, request, max_pixels))
        except ValueError as exc:  # malformed as a whole: every row of it is that error
            parsed.append([str(exc)] * _rows(pb_utils, request))
    images = [item for items in parsed for item in items if not isinstance(item, str)]
    try:
        scored = iter(scorer.score(images) if images else [])
    except DiffV2IQAError as exc:  # the model itself failed (a graph model not ready, a broken graph): every row
        failure = f"scoring failed on the server: {type(exc).__name__}: {exc}"
        parsed = [[failure] * len(items) for items in parsed]
        scored = iter([])
    responses = []
    for items in parsed:
        results: list[ScoreResult | str] = [item if isinstance(item, str) else next(scored) for item in items]
        responses.append(pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, array) for name, array in response_arrays(results).items()]))
    return responses

"""The `diffv2iqa` Triton model's interface: request tensors -> Scorer inputs, Scorer results -> response tensors.

One model, `diffv2iqa`; every tensor has Triton's batch dimension first (max_batch_size > 0), so a request carries
one image per row, and the dynamic batcher joins requests into one `Scorer.score` call.

Inputs (exactly one of them per request):
- `image`  BYTES [1]: an encoded image (PNG, JPEG, PPM, any format the runtime's decoder reads), decoded by the
  runtime's checked decoder (runtime/images.py: the same header checks, pixel limit and conversions as
  `diffv2iqa-trt score` on a file);
- `pixels` UINT8 [-1, -1, 3]: an RGB image, height x width x 3.
Outputs: `score`, `vcg`, `vda` FP64 [1] (NaN where the image was not scored, or a branch was not run), `crops` INT32
[1] (0 when not scored) and `error` BYTES [1] (UTF-8; empty when the image was scored).

An image that cannot be scored is an error in its own row; its neighbours in the batch are scored. Request parameters
`crops` and `mode`, when given, must name the server's own policy (a per-request policy is not supported: start a
server with `--crops`/`--mode`); other parameters are ignored.

No PyTriton here: the functions take anything with `.data` (input name -> array) and `.parameters` (a dict or None),
which is what PyTriton's `Request` is, so they run and are tested without a server.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..api import Scorer

__all__ = ["IMAGE", "INPUTS", "MODEL_NAME", "OUTPUTS", "PIXELS", "PlainRequest", "RequestLimits", "ServedRequest",
           "error_responses", "score_requests"]

MODEL_NAME = "diffv2iqa"
IMAGE, PIXELS = "image", "pixels"
INPUTS = (IMAGE, PIXELS)
OUTPUTS = ("score", "vcg", "vda", "crops", "error")
DEFAULT_MAX_IMAGE_BYTES = 64 << 20  # an encoded image above this is refused unread (a 100-megapixel JPEG is ~30 MB)


class ServedRequest(Protocol):
    """What the infer function is given per request (PyTriton's `Request` has both)."""

    @property
    def data(self) -> Mapping[str, np.ndarray]: ...

    @property
    def parameters(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class PlainRequest:
    """A ServedRequest made here (the warm-up's, or a Python-backend request converted by the exported models)."""

    data: Mapping[str, np.ndarray]
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RequestLimits:
    """What one request row may carry; the pixel limit itself is the Scorer's (`max_pixels`)."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    crops: str = "center"  # the server's policy: a request naming another one is refused
    mode: str = "crops"


@dataclass
class _Rows:
    """The rows of one batch of requests: per row a Scorer input or the reason it has none."""

    inputs: list[np.ndarray | Path | str] = field(default_factory=list)  # str: the row's error
    counts: list[int] = field(default_factory=list)  # rows per request


def _rows_of(request: ServedRequest) -> int:
    """The request's batch size (1 when it has no input at all: one error row)."""
    arrays = [request.data[name] for name in INPUTS if name in request.data]
    return max((int(a.shape[0]) for a in arrays if a.ndim > 0), default=1)


def _request_error(request: ServedRequest, limits: RequestLimits) -> str | None:
    present = [name for name in INPUTS if name in request.data]
    if len(present) != 1:
        given = " and ".join(present) or "neither"
        return f"a request carries exactly one of the inputs '{IMAGE}' (encoded bytes) or '{PIXELS}' (HxWx3 uint8); " \
               f"this one has {given}"
    for name, served in (("crops", limits.crops), ("mode", limits.mode)):
        asked = (request.parameters or {}).get(name)
        if asked is not None and str(asked) != served:
            return f"this server scores with {name}={served}; a per-request {name} is not supported (asked for " \
                   f"{asked!r}): start a server with --{name} {asked}"
    return None


def _write_encoded(value: object, folder: Path, counter: itertools.count[int], limits: RequestLimits) -> Path | str:
    """One `image` row as a file of its bytes in `folder` (the runtime's checked decoder reads files), or the reason
    it is refused unread."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.item()
    if not isinstance(value, bytes | bytearray | memoryview):
        return f"the '{IMAGE}' input must hold the encoded image as bytes, got {type(value).__name__}"
    size = len(value)
    if size == 0:
        return f"the '{IMAGE}' input is empty (0 bytes): send the encoded image file's bytes"
    if size > limits.max_image_bytes:
        return f"the encoded image is {size:,} bytes, above the server's limit of {limits.max_image_bytes:,} bytes " \
               "(--max-image-bytes)"
    path = folder / f"{next(counter)}.img"
    with open(path, "wb") as f:
        f.write(value)
    return path


def _collect(requests: Sequence[ServedRequest], limits: RequestLimits, folder: Path,
             counter: itertools.count[int]) -> _Rows:
    rows = _Rows()
    for request in requests:
        count = _rows_of(request)
        rows.counts.append(count)
        error = _request_error(request, limits)
        if error is not None:
            rows.inputs.extend([error] * count)
        elif IMAGE in request.data:
            encoded = request.data[IMAGE].reshape(count, -1)  # Triton gives (count, 1)
            rows.inputs.extend(_write_encoded(encoded[i, 0], folder, counter, limits) for i in range(count))
        else:
            pixels = request.data[PIXELS]
            rows.inputs.extend(pixels[i] for i in range(count))  # shape and dtype are the Scorer's to check
    return rows


def _response(results: Sequence[tuple[float, float, float, int, str]]) -> dict[str, np.ndarray]:
    n = len(results)
    score, vcg, vda, crops, error = zip(*results, strict=True) if n else ((),) * 5
    return {"score": np.array(score, np.float64).reshape(n, 1), "vcg": np.array(vcg, np.float64).reshape(n, 1),
            "vda": np.array(vda, np.float64).reshape(n, 1), "crops": np.array(crops, np.int32).reshape(n, 1),
            "error": np.array([e.encode("utf-8", "backslashreplace") for e in error], dtype=object).reshape(n, 1)}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def score_requests(scorer: Scorer, requests: Sequence[ServedRequest], limits: RequestLimits,
                   scratch: str | os.PathLike[str] | None = None) -> list[dict[str, np.ndarray]]:
    """One response (output name -> array, batch dimension first) per request, in order: every row that can be
    scored is scored in one `scorer.score` call; a row that cannot is an error in its own response row. Encoded
    images are written to a temporary folder under `scratch` (default: the system's) for the decoder and deleted
    before returning. Raises only what the Scorer raises for the whole batch (a backend failure)."""
    counter = itertools.count()
    with tempfile.TemporaryDirectory(prefix="diffv2iqa-serve-", dir=scratch) as folder:
        rows = _collect(requests, limits, Path(folder), counter)
        todo = [value for value in rows.inputs if not isinstance(value, str)]
        scored = iter(scorer.score(todo, chunk=max(1, len(todo)))) if todo else iter(())
        results: list[tuple[float, float, float, int, str]] = []
        for value in rows.inputs:
            if isinstance(value, str):
                results.append((float("nan"), float("nan"), float("nan"), 0, value))
                continue
            r = next(scored)
            if r.error is not None or r.score is None:
                results.append((float("nan"), float("nan"), float("nan"), 0, r.error or "not scored"))
            else:
                results.append((r.score, _nan(r.vcg), _nan(r.vda), r.crops, ""))
    responses, start = [], 0
    for count in rows.counts:
        responses.append(_response(results[start:start + count]))
        start += count
    return responses


def error_responses(requests: Sequence[ServedRequest], reason: str) -> list[dict[str, np.ndarray]]:
    """Every row of every request unscored with `reason` (a failure of the whole batch, e.g. the backend's)."""
    return [_response([(float("nan"), float("nan"), float("nan"), 0, reason)] * _rows_of(r)) for r in requests]

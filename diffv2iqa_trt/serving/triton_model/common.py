"""Triton requests in, `Scorer` results out: the part the repository's two Python-backend models share.

Runs inside Triton's Python backend (`pb_utils` is its `triton_python_backend_utils` module, passed in so the code can
be exercised against a stand-in). The interface is `serve`'s, answered by the same code (serving/requests.py): one
batch item is one image, `image` (BYTES, an encoded file) or `pixels` (UINT8, H x W x 3); every image of every
request of an `execute` call is scored in one `Scorer.score` call, so the pipeline forms its batches across requests;
an image that cannot be scored is that item's `error`, never its neighbours'. A request that carries both inputs has
the reason as the error of each of its rows, and so does every request of a call whose scoring failed as a whole (a
graph model not loaded, a graph that breaks the contract). (Triton itself refuses a request without inputs.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...api import Scorer
from ...errors import DiffV2IQAError
from ..requests import INPUTS, PlainRequest, RequestLimits, error_responses, score_requests


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The `parameters` of a model's config.pbtxt (Triton hands the config as JSON in args["model_config"])."""
    config = json.loads(args["model_config"])
    return {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}


def version_dir(args: Mapping[str, str]) -> Path:
    """The model's version folder (where model.py and the files beside it are)."""
    return Path(args["model_repository"]) / str(args["model_version"])


def _served(pb_utils: Any, request: Any) -> PlainRequest:
    """A Python-backend request as serving/requests.py takes one (PyTriton's `Request` has the same two fields)."""
    data = {}
    for name in INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            data[name] = np.asarray(tensor.as_numpy())
    parameters = getattr(request, "parameters", None)
    text = parameters() if callable(parameters) else None  # the Python backend gives them as a JSON string
    return PlainRequest(data, json.loads(text) if text else None)


def execute(pb_utils: Any, scorer: Scorer, requests: Sequence[Any]) -> list[Any]:
    """One response per request, in order (the Python backend's `execute`), answered by the interface `serve` uses
    (serving/requests.py: the same checks, error texts and one `Scorer.score` call for the whole batch)."""
    served = [_served(pb_utils, r) for r in requests]
    limits = RequestLimits(crops=scorer.spec.crops, mode=scorer.spec.mode)
    try:
        outputs = score_requests(scorer, served, limits)
    except DiffV2IQAError as exc:  # the model itself failed (a graph model not ready, a broken graph): every row
        outputs = error_responses(served, f"scoring failed on the server: {type(exc).__name__}: {exc}")
    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in out.items()])
            for out in outputs]

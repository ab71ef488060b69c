"""The `diffv2iqa_local` model of an exported Triton repository: the whole scorer inside Triton's Python backend.

`diffv2iqa_trt.load(<this folder>/bundle, backend="onnxruntime")`, the same Scorer `diffv2iqa-trt score` runs, on
the copy of the bundle beside this file (verified when the model loads). It calls no other model, so it loads on any
Triton with the Python backend, given diffv2iqa-trt (with onnxruntime) in that backend's Python environment.
Config parameters: `precision` (a --precision plan; empty: the bundle's), `batch_size`, `threads` (ONNX Runtime
intra-op threads; empty: its default), `max_pixels` (empty: the toolkit's default).
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

import diffv2iqa_trt
from diffv2iqa_trt.runtime.images import DEFAULT_MAX_PIXELS
from diffv2iqa_trt.serving.triton_model.common import execute, model_parameters, version_dir


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        self.max_pixels = int(params.get("max_pixels") or DEFAULT_MAX_PIXELS)
        self.scorer = diffv2iqa_trt.load(version_dir(args) / "bundle", backend="onnxruntime",
                                         precision=params.get("precision") or None,
                                         batch_size=int(params.get("batch_size") or 8),
                                         threads=int(params["threads"]) if params.get("threads") else None,
                                         max_pixels=self.max_pixels)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute(pb_utils, self.scorer, requests)

    def finalize(self) -> None:
        self.scorer.close()

"""Numerical checks of an exported graph: ONNX Runtime (CPU) against torch, and the ONNX reference evaluator against
ONNX Runtime.

Errors are reported per output as `max_abs` (largest |onnx - reference|) and `max_rel` (largest elementwise
|onnx - reference| / |reference|, with the denominator floored at 1% of the reference's largest magnitude so that
elements near zero do not dominate).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from ..model.diffv2iqa import DiffV2IQA
from .graphs import graph_module, graph_spec

ArrayLike = Tensor | np.ndarray
Errors = dict[str, dict[str, float]]


def _numpy(inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    return {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in inputs.items()}


def errors(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max_abs and max_rel of `actual` against `reference` (same shape)."""
    if actual.shape != reference.shape:
        raise ValueError(f"shape mismatch: {actual.shape} vs reference {reference.shape}")
    a, r = actual.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(a - r)
    if diff.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0}
    floor = max(0.01 * float(np.max(np.abs(r))), float(np.finfo(np.float32).tiny))
    return {"max_abs": float(diff.max()), "max_rel": float(np.max(diff / np.maximum(np.abs(r), floor)))}


def ort_session(onnx_path: str | os.PathLike[str], *, threads: int = 0) -> ort.InferenceSession:
    """A CPU session with the default (full) graph optimisations, as a deployment would run it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers etc. are not ours to act on
    # Idle ORT workers otherwise spin for a while after each run and starve torch when both share the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(onnx_path: str | os.PathLike[str] | ort.InferenceSession, inputs: Mapping[str, ArrayLike]
                    ) -> dict[str, np.ndarray]:
    session = onnx_path if isinstance(onnx_path, ort.InferenceSession) else ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, _numpy(inputs)), strict=True))


@torch.no_grad()
def run_torch(model: DiffV2IQA, graph: str, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    spec = graph_spec(graph, model.config)
    args = [torch.as_tensor(_numpy(inputs)[name]) for name in spec.input_names]
    out = graph_module(model, graph)(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return {name: o.cpu().numpy() for name, o in zip(spec.output_names, outs, strict=True)}


def compare_with_torch(model: DiffV2IQA, graph: str, onnx_path: str | os.PathLike[str] | ort.InferenceSession,
                       inputs: Mapping[str, ArrayLike]) -> Errors:
    """Run `graph` in torch and the ONNX file in ONNX Runtime (CPU) on the same inputs; errors per output."""
    expected = run_torch(model, graph, inputs)
    actual = run_onnxruntime(onnx_path, inputs)
    missing = set(expected) - set(actual)
    if missing:
        raise ValueError(f"the ONNX graph lacks output(s) {sorted(missing)}; it has {sorted(actual)}")
    return {name: errors(actual[name], ref) for name, ref in expected.items()}


def compare_with_reference_evaluator(onnx_path: str | os.PathLike[str], inputs: Mapping[str, ArrayLike]) -> Errors:
    """Run the file in `onnx.reference.ReferenceEvaluator` (pure NumPy, slow: tiny models only) and in ONNX Runtime.

    The reference evaluator implements the ONNX specification directly, so agreement shows that ONNX Runtime's
    kernels and graph optimisations did not hide a graph that means something else than torch computed.
    """
    from onnx.reference import ReferenceEvaluator  # imported late: it pulls in every op implementation

    feeds = _numpy(inputs)
    evaluator = ReferenceEvaluator(str(onnx_path))
    names = list(evaluator.output_names)
    reference = dict(zip(names, evaluator.run(None, feeds), strict=True))
    actual = run_onnxruntime(onnx_path, feeds)
    return {name: errors(actual[name], np.asarray(reference[name])) for name in names}

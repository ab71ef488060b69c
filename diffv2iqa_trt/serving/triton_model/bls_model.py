"""The `diffv2iqa` model of an exported Triton repository: the scoring front, on Triton's Python backend.

It runs the toolkit's own host pipeline (decode, crops, the fixed-step loop, snapshot capture, crop assembly, fusion:
`diffv2iqa_trt.runtime.pipeline.Pipeline`) over an executor whose three graph calls are BLS requests to the
repository's graph models (`restore_step`, `vcg`, `vda`, or their `_trt` engines: the config's parameters name them).
So its scores are the toolkit's scores for the same graph outputs: same loop, same batches, same fusion.

Beside this file: `bundle/manifest.json` (the schedule, noise seed, crops, fusion and profiles) and `noise_bank.npy`
(the noise of a crop-size restoration, checked against the manifest's test vectors at load). Needs diffv2iqa-trt
installed in the Python backend's environment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from diffv2iqa_trt import __version__
from diffv2iqa_trt.api import Scorer
from diffv2iqa_trt.bundle.manifest import Manifest
from diffv2iqa_trt.bundle.store import read_manifest
from diffv2iqa_trt.contract import BRANCH_OUTPUT, RESTORE_OUTPUT, RESTORE_STEP, VCG, VDA
from diffv2iqa_trt.errors import BackendError, BundleError
from diffv2iqa_trt.runtime.batching import BatchLimits
from diffv2iqa_trt.runtime.images import DEFAULT_MAX_PIXELS
from diffv2iqa_trt.runtime.pipeline import Pipeline, PipelineSpec
from diffv2iqa_trt.scorers import Scorer as OpenedScorer
from diffv2iqa_trt.serving.triton_model.common import execute, model_parameters, version_dir


class BlsExecutor:
    """The executor interface (runtime/executor.py) over BLS: each graph call is an inference request to a model of
    the same Triton server. Handles are NumPy arrays."""

    name = "triton-bls"

    def __init__(self, models: Mapping[str, str], inputs: Mapping[str, tuple[str, ...]], plan: str) -> None:
        self.models = dict(models)  # graph -> Triton model name
        self.inputs = dict(inputs)  # graph -> input names, in the contract's order
        self.plan = plan

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def download(self, handle: np.ndarray) -> np.ndarray:
        return handle

    def _call(self, graph: str, output: str, *arrays: np.ndarray) -> np.ndarray:
        model = self.models[graph]
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=[output],
            inputs=[pb_utils.Tensor(name, a) for name, a in zip(self.inputs[graph], arrays, strict=True)])
        response = request.exec()
        if response.has_error():
            raise BackendError(f"the {graph} model {model!r} failed: {response.error().message()}")
        tensor = pb_utils.get_output_tensor_by_name(response, output)
        if tensor is None:
            raise BackendError(f"the {graph} model {model!r} returned no {output!r}")
        result: np.ndarray = np.asarray(tensor.as_numpy(), dtype=np.float32)
        return result

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
        return _shaped(RESTORE_STEP, self._call(RESTORE_STEP, RESTORE_OUTPUT, x, y, gamma, coef, z), y.shape)

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        # Triton batches the branch models: their (B,) score comes back as [B, 1] (config: dims [1], reshape []).
        return _shaped(VCG, self._call(VCG, BRANCH_OUTPUT, x, y0, yt1, yt2).reshape(-1), x.shape[:1])

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        return _shaped(VDA, self._call(VDA, BRANCH_OUTPUT, x, y0, yt1, yt2).reshape(-1), x.shape[:1])


def _shaped(graph: str, result: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if result.shape != tuple(expected):
        raise BackendError(f"the {graph} model returned shape {list(result.shape)}, the contract needs "
                           f"{list(expected)}")
    return result


@dataclass
class ShippedNoisePipeline(Pipeline):
    """The host pipeline, taking the noise bank of a resolution from the repository's file when it ships one."""

    shipped: Mapping[tuple[int, int], np.ndarray] = field(default_factory=dict)
    _shipped_handles: dict[tuple[int, int], tuple[np.ndarray, list[Any]]] = field(default_factory=dict, repr=False)

    def noise(self, height: int, width: int) -> tuple[np.ndarray, list[Any]]:
        key = (height, width)
        bank = self.shipped.get(key)
        if bank is None:
            return super().noise(height, width)
        if key not in self._shipped_handles:
            self._shipped_handles[key] = (bank[-1], [self.executor.upload(row[None]) for row in bank[:-1]])
        return self._shipped_handles[key]


def checked_bank(path: Any, manifest: Manifest) -> np.ndarray:
    """The shipped noise bank, refused unless every row's sha256 is the manifest's test vector (the same bank the
    toolkit's generator makes from the bundle's seed)."""
    p = manifest.pipeline
    bank: np.ndarray = np.load(path, allow_pickle=False)
    want = list(p.noise.test_vectors.get("row_sha256", []))
    shape = (p.steps + 1, 3, p.crop_size, p.crop_size)
    got = [hashlib.sha256(row.astype("<f4").tobytes()).hexdigest() for row in bank] if bank.shape == shape else []
    if bank.dtype != np.float32 or got != want:
        raise BundleError(f"{path}: the noise bank is not the bundle's (shape {list(bank.shape)} {bank.dtype}, "
                          f"expected {list(shape)} float32 with the manifest's row_sha256); export the repository "
                          "again", path=path)
    return bank


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args)
        here = version_dir(args)
        manifest_path = here / "bundle" / "manifest.json"
        manifest = Manifest.from_dict(read_manifest(manifest_path), source=manifest_path)
        if params.get("toolkit_version", __version__) != __version__:
            pb_utils.Logger.log_warn(f"diffv2iqa: repository written by diffv2iqa-trt {params['toolkit_version']}, "
                                     f"running with {__version__}")
        spec = PipelineSpec.from_manifest(manifest.pipeline)
        models = {RESTORE_STEP: params["restore_step_model"], VCG: params["vcg_model"], VDA: params["vda_model"]}
        executor = BlsExecutor(models, {g: manifest.graphs[g].input_names for g in models},
                               plan=", ".join(f"{g}={m}" for g, m in models.items()))
        # Engines refuse shapes outside their profiles; ONNX Runtime only needs the batch caps (as `score`).
        limits = BatchLimits.from_profiles({g: manifest.graphs[g].profiles for g in models},
                                           resolution=params.get("engines") == "1")
        bank = checked_bank(here / "noise_bank.npy", manifest)
        size = manifest.pipeline.crop_size
        pipeline = ShippedNoisePipeline(executor, spec, int(params["batch_size"]), limits=limits,
                                        shipped={(size, size): bank})
        self.max_pixels = int(params.get("max_pixels") or DEFAULT_MAX_PIXELS)
        self.scorer = Scorer(OpenedScorer(pipeline, manifest.model.label, manifest.model.trained), self.max_pixels)

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute(pb_utils, self.scorer, requests)

    def finalize(self) -> None:
        self.scorer.close()

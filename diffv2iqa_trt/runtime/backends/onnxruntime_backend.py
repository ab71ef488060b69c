"""ONNX Runtime executor: CPUExecutionProvider everywhere; CUDA and TensorRT execution providers with IOBinding.

On the CPU a handle is a NumPy array and each graph call is `session.run`. On CUDA (and the TensorRT EP) a handle is
an `OrtValue` in device memory and calls go through IOBinding, so the restoration loop stays on the GPU and only
snapshots and scores are copied back. The CUDA and TensorRT paths have not run in this project yet (no GPU with
onnxruntime-gpu was available): they are written against ONNX Runtime's documented Python API only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...contract import GRAPH_NAMES, check_precision
from ...errors import BackendError, BundleError, ConfigError

if TYPE_CHECKING:
    from ...bundle.store import Bundle
    from . import BackendOptions

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeExecutor:
    def __init__(self, onnx_paths: Mapping[str, str | os.PathLike[str]], input_names: Mapping[str, Sequence[str]],
                 output_names: Mapping[str, str], *, device: str = "cpu", threads: int | None = None,
                 device_id: int = 0, spin: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs onnxruntime (CPU) or onnxruntime-gpu: "
                               "pip install 'diffv2iqa-trt[cpu]' or '[gpu]'") from None
        if device not in PROVIDERS:
            raise ConfigError(f"unknown device {device!r} for onnxruntime; use one of {sorted(PROVIDERS)}")
        wanted = PROVIDERS[device]
        if wanted[0] not in ort.get_available_providers():
            raise BackendError(f"{wanted[0]} is not available in this onnxruntime build "
                               f"(available: {ort.get_available_providers()}); install onnxruntime-gpu for "
                               "cuda/tensorrt, or use --device cpu")
        self._ort = ort
        self.name = f"onnxruntime-{device}"
        self.on_device = device != "cpu"
        self.device_id = device_id
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Spinning workers cut a paper U-Net step from ~1.7 s to ~1.45 s on 2 cores, but starve whatever shares the
        # cores right after a run (torch calls interleaved with ORT calls slow down many times): spin=False there.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._sessions = {g: ort.InferenceSession(str(p), options, providers=wanted) for g, p in onnx_paths.items()}
        self._inputs = {g: list(names) for g, names in input_names.items()}
        self._outputs = dict(output_names)

    def upload(self, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not self.on_device:
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)

    def download(self, handle: Any) -> np.ndarray:
        return handle if isinstance(handle, np.ndarray) else handle.numpy()

    def _run(self, graph: str, *args: Any) -> Any:
        session, names, out = self._sessions[graph], self._inputs[graph], self._outputs[graph]
        if not self.on_device:
            return session.run([out], dict(zip(names, args, strict=True)))[0]
        binding = session.io_binding()
        for name, value in zip(names, args, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(out, "cuda", self.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        return self._run("restore_step", x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._run("vcg", x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._run("vda", x, y0, yt1, yt2)


def executor_from_bundle(bundle: Bundle, options: BackendOptions) -> OnnxRuntimeExecutor:
    """The registry's `onnxruntime` factory: the bundle's ONNX variants of one precision."""
    precision = check_precision(options.precision)
    paths, inputs, outputs = {}, {}, {}
    for graph in GRAPH_NAMES:
        entry = bundle.graph(graph)
        if precision not in entry.variants:
            raise BundleError(f"{bundle.root}: graph {graph} has no {precision} variant (has "
                              f"{', '.join(entry.precisions)}); rebuild with that precision or pick another",
                              path=bundle.manifest_path)
        paths[graph] = bundle.onnx_path(graph, precision)
        inputs[graph] = list(entry.input_names)
        outputs[graph] = entry.output_names[0]
    return OnnxRuntimeExecutor(paths, inputs, outputs, device=options.device, threads=options.threads)

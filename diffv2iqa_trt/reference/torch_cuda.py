"""The `torch-cuda` backend: the PyTorch reference graphs on CUDA, driven by the stream pipeline.

`TorchCudaDevice` is the device layer over torch.cuda (tensors, pinned host tensors, streams, events, CUDA graphs
with thread-local capture); `TorchGraphLauncher` runs the model's three graphs into preallocated outputs, in FP32 or
in FP16 through autocast. The launcher takes torch tensors or NumPy arrays (it views them with torch.as_tensor), so on
a CPU it also runs under runtime.device.HostDevice, which is how its logic is tested here. This is the baseline a
user would pick instead of TensorRT, and the way the orchestration runs on any CUDA GPU.

The CUDA path (TorchCudaDevice) has not run on this project's CPU machines; scripts/gpu_check.sh runs it on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..bundle.store import Bundle
from ..errors import BackendError, ConfigError
from ..model.diffv2iqa import DiffV2IQA
from ..runtime.pipeline import PipelineSpec
from ..runtime.stream_pipeline import StreamPipeline
from .torch_executor import model_from_bundle

TORCH_PRECISIONS = ("fp32", "fp16")


class TorchCudaDevice:
    """runtime.device.Device over torch.cuda. Arrays are CUDA tensors; `a[i]` is a view."""

    name = "torch-cuda"

    def __init__(self, device: str = "cuda") -> None:
        if not torch.cuda.is_available():
            raise BackendError("the torch-cuda backend needs a CUDA GPU and a CUDA build of torch; this torch "
                               f"({torch.__version__}) sees none: use --backend onnxruntime or torch on the CPU")
        self.device = torch.device(device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._capture_stream: Any = None

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> torch.Tensor:
        # NaN-filled like HostDevice: a buffer read before it is written shows up. The fill runs on the current
        # (default) stream, which the pipeline's streams do not wait for: finish it before the buffer is used.
        buffer = torch.full(shape, float("nan"), dtype=_torch_dtype(dtype), device=self.device)
        torch.cuda.current_stream(self.device).synchronize()
        return buffer

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        # The NumPy view keeps the pinned tensor alive (it is the array's base).
        host: np.ndarray = torch.empty(shape, dtype=_torch_dtype(dtype), pin_memory=True).numpy()
        return host

    def stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def event(self, timing: bool = False) -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=timing)

    def upload(self, src: np.ndarray, dst: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(torch.from_numpy(src), non_blocking=True)

    def download(self, src: torch.Tensor, dst: np.ndarray, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            torch.from_numpy(dst).copy_(src, non_blocking=True)

    def copy(self, src: torch.Tensor, dst: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def copy_window(self, src: torch.Tensor, top: int, left: int, dst: torch.Tensor,
                    stream: torch.cuda.Stream) -> None:
        h, w = dst.shape[-2:]
        with torch.cuda.stream(stream):
            dst.copy_(src[:, top:top + h, left:left + w], non_blocking=True)

    def enqueue(self, work: Any, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            work()

    def record(self, event: torch.cuda.Event, stream: torch.cuda.Stream) -> None:
        event.record(stream)

    def wait(self, stream: torch.cuda.Stream, event: torch.cuda.Event) -> None:
        stream.wait_event(event)

    def synchronize(self, stream: torch.cuda.Stream) -> None:
        stream.synchronize()

    def wait_host(self, event: torch.cuda.Event) -> None:
        event.synchronize()

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return float(start.elapsed_time(end))

    def begin_capture(self, stream: torch.cuda.Stream) -> None:
        if self._graph is not None:
            raise RuntimeError("a capture is already in progress")
        self._graph = torch.cuda.CUDAGraph()
        self._capture_stream = torch.cuda.stream(stream)
        self._capture_stream.__enter__()
        # thread_local: other threads' CUDA calls (a decoder, a logger) cannot invalidate this capture.
        self._graph.capture_begin(capture_error_mode="thread_local")

    def end_capture(self, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
        graph, self._graph = self._graph, None
        if graph is None:
            raise RuntimeError("end_capture without begin_capture")
        try:
            graph.capture_end()
        finally:
            self._capture_stream.__exit__(None, None, None)
            self._capture_stream = None
        return graph

    def replay(self, graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            graph.replay()


def _torch_dtype(dtype: type) -> torch.dtype:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


class TorchGraphLauncher:
    """runtime.device.Launcher over the PyTorch graphs (DiffV2IQA.restore_step / vcg / vda)."""

    capturable = True

    def __init__(self, model: DiffV2IQA, precision: str = "fp32") -> None:
        if precision not in TORCH_PRECISIONS:
            raise ConfigError(f"the torch-cuda backend runs {' or '.join(TORCH_PRECISIONS)} (autocast), not "
                              f"{precision!r}")
        self.model = model.eval()
        self.precision = precision
        self.plan = precision
        self.name = f"torch-{precision}"

    @contextlib.contextmanager
    def _mode(self, like: torch.Tensor) -> Iterator[None]:
        # no_grad rather than inference_mode, and autocast without its weight cache: both as PyTorch's CUDA-graph
        # notes ask for work that may be captured (the cache would hold casts made outside the graph's memory pool).
        with torch.no_grad():
            if self.precision == "fp16":
                with torch.autocast(like.device.type, dtype=torch.float16, cache_enabled=False):
                    yield
            else:
                yield

    def _run(self, graph: Any, out: Any, *inputs: Any) -> None:
        tensors = [torch.as_tensor(a) for a in inputs]
        with self._mode(tensors[0]):
            result = graph(*tensors)
        torch.as_tensor(out).copy_(result)

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any, out: Any, stream: Any) -> None:
        self._run(self.model.restore_step, out, x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None:
        self._run(self.model.vcg, out, x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None:
        self._run(self.model.vda, out, x, y0, yt1, yt2)


def stream_pipeline_from_bundle(bundle: Bundle, spec: PipelineSpec, *, batch_size: int = 8, streams: bool = True,
                                cuda_graph: bool = True, precision: str | None = None,
                                device: str = "cuda") -> StreamPipeline:
    """The registry's `torch-cuda` pipeline: the bundle's weights on the GPU, FP32 (default) or FP16 (autocast)."""
    cuda = TorchCudaDevice(device)
    model = model_from_bundle(bundle).to(cuda.device)
    launcher = TorchGraphLauncher(model, precision or "fp32")
    return StreamPipeline(cuda, launcher, spec, batch_size=batch_size, streams=streams, cuda_graph=cuda_graph)

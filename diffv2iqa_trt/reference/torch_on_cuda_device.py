"""The PyTorch graphs on the cuda-python device layer: the TensorRT backend's `CudaDevice` checked end to end on any
CUDA GPU, without TensorRT.

`TorchOnCudaDeviceLauncher` is a stream-pipeline launcher whose arrays are `CudaDevice` allocations (`DeviceArray`s)
and whose streams are `CudaStream`s: each launch wraps its arrays as torch tensors without a copy, through the CUDA
Array Interface (version 3; `cuda_array_interface` builds the dictionary from the pointer, shape and dtype), and runs
the model on the given stream through `torch.cuda.ExternalStream(stream.ptr)`. So buffers, copies, window copies,
events, the fork/join of the two branch streams and the downloads are all CudaDevice's, and only the kernels are
torch's.

Not capturable (`capturable = False`, so the stream pipeline refuses `cuda_graph=True` with it): CudaDevice begins
the capture with cudaStreamBeginCapture on a stream torch does not own, so torch's caching allocator is not told that
a capture is under way and gives the graph no private memory pool. The activations a launch allocates would go back
to torch's cache at the end of the launch and be handed to later work while the graph, replayed, still writes them;
and a cache miss inside the capture calls cudaMalloc, which invalidates a thread-local capture. torch makes captured
allocations safe only under its own `torch.cuda.graph`, which is what `TorchCudaDevice` uses.

The interface dictionaries leave out the "stream" entry (no synchronisation on consumption): every access is ordered
by the pipeline's own stream order and events, and a consumer-side sync would be an extra event per launch.

`HostPointerDevice` is CudaDevice's data model on the host, for dry runs and tests: DeviceArrays whose pointers are
host addresses and copies made with memmove (window copies from `window_copies`, as CudaDevice cuts them); with
`host_tensor_from_interface` as the launcher's `wrap` the whole launcher runs on the CPU, so the pointer arithmetic of
every view the pipeline hands out (step rows, crop rows) is checked against real scores.

The CUDA path has not run on this project's CPU machines; scripts/gpu_check.sh runs it on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import BackendError
from ..model.diffv2iqa import DiffV2IQA
from ..runtime.backends.cuda_device import DeviceArray, host_view, window_copies
from ..runtime.device import HostDevice, HostStream
from ..runtime.pipeline import PipelineSpec
from ..runtime.stream_pipeline import StreamPipeline
from .torch_cuda import TorchGraphLauncher

CAI_VERSION = 3


def cuda_array_interface(array: DeviceArray) -> dict[str, Any]:
    """The `__cuda_array_interface__` (v3) of a C-contiguous DeviceArray or view: strides None means C order."""
    if array.size and not array.ptr:
        raise ValueError(f"{array!r} has a null pointer")
    return {"shape": tuple(array.shape), "typestr": array.dtype.str, "data": (int(array.ptr), False),
            "strides": None, "version": CAI_VERSION, "stream": None}


class CudaArrayView:
    """An object torch can read as a CUDA array (torch.as_tensor of it makes no copy); it keeps `array` (and so its
    allocation) alive for as long as the tensor made from it lives."""

    def __init__(self, array: DeviceArray) -> None:
        self.array = array
        self.__cuda_array_interface__ = cuda_array_interface(array)


def cuda_tensor(array: DeviceArray) -> torch.Tensor:
    """A CUDA tensor over the DeviceArray's memory, no copy."""
    return torch.as_tensor(CudaArrayView(array))


def host_tensor_from_interface(array: DeviceArray) -> torch.Tensor:
    """What `cuda_tensor` does, for a DeviceArray whose pointer is a host address (HostPointerDevice): the tensor is
    built from the interface dictionary alone, so a wrong pointer, shape or type string shows in the scores."""
    cai = cuda_array_interface(array)
    if cai["strides"] is not None:
        raise ValueError("only C-contiguous arrays are handed out by the device layer")
    ptr, _readonly = cai["data"]
    return torch.from_numpy(host_view(ptr, cai["shape"], np.dtype(cai["typestr"]), None))


StreamScope = Callable[[Any], contextlib.AbstractContextManager[Any]]


class TorchOnCudaDeviceLauncher(TorchGraphLauncher):
    """The PyTorch graphs as a launcher on CudaDevice buffers and streams (see the module docstring).

    `wrap` turns a DeviceArray into a tensor (default `cuda_tensor`); `stream_scope` makes a CudaStream torch's
    current stream (default: an ExternalStream over its handle). Both are replaceable for the CPU dry run."""

    capturable = False  # see the module docstring: torch's allocator cannot see a capture it did not begin

    def __init__(self, model: DiffV2IQA, precision: str = "fp32", *,
                 wrap: Callable[[DeviceArray], torch.Tensor] | None = None,
                 stream_scope: StreamScope | None = None) -> None:
        super().__init__(model, precision)
        self.name = f"torch-{precision} on cuda-python"
        self.wrap = wrap or cuda_tensor
        self.stream_scope: StreamScope = stream_scope or self._external
        self._streams: dict[int, torch.cuda.ExternalStream] = {}

    @contextlib.contextmanager
    def _external(self, stream: Any) -> Iterator[None]:
        ptr = int(stream.ptr)
        if ptr not in self._streams:
            self._streams[ptr] = torch.cuda.ExternalStream(ptr, device=next(self.model.parameters()).device)
        with torch.cuda.stream(self._streams[ptr]):
            yield

    def _launch(self, stream: Any, graph: Any, out: DeviceArray, *inputs: DeviceArray) -> None:
        with self.stream_scope(stream):
            tensors = [self.wrap(a) for a in inputs]
            with self._mode(tensors[0]):
                result = graph(*tensors)
            self.wrap(out).copy_(result)

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any, out: Any, stream: Any) -> None:
        self._launch(stream, self.model.restore_step, out, x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None:
        self._launch(stream, self.model.vcg, out, x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None:
        self._launch(stream, self.model.vda, out, x, y0, yt1, yt2)

    def close(self) -> None:
        self._streams.clear()  # ExternalStreams do not own their streams: CudaDevice destroys them
        super().close()


class _HostBacked(DeviceArray):
    """A DeviceArray whose pointer is the address of a NumPy array it keeps (HostPointerDevice's allocations)."""

    def __init__(self, memory: np.ndarray) -> None:
        super().__init__(memory.ctypes.data, memory.shape, memory.dtype)
        self.memory = memory


def _memmove(dst: int, src: int, nbytes: int) -> None:
    ctypes.memmove(dst, src, nbytes)


def _check_same(src: Any, dst: Any, what: str) -> None:
    # CudaDevice's rule: a raw copy cannot broadcast or cast.
    if tuple(src.shape) != tuple(dst.shape) or np.dtype(src.dtype) != np.dtype(dst.dtype):
        raise ValueError(f"{what}: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
    if any(isinstance(a, np.ndarray) and not a.flags.c_contiguous for a in (src, dst)):
        raise ValueError(f"{what}: host arrays must be C-contiguous")


class HostPointerDevice(HostDevice):
    """CudaDevice's arrays and copies over host memory (see the module docstring); ordering, events and capture
    are HostDevice's (in order; a capture records and a replay re-runs the copies)."""

    name = "host-pointers"

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> DeviceArray:  # type: ignore[override]
        memory: np.ndarray = np.empty(shape, dtype)
        if np.issubdtype(memory.dtype, np.floating):
            memory.fill(np.nan)
        return _HostBacked(memory)

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        return HostDevice.empty(self, shape, dtype)

    def upload(self, src: np.ndarray, dst: DeviceArray, stream: HostStream) -> None:  # type: ignore[override]
        _check_same(src, dst, "upload")
        self._do("upload", lambda: _memmove(dst.ptr, src.ctypes.data, dst.nbytes), stream)

    def download(self, src: DeviceArray, dst: np.ndarray, stream: HostStream) -> None:  # type: ignore[override]
        _check_same(src, dst, "download")
        self._do("download", lambda: _memmove(dst.ctypes.data, src.ptr, src.nbytes), stream)

    def copy(self, src: DeviceArray, dst: DeviceArray, stream: HostStream) -> None:  # type: ignore[override]
        _check_same(src, dst, "copy")
        self._do("copy", lambda: _memmove(dst.ptr, src.ptr, src.nbytes), stream)

    def copy_window(self, src: DeviceArray, top: int, left: int, dst: DeviceArray,  # type: ignore[override]
                    stream: HostStream) -> None:
        if src.dtype != dst.dtype or len(src.shape) != 3 or len(dst.shape) != 3:
            raise ValueError(f"copy_window: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
        copies = window_copies(src.ptr, src.shape, top, left, dst.ptr, dst.shape, src.dtype.itemsize)

        def run() -> None:  # cudaMemcpy2DAsync, row by row
            for dptr, dpitch, sptr, spitch, width, height in copies:
                for r in range(height):
                    _memmove(dptr + r * dpitch, sptr + r * spitch, width)

        self._do("copy", run, stream)

    def abort_capture(self, stream: HostStream) -> None:
        self._capturing = None

    def close(self) -> None:
        self._capturing = None

    def __enter__(self) -> HostPointerDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def host_launcher(model: DiffV2IQA, precision: str = "fp32") -> TorchOnCudaDeviceLauncher:
    """The launcher as the CPU dry run uses it with HostPointerDevice: host tensors from the interface dictionaries,
    no CUDA stream."""
    return TorchOnCudaDeviceLauncher(model, precision, wrap=host_tensor_from_interface,
                                     stream_scope=lambda stream: contextlib.nullcontext())


def cuda_device_pipeline(model: DiffV2IQA, spec: PipelineSpec, *, precision: str = "fp32", batch_size: int = 8,
                         streams: bool = True, index: int | None = None) -> StreamPipeline:
    """The stream pipeline on cuda-python's CudaDevice with the PyTorch graphs as kernels (no CUDA graph: see the
    module docstring). `model` is moved to the device's GPU."""
    from ..runtime.backends.cuda_device import CudaDevice

    device = CudaDevice(index)
    try:
        if not torch.cuda.is_available():
            raise BackendError("the PyTorch graphs on CudaDevice need a CUDA build of torch that sees the GPU")
        launcher = TorchOnCudaDeviceLauncher(model.to(torch.device("cuda", device.index)), precision)
        return StreamPipeline(device, launcher, spec, batch_size=batch_size, streams=streams, cuda_graph=False)
    except BaseException:
        device.close()
        raise

"""The `torch-cuda` backend: the PyTorch reference graphs on CUDA, driven by the stream pipeline.

`TorchCudaDevice` is the device layer over torch.cuda (tensors, pinned host tensors, streams, events, CUDA graphs
with thread-local capture); `TorchGraphLauncher` runs the model's three graphs into preallocated outputs, in FP32
(TF32 off, whatever the process's defaults), TF32 or FP16 through autocast. The launcher takes torch tensors or
NumPy arrays (it views them with torch.as_tensor), so on a CPU it also runs under runtime.device.HostDevice, which is
how its logic is tested here. This is the baseline a user would pick instead of TensorRT, and the way the
orchestration runs on any CUDA GPU.

Host memory: `pinned()` arrays are NumPy views of pinned torch tensors; `upload`/`download` copy through a view of
that same storage (`host_tensor`), so torch's caching host allocator records each copy's stream, and the device also
keeps every copy's host side alive until an event recorded after the copy says it ran (`InFlight`).

The CUDA path (TorchCudaDevice) has not run on this project's CPU machines; scripts/gpu_check.sh runs it on a GPU.
"""

from __future__ import annotations

import contextlib
import weakref
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

# fp32 is IEEE FP32 (TF32 off for the launches), tf32 the same graphs with TF32 tensor cores allowed, fp16 autocast.
TORCH_PRECISIONS = ("fp32", "tf32", "fp16")


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for convolutions (cuDNN) and matrix products (cuBLAS) on or off inside the block, restored after.

    Through the legacy flags only (`torch.backends.cudnn.allow_tf32`, `torch.backends.cuda.matmul.allow_tf32`): torch
    refuses a process that mixes them with the newer `fp32_precision` settings, and the legacy ones exist in every
    torch this project supports. PyTorch's defaults allow TF32 convolutions, which alone move scores by about 1e-3."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        before = (cudnn.allow_tf32, matmul.allow_tf32)
        cudnn.allow_tf32 = matmul.allow_tf32 = enabled
    except RuntimeError as exc:  # the process set fp32_precision: torch will not take the legacy flags as well
        raise BackendError(f"cannot set TF32 {'on' if enabled else 'off'} through torch's allow_tf32 flags ({exc}); "
                           "do not set torch.backends.*.fp32_precision in a process that runs the torch-cuda "
                           "backend") from None
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


class InFlight:
    """Host memory that asynchronous copies read or write, each entry held until the event recorded on the copy's
    stream right after it says the copy finished. Without this a staging array dropped by its caller (and the pinned
    torch tensor behind it) could go back to torch's caching host allocator and be handed out again, and overwritten,
    while the GPU still reads it."""

    def __init__(self) -> None:
        self._entries: list[tuple[Any, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: Any, *keep: Any) -> None:
        self._entries.append((event, keep))

    def prune(self) -> None:
        """Drop the entries whose copies have finished (event.query() is a non-blocking cudaEventQuery)."""
        self._entries = [entry for entry in self._entries if not entry[0].query()]

    def wait(self) -> None:
        """Block until every held copy has finished, then drop them all."""
        for event, _ in self._entries:
            event.synchronize()
        self._entries.clear()


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over `array`'s memory, without a copy. Where the array views a torch tensor's storage (what
    `TorchCudaDevice.pinned` returns, and any slice of it), the result is a view of that same storage, so that a
    non-blocking copy records its stream on torch's caching host allocator, which then does not hand the block out
    again until the copy is done (a `torch.from_numpy` alias has a storage of its own that the allocator does not
    track). Any other array falls back to `torch.from_numpy`."""
    owner: Any = array
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, torch.Tensor) and owner.dtype == _torch_dtype_or_none(array.dtype):
        item = array.dtype.itemsize
        offset = int(array.ctypes.data) - int(owner.untyped_storage().data_ptr())
        strides = [s // item for s in array.strides]
        if offset >= 0 and offset % item == 0 and all(s >= 0 and s % item == 0 for s in array.strides):
            with contextlib.suppress(RuntimeError):  # out of the storage's bounds: not a view of it after all
                return owner.as_strided(array.shape, strides, offset // item)
    return torch.from_numpy(array)


class TorchCudaDevice:
    """runtime.device.Device over torch.cuda. Arrays are CUDA tensors; `a[i]` is a view.

    Streams come from torch's stream pool (nothing to destroy); `close()` waits for the copies still in flight,
    abandons a capture left open and resets the graphs this device captured (their memory pools go back to torch).
    """

    name = "torch-cuda"

    def __init__(self, device: str = "cuda") -> None:
        if not torch.cuda.is_available():
            raise BackendError("the torch-cuda backend needs a CUDA GPU and a CUDA build of torch; this torch "
                               f"({torch.__version__}) sees none: use --backend onnxruntime or torch on the CPU")
        self.device = torch.device(device)
        self._setup()

    def _setup(self) -> None:
        self._graph: torch.cuda.CUDAGraph | None = None
        self._capture_scope = contextlib.ExitStack()  # holds the capturing stream current while a capture is open
        self._capture_stream: Any = None
        self._capture_keep: list[Any] = []  # host memory read by copies recorded into the open capture
        # Each captured graph -> the host memory its copies read at every replay (kept as long as the graph lives).
        self._graphs: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self.in_flight = InFlight()
        self.closed = False

    # Seams: the only torch.cuda calls of the copy paths, replaced by the CPU tests.
    def _scope(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)

    def _copy_event(self) -> Any:
        return torch.cuda.Event()

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> torch.Tensor:
        # NaN-filled like HostDevice: a buffer read before it is written shows up. The fill runs on the current
        # (default) stream, which the pipeline's streams do not wait for: finish it before the buffer is used.
        buffer = torch.full(shape, float("nan"), dtype=_torch_dtype(dtype), device=self.device)
        torch.cuda.current_stream(self.device).synchronize()
        return buffer

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        # The NumPy view keeps the pinned tensor alive (its base is a tensor over the same storage); upload and
        # download find that storage again (host_tensor), so copies go through torch's pinned-memory bookkeeping.
        host: np.ndarray = torch.empty(shape, dtype=_torch_dtype(dtype), pin_memory=True).numpy()
        host.fill(np.nan)
        return host

    def stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def event(self, timing: bool = False) -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=timing)

    def _hold(self, stream: Any, *keep: Any) -> None:
        """Keep the host side of a copy just enqueued on `stream` alive until the copy has run."""
        if self._graph is not None:  # recorded into a graph: the graph reads this memory at every replay
            self._capture_keep.append(keep)
            return
        self.in_flight.prune()
        event = self._copy_event()
        event.record(stream)
        self.in_flight.add(event, *keep)

    def upload(self, src: np.ndarray, dst: torch.Tensor, stream: torch.cuda.Stream) -> None:
        host = host_tensor(src)
        with self._scope(stream):
            dst.copy_(host, non_blocking=True)
            self._hold(stream, host, src)

    def download(self, src: torch.Tensor, dst: np.ndarray, stream: torch.cuda.Stream) -> None:
        host = host_tensor(dst)
        with self._scope(stream):
            host.copy_(src, non_blocking=True)
            self._hold(stream, host, dst)

    def copy(self, src: torch.Tensor, dst: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with self._scope(stream):
            dst.copy_(src, non_blocking=True)

    def copy_window(self, src: torch.Tensor, top: int, left: int, dst: torch.Tensor,
                    stream: torch.cuda.Stream) -> None:
        h, w = dst.shape[-2:]
        with self._scope(stream):
            dst.copy_(src[:, top:top + h, left:left + w], non_blocking=True)

    def enqueue(self, work: Any, stream: torch.cuda.Stream) -> None:
        with self._scope(stream):
            work()

    def record(self, event: torch.cuda.Event, stream: torch.cuda.Stream) -> None:
        event.record(stream)

    def wait(self, stream: torch.cuda.Stream, event: torch.cuda.Event) -> None:
        stream.wait_event(event)

    def _not_capturing(self, what: str) -> None:
        if self._graph is not None:
            raise RuntimeError(f"{what} while capturing a graph: the orchestration waits inside the capture")

    def synchronize(self, stream: torch.cuda.Stream) -> None:
        self._not_capturing("synchronize")
        stream.synchronize()
        self.in_flight.prune()

    def wait_host(self, event: torch.cuda.Event) -> None:
        self._not_capturing("wait_host")
        event.synchronize()
        self.in_flight.prune()

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return float(start.elapsed_time(end))

    def begin_capture(self, stream: torch.cuda.Stream) -> None:
        if self._graph is not None:
            raise RuntimeError("a capture is already in progress")
        graph = torch.cuda.CUDAGraph()
        scope = contextlib.ExitStack()
        scope.enter_context(torch.cuda.stream(stream))
        try:
            # thread_local: other threads' CUDA calls (a decoder, a logger) cannot invalidate this capture.
            graph.capture_begin(capture_error_mode="thread_local")
        except BaseException:
            scope.close()
            raise
        self._graph, self._capture_scope, self._capture_stream, self._capture_keep = graph, scope, stream, []

    def _forget_capture(self) -> tuple[torch.cuda.CUDAGraph | None, contextlib.ExitStack, list[Any]]:
        graph, scope, keep = self._graph, self._capture_scope, self._capture_keep
        self._graph, self._capture_scope, self._capture_stream, self._capture_keep = (
            None, contextlib.ExitStack(), None, [])
        return graph, scope, keep

    def end_capture(self, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
        graph, scope, keep = self._forget_capture()
        if graph is None:
            raise RuntimeError("end_capture without begin_capture")
        try:
            graph.capture_end()  # torch checks that the capturing stream is still the current one: end it first
        finally:
            scope.close()
        self._graphs[graph] = keep
        return graph

    def abort_capture(self, stream: torch.cuda.Stream) -> None:
        """End a capture left open by an error and discard the graph; never raises (it runs while another error
        is on its way up), and leaves `stream` usable for eager work. No-op when nothing is being captured."""
        captured_on = self._capture_stream
        graph, scope, _ = self._forget_capture()
        if graph is None:
            return
        with contextlib.suppress(Exception):
            graph.capture_end()  # an invalidated capture raises here, but CUDA has ended it all the same
        with contextlib.suppress(Exception):
            if torch.cuda.is_current_stream_capturing():  # torch refused before ending it: end it underneath
                _end_raw_capture(captured_on if captured_on is not None else stream)
        with contextlib.suppress(Exception):
            scope.close()
        with contextlib.suppress(Exception):
            graph.reset()

    def replay(self, graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream) -> None:
        with self._scope(stream):
            graph.replay()

    def close(self) -> None:
        """Idempotent: wait for copies in flight, abandon an open capture, reset the graphs captured here."""
        if self.closed:
            return
        self.closed = True
        self.abort_capture(self._capture_stream)
        with contextlib.suppress(Exception):
            self.in_flight.wait()
        for graph in list(self._graphs):
            with contextlib.suppress(Exception):
                graph.reset()
        self._graphs.clear()

    def __enter__(self) -> TorchCudaDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_raw_capture(stream: Any) -> None:
    """cudaStreamEndCapture through cuda-bindings, and destroy what it returns: the last resort of abort_capture
    when torch's CUDAGraph would not end a capture (e.g. its stream check failed)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return
    _, graph = cudart.cudaStreamEndCapture(int(stream.cuda_stream))
    if graph is not None:
        cudart.cudaGraphDestroy(graph)


_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def _torch_dtype(dtype: Any) -> torch.dtype:
    return _DTYPES[np.dtype(dtype)]


def _torch_dtype_or_none(dtype: Any) -> torch.dtype | None:
    return _DTYPES.get(np.dtype(dtype))


class TorchGraphLauncher:
    """runtime.device.Launcher over the PyTorch graphs (DiffV2IQA.restore_step / vcg / vda). `close()` drops the
    model (and with it the weights on the GPU, once nothing else holds them)."""

    capturable = True

    def __init__(self, model: DiffV2IQA, precision: str = "fp32") -> None:
        if precision not in TORCH_PRECISIONS:
            raise ConfigError("the torch-cuda backend runs fp32 or fp16 (autocast), or tf32 (fp32 with TF32 "
                              f"tensor cores allowed), not {precision!r}")
        self._model: DiffV2IQA | None = model.eval()
        self.precision = precision
        self.plan = precision
        self.name = f"torch-{precision}"

    @property
    def model(self) -> DiffV2IQA:
        if self._model is None:
            raise BackendError(f"the {self.name} launcher was closed; make a new one")
        return self._model

    def close(self) -> None:
        self._model = None

    def __enter__(self) -> TorchGraphLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _mode(self, like: torch.Tensor) -> Iterator[None]:
        # no_grad rather than inference_mode, and autocast without its weight cache: both as PyTorch's CUDA-graph
        # notes ask for work that may be captured (the cache would hold casts made outside the graph's memory pool).
        # TF32 is set per launch (and restored), so fp32 means FP32 whatever the process's defaults are.
        with torch.no_grad(), tf32(self.precision == "tf32"):
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
    try:
        launcher = TorchGraphLauncher(model_from_bundle(bundle).to(cuda.device), precision or "fp32")
        return StreamPipeline(cuda, launcher, spec, batch_size=batch_size, streams=streams, cuda_graph=cuda_graph)
    except BaseException:
        cuda.close()
        raise

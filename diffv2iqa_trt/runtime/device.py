"""The device layer under the stream pipeline: memory, copies, streams, events and graph capture, and the graph
launcher that runs the three graphs into preallocated outputs.

Three implementations share one orchestration (stream_pipeline.py):
- `HostDevice` (here): NumPy arrays and in-order execution; streams and events are bookkeeping, and a "graph" is the
  recorded list of enqueued work, replayed in order. It runs the orchestration on any CPU, so its logic (buffers,
  ping-pong, captures, fork/join, capture-then-replay) is tested against the plain CPU pipeline.
- `CudaDevice` (runtime/backends/cuda_device.py): cuda-python, for the TensorRT launcher; no torch.
- `TorchCudaDevice` (reference/torch_cuda.py): torch.cuda, for the PyTorch graphs on CUDA.

Work is enqueued, never run inline by the orchestration: every copy and launch goes through the device with a
stream, and `enqueue` wraps a launcher call. On CUDA an enqueued call returns at once and the GPU runs it later (or,
while a stream is being captured, it is only recorded); the host reads results only after `synchronize`. The host
device mirrors that: while capturing it records instead of running, so an orchestration that read a result too early
would fail its tests here, as it would on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Work = Callable[[], None]


class Device(Protocol):
    """Arrays are the device's own type (NumPy, a torch tensor, a cuda-python allocation); `a[i]` is a view of index
    i along the first axis, without a copy."""

    name: str

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> Any: ...
    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """A host array the device copies from and to asynchronously (page-locked on CUDA)."""
        ...
    def stream(self) -> Any: ...
    def event(self, timing: bool = False) -> Any: ...
    def upload(self, src: np.ndarray, dst: Any, stream: Any) -> None: ...
    def download(self, src: Any, dst: np.ndarray, stream: Any) -> None: ...
    def copy(self, src: Any, dst: Any, stream: Any) -> None: ...
    def copy_window(self, src: Any, top: int, left: int, dst: Any, stream: Any) -> None:
        """dst (C,h,w) = src (C,H,W)[:, top:top+h, left:left+w]."""
        ...
    def enqueue(self, work: Work, stream: Any) -> None:
        """Run a launcher call that enqueues device work on `stream` (recorded instead while capturing)."""
        ...
    def record(self, event: Any, stream: Any) -> None: ...
    def wait(self, stream: Any, event: Any) -> None: ...
    def synchronize(self, stream: Any) -> None: ...
    def wait_host(self, event: Any) -> None:
        """Block the host until the work before `event` is done."""
        ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...
    def begin_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> Any: ...
    def abort_capture(self, stream: Any) -> None:
        """End a capture in progress on `stream` and discard what it recorded; never raises (it runs while another
        error propagates, which it must not hide); no-op when nothing is being captured."""
        ...
    def replay(self, graph: Any, stream: Any) -> None: ...
    def close(self) -> None:
        """Release the streams, events, graphs (and memory) this device made; idempotent."""
        ...


@dataclass(frozen=True)
class Launch:
    """One launcher call with its buffers fixed when it is enqueued and run when the device says (a kernel launch).
    Devices call it; a simulated device also reads `inputs` and `out` to check the ordering of the buffers' uses."""

    fn: Callable[..., None]
    inputs: tuple[Any, ...]
    out: Any
    stream: Any

    def __call__(self) -> None:
        self.fn(*self.inputs, self.out, self.stream)

    @property
    def graph(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def host_side(self) -> None:
        """The launcher's host-side checks (`before_enqueue(graph, inputs, out, stream)`, where it has them), which
        run when the launch is enqueued, as TensorRT's shape checks do, not when the device runs the graph."""
        check = getattr(getattr(self.fn, "__self__", None), "before_enqueue", None)
        if check is not None:
            check(self.graph, self.inputs, self.out, self.stream)


class Launcher(Protocol):
    """Runs a graph of the bundle contract on device arrays, writing its result into `out`, on `stream`."""

    name: str
    capturable: bool  # whether its launches may be captured into a CUDA graph

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any, out: Any, stream: Any) -> None: ...
    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None: ...
    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any, out: Any, stream: Any) -> None: ...
    def close(self) -> None:
        """Release what the launcher made (sessions, contexts, device memory); idempotent."""
        ...


def take_capture_refs(launcher: Launcher) -> list[Any]:
    """What a graph just captured needs kept alive (a launcher's evictable execution contexts), when the launcher
    keeps such things; the pipeline stores it with the graph."""
    take = getattr(launcher, "take_capture_refs", None)
    return list(take()) if take is not None else []


@dataclass
class HostStream:
    """Bookkeeping only: the host runs everything in order."""

    index: int
    ops: int = 0


@dataclass
class HostEvent:
    recorded_on: int | None = None
    seconds: float | None = None


@dataclass
class HostGraph:
    work: list[Work] = field(default_factory=list)


class HostDevice:
    """The device layer on the host (see the module docstring). `log` counts what ran, for tests."""

    name = "host"

    def __init__(self) -> None:
        self._streams = 0
        self._capturing: HostGraph | None = None
        self.log: dict[str, int] = {}

    def _do(self, kind: str, work: Work, stream: HostStream) -> None:
        stream.ops += 1
        if self._capturing is not None:
            self._capturing.work.append(work)
            self.log["captured"] = self.log.get("captured", 0) + 1
            return
        self.log[kind] = self.log.get(kind, 0) + 1
        work()

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        # NaN-filled: a buffer read before it is written shows up as NaN scores, not as plausible zeros.
        a: np.ndarray = np.empty(shape, dtype)
        if np.issubdtype(a.dtype, np.floating):
            a.fill(np.nan)
        return a

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        return self.empty(shape, dtype)

    def stream(self) -> HostStream:
        self._streams += 1
        return HostStream(self._streams)

    def event(self, timing: bool = False) -> HostEvent:
        return HostEvent()

    def upload(self, src: np.ndarray, dst: np.ndarray, stream: HostStream) -> None:
        self._do("upload", lambda: np.copyto(dst, src), stream)

    def download(self, src: np.ndarray, dst: np.ndarray, stream: HostStream) -> None:
        self._do("download", lambda: np.copyto(dst, src), stream)

    def copy(self, src: np.ndarray, dst: np.ndarray, stream: HostStream) -> None:
        self._do("copy", lambda: np.copyto(dst, src), stream)

    def copy_window(self, src: np.ndarray, top: int, left: int, dst: np.ndarray, stream: HostStream) -> None:
        h, w = dst.shape[-2:]
        self._do("copy", lambda: np.copyto(dst, src[:, top:top + h, left:left + w]), stream)

    def enqueue(self, work: Work, stream: HostStream) -> None:
        if isinstance(work, Launch):
            work.host_side()
        self._do("launch", work, stream)

    def record(self, event: HostEvent, stream: HostStream) -> None:
        def stamp() -> None:
            event.recorded_on, event.seconds = stream.index, time.perf_counter()

        self._do("event", stamp, stream)

    def wait(self, stream: HostStream, event: HostEvent) -> None:
        stream.ops += 1  # in-order execution already satisfies every wait

    def synchronize(self, stream: HostStream) -> None:
        if self._capturing is not None:
            raise RuntimeError("synchronize while capturing a graph: the orchestration waits inside the capture")

    def wait_host(self, event: HostEvent) -> None:
        if self._capturing is not None:
            raise RuntimeError("wait_host while capturing a graph: the orchestration waits inside the capture")

    def elapsed_ms(self, start: HostEvent, end: HostEvent) -> float:
        if start.seconds is None or end.seconds is None:
            raise RuntimeError("elapsed_ms of an event that was not recorded")
        return 1000.0 * (end.seconds - start.seconds)

    def begin_capture(self, stream: HostStream) -> None:
        if self._capturing is not None:
            raise RuntimeError("a capture is already in progress")
        self._capturing = HostGraph()

    def end_capture(self, stream: HostStream) -> HostGraph:
        graph, self._capturing = self._capturing, None
        if graph is None:
            raise RuntimeError("end_capture without begin_capture")
        return graph

    def abort_capture(self, stream: HostStream) -> None:
        self._capturing = None

    def replay(self, graph: HostGraph, stream: HostStream) -> None:
        self.log["replay"] = self.log.get("replay", 0) + 1
        for work in graph.work:
            work()

    def close(self) -> None:
        self._capturing = None


class ExecutorLauncher:
    """A launcher over an `Executor` whose handles are host arrays (ONNX Runtime or torch on the CPU): each call runs
    the graph and copies its result into `out`. With HostDevice it runs the stream pipeline on any CPU."""

    capturable = True  # on the host device a "graph" is the list of recorded calls

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.name = f"host:{executor.name}"

    def _into(self, out: np.ndarray, result: Any) -> None:
        np.copyto(out, self.executor.download(result))

    def _up(self, *arrays: np.ndarray) -> list[Any]:
        return [self.executor.upload(a) for a in arrays]

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray, z: np.ndarray,
                     out: np.ndarray, stream: Any) -> None:
        self._into(out, self.executor.restore_step(*self._up(x, y, gamma, coef, z)))

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray, out: np.ndarray,
            stream: Any) -> None:
        self._into(out, self.executor.vcg(*self._up(x, y0, yt1, yt2)))

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray, out: np.ndarray,
            stream: Any) -> None:
        self._into(out, self.executor.vda(*self._up(x, y0, yt1, yt2)))

    def close(self) -> None:
        """The executor belongs to whoever made it (the host pipeline may share it): nothing to release here."""

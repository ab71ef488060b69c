"""The GPU paths' logic on fakes: a fake `cuda.bindings.runtime` (real enums, error values and handle types from the
installed cuda-bindings; memory and streams as bookkeeping) and a fake `tensorrt` module (engines, contexts,
runtimes and inspectors that record what was asked of them). Nothing here runs CUDA or TensorRT: these tests prove
the decisions around the calls (which memory a context gets, what is evicted and kept alive, what is freed and in
which order, how a failed capture is undone, what the builder checks), not that the calls work on a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffv2iqa_trt.bundle import EngineEntry
from diffv2iqa_trt.bundle.manifest import ShapeRange
from diffv2iqa_trt.engine.builder import BuildSettings, add_profile, build_plan, inspect_plan
from diffv2iqa_trt.engine.compatibility import Machine
from diffv2iqa_trt.engine.loader import load_engine, load_lean_runtime, needs_lean_runtime
from diffv2iqa_trt.engine.profiles import InputProfile
from diffv2iqa_trt.errors import BackendError, BuildError, ConfigError, DependencyError
from diffv2iqa_trt.runtime.backends import cuda_device, tensorrt_backend
from diffv2iqa_trt.runtime.backends.cuda_device import CudaDevice, CudaStream, DeviceArray
from diffv2iqa_trt.runtime.backends.tensorrt_backend import IO, TensorRTLauncher, context_budget

try:
    from cuda.bindings import runtime as real
    from cuda.bindings import utils as cuda_utils
except ImportError:  # the fake-TensorRT tests still run; those on the fake cudart skip (it borrows the real enums)
    real = cuda_utils = None
NO_BINDINGS = "cuda-bindings is not installed: the fake cudart takes its enums, errors and handle types from it"

OK = real.cudaError_t.cudaSuccess if real is not None else None


def _entry(**fields: Any) -> EngineEntry:
    """A complete engine entry (vcg fp32, built with TensorRT 10.13.0.35 on GPU "G"), with `fields` changed."""
    base: dict[str, Any] = dict(file="vcg.plan", tensorrt="10.13.0.35", gpu="G", sm="9.0", precision="fp32",
                                source_onnx="vcg.fp32.onnx", source_sha256="0" * 64, version_compatible=False,
                                flags={}, device_memory_bytes=0, profile={}, build_seconds=0.0, census={})
    return EngineEntry(**{**base, **fields})


def native(handle: Any) -> int:
    return handle if isinstance(handle, int) else int(cuda_utils.get_cuda_native_handle(handle))


# --------------------------------------------------------------------------------------------------- fake cudart


class FakeCudart:
    """The cudart calls CudaDevice and the launcher make. Device pointers are 256-aligned numbers (never
    dereferenced); page-locked memory is real host memory (the device wraps it in NumPy arrays)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self._next = 0x10_0000
        self.host: dict[int, Any] = {}
        self.capturing: set[int] = set()
        self.end_capture_result: tuple[Any, Any] | None = None  # overrides what cudaStreamEndCapture returns
        self.end_capture_raises = False

    def __getattr__(self, name: str) -> Any:  # enums, flags, cudaGetErrorString: the real ones
        return getattr(real, name)

    def _handle(self) -> int:
        self._next += 0x1000
        return self._next

    def calls(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.log if c[0] == name]

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:
        return OK, 1

    def cudaGetDevice(self) -> tuple[Any, ...]:
        return OK, 0

    def cudaSetDevice(self, index: int) -> tuple[Any, ...]:
        return (OK,)

    def cudaMalloc(self, nbytes: int) -> tuple[Any, ...]:
        ptr = self._handle() * 0x100
        self.log.append(("cudaMalloc", ptr, nbytes))
        return OK, ptr

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:
        self.log.append(("cudaFree", ptr))
        return (OK,)

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, ...]:
        buf = ctypes.create_string_buffer(nbytes)
        ptr = ctypes.addressof(buf)
        self.host[ptr] = buf
        self.log.append(("cudaMallocHost", ptr, nbytes))
        return OK, ptr

    def cudaFreeHost(self, ptr: int) -> tuple[Any, ...]:
        self.log.append(("cudaFreeHost", ptr))
        return (OK,)

    def cudaMemsetAsync(self, ptr: int, value: int, nbytes: int, stream: Any) -> tuple[Any, ...]:
        return (OK,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any, ...]:
        return (OK,)

    def cudaDeviceSynchronize(self) -> tuple[Any, ...]:
        self.log.append(("cudaDeviceSynchronize",))
        return (OK,)

    def cudaGetLastError(self) -> tuple[Any, ...]:
        self.log.append(("cudaGetLastError",))
        return (OK,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, ...]:
        return OK, real.cudaStream_t(self._handle())

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any, ...]:
        self.log.append(("cudaStreamDestroy", native(stream)))
        return (OK,)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[Any, ...]:
        return OK, real.cudaEvent_t(self._handle())

    def cudaEventDestroy(self, event: Any) -> tuple[Any, ...]:
        self.log.append(("cudaEventDestroy", native(event)))
        return (OK,)

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple[Any, ...]:
        self.log.append(("cudaEventRecord", native(event), native(stream)))
        return (OK,)

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[Any, ...]:
        self.capturing.add(native(stream))
        self.log.append(("cudaStreamBeginCapture", native(stream)))
        return (OK,)

    def cudaStreamIsCapturing(self, stream: Any) -> tuple[Any, ...]:
        s = real.cudaStreamCaptureStatus
        return OK, (s.cudaStreamCaptureStatusActive if native(stream) in self.capturing
                    else s.cudaStreamCaptureStatusNone)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[Any, ...]:
        self.log.append(("cudaStreamEndCapture", native(stream)))
        self.capturing.discard(native(stream))
        if self.end_capture_raises:
            raise RuntimeError("the bindings failed")
        if self.end_capture_result is not None:
            return self.end_capture_result
        graph = real.cudaGraph_t(self._handle())
        self.log.append(("graph", native(graph)))
        return OK, graph

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[Any, ...]:
        return OK, real.cudaGraphExec_t(self._handle())

    def cudaGraphDestroy(self, graph: Any) -> tuple[Any, ...]:
        self.log.append(("cudaGraphDestroy", native(graph)))
        return (OK,)

    def cudaGraphExecDestroy(self, graph: Any) -> tuple[Any, ...]:
        self.log.append(("cudaGraphExecDestroy", native(graph)))
        return (OK,)


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    if real is None:
        pytest.skip(NO_BINDINGS)
    fake = FakeCudart()
    monkeypatch.setattr(cuda_device, "cudart", fake)
    return fake


def stream(cudart: FakeCudart) -> CudaStream:
    return CudaStream(cudart.cudaStreamCreateWithFlags(0)[1], cudart.cudaStreamDestroy)


# ------------------------------------------------------------------------------------------------- fake TensorRT


class Enum:
    def __init__(self, **members: int) -> None:
        for k, v in members.items():
            setattr(self, k, f"{type(self).__name__}.{k}={v}")


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy: Any) -> None:
        self.engine = engine  # the bindings' keep_alive: a context keeps its engine alive
        self.strategy = strategy
        self.memory: list[tuple[int, int]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.launches: list[int] = []
        weakref.finalize(self, engine.events.append, ("context freed", engine.graph))

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory.append((ptr, size))

    def set_input_shape(self, name: str, dims: Any) -> bool:
        if tuple(dims)[0] > self.engine.max_batch:
            return False
        self.shapes[name] = tuple(dims)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        first = self.shapes[IO[self.engine.graph][0][0]]
        return first if self.engine.graph == "restore_step" else first[:1]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.launches.append(stream)
        return True


class FakeInspector:
    def __init__(self, engine: FakeEngine, info: str) -> None:
        self.engine = engine
        self.info = info
        self.execution_context: FakeContext | None = None
        weakref.finalize(self, engine.events.append, ("inspector freed", engine.graph))

    def get_engine_information(self, fmt: Any) -> str:
        assert self.execution_context is not None and self.execution_context.shapes, "shapes before inspecting"
        return self.info


class FakeEngine:
    def __init__(self, graph: str, memory: int, events: list[tuple[str, str]], runtime: Any = None,
                 max_batch: int = 16, context_fails: bool = False, inspector: bool = True) -> None:
        self.graph, self.device_memory_size_v2, self.events, self.max_batch = graph, memory, events, max_batch
        self.runtime = runtime  # an engine keeps the runtime that made it alive
        self.context_fails, self.has_inspector = context_fails, inspector
        self.contexts: list[weakref.ref[FakeContext]] = []
        names, output = IO[graph]
        self.names = [*names, output]
        weakref.finalize(self, events.append, ("engine freed", graph))

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> Any:
        trt = sys.modules["tensorrt"]
        return trt.TensorIOMode.OUTPUT if name == IO[self.graph][1] else trt.TensorIOMode.INPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return sys.modules["tensorrt"].DataType.FLOAT

    def create_execution_context(self, strategy: Any = "STATIC") -> FakeContext | None:
        if self.context_fails:
            return None
        context = FakeContext(self, strategy)
        self.contexts.append(weakref.ref(context))
        return context

    def create_engine_inspector(self) -> FakeInspector | None:
        return FakeInspector(self, json.dumps({"Layers": []})) if self.has_inspector else None


class FakeRuntime:
    """A runtime; what it was asked is also written to `events` (the tests drop their references to see the
    release order)."""

    def __init__(self, logger: Any, events: list[tuple[str, str]], name: str = "runtime") -> None:
        self.events, self.name = events, name
        self._host_code = False
        self.loaded: list[str] = []
        self.plan_engine: FakeEngine | None = None  # what deserialize returns (handed over once)
        self.lean: FakeRuntime | None = None  # what load_runtime returns (handed over once)

    def __del__(self) -> None:
        # Like a pybind11 object, whose C++ destructor runs before its weak references' callbacks.
        self.events.append((f"{self.name} freed", ""))

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        self._host_code = value
        self.events.append((f"{self.name} host code allowed", str(value)))

    def load_runtime(self, path: str) -> FakeRuntime | None:
        self.loaded.append(path)
        self.events.append((f"{self.name} load_runtime", path))
        lean, self.lean = self.lean, None
        return lean

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        self.read = plan
        self.events.append((f"{self.name} deserialize", plan.decode()))
        engine, self.plan_engine = self.plan_engine, None
        return engine


def fake_tensorrt(events: list[tuple[str, str]]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"  # type: ignore[attr-defined]

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level: str) -> None:
            self.level = level

    class ExecutionContextAllocationStrategy(Enum):
        pass

    class TensorIOMode(Enum):
        pass

    class DataType(Enum):
        pass

    class LayerInformationFormat(Enum):
        pass

    trt.Builder = object  # type: ignore[attr-defined]  (tensorrt_missing looks for it)
    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.Runtime = lambda logger: FakeRuntime(logger, events)  # type: ignore[attr-defined]
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy(  # type: ignore[attr-defined]
        STATIC=0, ON_PROFILE_CHANGE=1, USER_MANAGED=2)
    trt.TensorIOMode = TensorIOMode(INPUT=1, OUTPUT=2)  # type: ignore[attr-defined]
    trt.DataType = DataType(FLOAT=0)  # type: ignore[attr-defined]
    trt.LayerInformationFormat = LayerInformationFormat(ONELINE=0, JSON=1)  # type: ignore[attr-defined]
    trt.Dims = tuple  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def events() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]]) -> types.ModuleType:
    module = fake_tensorrt(events)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


MEMORY = {"restore_step": 4096, "vcg": 12288, "vda": 8192}


def make_launcher(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]], **kw: Any) -> TensorRTLauncher:
    def load(bundle: Any, graph: str, precision: str, runtime: Any, here: Any = None, *,
             lean_runtime: Any = None) -> FakeEngine:
        return FakeEngine(graph, MEMORY[graph], events, runtime=runtime)

    monkeypatch.setattr(tensorrt_backend, "load_engine", load)
    return TensorRTLauncher(types.SimpleNamespace(root=Path("fake")), dict.fromkeys(MEMORY, "fp32"), **kw)


def arrays(batch: int, size: int = 16) -> dict[str, DeviceArray]:
    """Device arrays at made-up, 256-aligned addresses (the launcher only binds them)."""
    image = (batch, 3, size, size)
    shapes = {"x": image, "y": image, "gamma": (batch,), "coef": (batch, 5), "z": (1, 3, size, size),
              "out": image, "score": (batch,)}
    return {k: DeviceArray(0x7F00_0000_0000 + 0x10_0000 * i, s) for i, (k, s) in enumerate(shapes.items())}


def restore(la: TensorRTLauncher, s: CudaStream, batch: int) -> None:
    a = arrays(batch)
    la.restore_step(a["x"], a["y"], a["gamma"], a["coef"], a["z"], a["out"], s)


def branch(la: TensorRTLauncher, name: str, s: CudaStream, batch: int) -> None:
    a = arrays(batch)
    getattr(la, name)(a["x"], a["y"], a["x"], a["y"], a["score"], s)


def contexts(la: TensorRTLauncher) -> list[FakeContext]:
    return list(la._contexts.values())  # type: ignore[arg-type]


# ------------------------------------------------------------------------- launcher: context memory, per stream


def test_contexts_share_one_memory_block_per_stream(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart,
                                                    trt: types.ModuleType, events: list[tuple[str, str]]) -> None:
    la = make_launcher(monkeypatch, events)
    assert la.context_memory_bytes == 12288  # the largest engine's device_memory_size_v2, fixed at creation
    loop, s1, s2 = stream(cudart), stream(cudart), stream(cudart)
    restore(la, loop, 2)
    restore(la, loop, 4)  # a second shape: a second context, same block
    branch(la, "vcg", s1, 8)
    branch(la, "vda", s2, 8)
    restore(la, loop, 2)  # cached
    ctxs = contexts(la)
    assert la.context_count == 4 and la.memory_blocks == 3
    assert all(c.strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED for c in ctxs)
    assert all(len(c.memory) == 1 and c.memory[0][1] == 12288 for c in ctxs)
    block = {(c.engine.graph, c.shapes["x"][0]): c.memory[0][0] for c in ctxs}
    r2, r4, vcg, vda = block["restore_step", 2], block["restore_step", 4], block["vcg", 8], block["vda", 8]
    assert [c.engine.graph for c in ctxs][-1] == "restore_step"  # the cached context moved to the LRU's end
    assert r2 == r4  # contexts on one stream run in stream order: they share
    assert len({r2, vcg, vda}) == 3  # VCG and VDA run concurrently on their streams: they must not
    assert [c[2] for c in cudart.calls("cudaMalloc")] == [12288] * 3  # exactly one block per stream, full size
    assert all(ptr % 256 == 0 for ptr in (r2, vcg, vda))


def test_streams_off_means_one_block(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart, trt: types.ModuleType,
                                     events: list[tuple[str, str]]) -> None:
    la = make_launcher(monkeypatch, events)
    loop = stream(cudart)
    restore(la, loop, 2)
    branch(la, "vcg", loop, 2)
    branch(la, "vda", loop, 2)
    assert la.memory_blocks == 1 and len({c.memory[0][0] for c in contexts(la)}) == 1


def test_an_engine_is_kept_to_one_stream(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart,
                                         trt: types.ModuleType, events: list[tuple[str, str]]) -> None:
    la = make_launcher(monkeypatch, events)
    branch(la, "vcg", stream(cudart), 2)
    with pytest.raises(BackendError, match="one optimisation profile lets only one of its contexts run at a time"):
        branch(la, "vcg", stream(cudart), 4)


def test_lru_eviction_keeps_captured_contexts_alive(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart,
                                                    trt: types.ModuleType, events: list[tuple[str, str]]) -> None:
    la = make_launcher(monkeypatch, events, max_contexts=2)
    loop = stream(cudart)
    restore(la, loop, 1)
    first = weakref.ref(contexts(la)[0])
    restore(la, loop, 2)
    restore(la, loop, 3)  # evicts batch 1, the least recently used
    gc.collect()
    assert la.context_count == 2 and first() is None
    assert la.take_capture_refs() == []  # eager launches are not capture references

    cudart.cudaStreamBeginCapture(loop.handle, 0)
    restore(la, loop, 3)
    restore(la, loop, 3)
    with pytest.raises(BackendError, match="needed inside a CUDA graph capture"):
        restore(la, loop, 5)  # a new context would allocate inside the capture
    cudart.cudaStreamEndCapture(loop.handle)
    refs = la.take_capture_refs()
    assert [c.shapes["x"][0] for c in refs] == [3]  # once, however often it was launched
    assert la.take_capture_refs() == []
    captured = weakref.ref(refs[0])

    restore(la, loop, 4)
    restore(la, loop, 6)  # evicts batch 3 from the cache ...
    gc.collect()
    assert la.context_count == 2 and all(c.shapes["x"][0] != 3 for c in contexts(la))
    assert captured() is not None  # ... but the graph's references keep it, and its memory block is unchanged
    assert captured().memory == [(la._blocks[loop.ptr].ptr, 12288)]  # type: ignore[union-attr]
    del refs
    gc.collect()
    assert captured() is None


def test_context_budget_covers_every_branch_batch_size() -> None:
    def bundle(max_batch: int) -> Any:
        entry = _entry(file="e", profile={"x": ShapeRange((1, 3, 64, 64), (1, 3, 64, 64), (max_batch, 3, 64, 64))})
        return types.SimpleNamespace(engine=lambda g, p: entry)

    plan = dict.fromkeys(MEMORY, "fp32")
    assert context_budget(bundle(4), plan) == 32  # 8 slots + 2 x 4 branch sizes fit the default
    assert context_budget(bundle(16), plan) == 8 + 2 * 16  # faithful mode at batch 8 with `five`: up to 16 crops


def test_max_contexts_is_checked(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart, trt: types.ModuleType,
                                 events: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError, match="max_contexts must be at least 1"):
        make_launcher(monkeypatch, events, max_contexts=0)


# ---------------------------------------------------------------------------------------- launcher: lifecycle


def test_close_releases_contexts_engines_runtime_then_memory(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart,
                                                             trt: types.ModuleType,
                                                             events: list[tuple[str, str]]) -> None:
    with make_launcher(monkeypatch, events) as la:
        loop, s1 = stream(cudart), stream(cudart)
        restore(la, loop, 2)
        branch(la, "vcg", s1, 2)
        blocks = sorted(b.ptr for b in la._blocks.values())
        del loop, s1
        gc.collect()
        cudart.log.clear()
    kinds = [e[0] for e in events]
    assert kinds == ["context freed", "context freed", "engine freed", "engine freed", "engine freed",
                     "runtime freed"], events
    assert cudart.log == [("cudaDeviceSynchronize",), *sorted(("cudaFree", p) for p in blocks)]
    la.close()  # idempotent: nothing freed twice
    gc.collect()
    assert len(events) == 6 and len(cudart.calls("cudaFree")) == 2
    with pytest.raises(BackendError, match="closed"):
        restore(la, stream(cudart), 2)


def test_a_failed_load_releases_what_was_made(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart,
                                              trt: types.ModuleType, events: list[tuple[str, str]]) -> None:
    def load(bundle: Any, graph: str, precision: str, runtime: Any, here: Any = None, *,
             lean_runtime: Any = None) -> FakeEngine:
        if graph == "vda":
            raise DependencyError("no vda engine")
        return FakeEngine(graph, 1, events, runtime=runtime)

    monkeypatch.setattr(tensorrt_backend, "load_engine", load)
    with pytest.raises(DependencyError):
        TensorRTLauncher(types.SimpleNamespace(root=Path("fake")), dict.fromkeys(MEMORY, "fp32"))
    gc.collect()
    assert sorted(e[0] for e in events) == ["engine freed", "engine freed", "runtime freed"]


# ---------------------------------------------------------------------------------- CudaDevice: capture, close


def test_abort_capture_ends_the_capture_and_destroys_its_graph(cudart: FakeCudart) -> None:
    d = CudaDevice()
    s = d.stream()
    d.begin_capture(s)
    d.abort_capture(s)
    graph = [c[1] for c in cudart.log if c[0] == "graph"]
    assert cudart.calls("cudaStreamEndCapture") == [("cudaStreamEndCapture", s.ptr)]
    assert cudart.calls("cudaGraphDestroy") == [("cudaGraphDestroy", graph[0])]
    assert not s.capturing and d._capturing is None
    d.begin_capture(s)  # the stream and the device take a new capture
    assert d.end_capture(s) is not None
    d.close()


def test_abort_capture_without_a_capture_does_nothing(cudart: FakeCudart) -> None:
    d = CudaDevice()
    s = d.stream()
    d.abort_capture(s)
    assert cudart.calls("cudaStreamEndCapture") == [] and cudart.calls("cudaGraphDestroy") == []
    d.close()


@pytest.mark.parametrize("failure", ["invalidated", "raises"])
def test_abort_capture_never_raises(cudart: FakeCudart, failure: str) -> None:
    d = CudaDevice()
    s = d.stream()
    d.begin_capture(s)
    if failure == "invalidated":  # what CUDA returns after an illegal call inside the capture
        cudart.end_capture_result = (real.cudaError_t.cudaErrorStreamCaptureInvalidated, real.cudaGraph_t(0))
    else:
        cudart.end_capture_raises = True
    d.abort_capture(s)
    assert cudart.calls("cudaGraphDestroy") == [] and d._capturing is None
    cudart.end_capture_result, cudart.end_capture_raises = None, False
    d.begin_capture(s)
    d.end_capture(s)
    d.close()


def test_allocation_inside_a_capture_is_refused(cudart: FakeCudart) -> None:
    d = CudaDevice()
    s = d.stream()
    d.begin_capture(s)
    with pytest.raises(RuntimeError, match="allocation while capturing a graph: allocate buffers before"):
        d.empty((4,))
    with pytest.raises(RuntimeError, match="allocation while capturing"):
        d.pinned((4,))
    d.abort_capture(s)
    d.close()


def test_close_frees_everything_the_device_made_once(cudart: FakeCudart) -> None:
    with CudaDevice() as d:
        s = d.stream()
        e = d.event()
        a = d.empty((4, 3))
        h = d.pinned((2, 3))
        assert np.isnan(h).all()
        d.begin_capture(s)
        d.record(e, s)
        kept = d.end_capture(s)
        d.begin_capture(s)  # left open: close aborts it
        mallocs = [c[1] for c in cudart.calls("cudaMalloc")]
        hosts = [c[1] for c in cudart.calls("cudaMallocHost")]
        cudart.log.clear()
    log = cudart.log
    names = [c[0] for c in log]
    assert names[:2] == ["cudaStreamEndCapture", "graph"] and "cudaDeviceSynchronize" in names
    assert names.index("cudaDeviceSynchronize") < names.index("cudaFree")  # the GPU finishes before memory goes
    assert cudart.calls("cudaGraphExecDestroy") == [("cudaGraphExecDestroy", kept.ptr)]
    assert cudart.calls("cudaEventDestroy") == [("cudaEventDestroy", e.ptr)]
    assert len(cudart.calls("cudaStreamDestroy")) == 2  # the loop stream and the device's fill stream
    assert [c[1] for c in cudart.calls("cudaFree")] == mallocs == [a.ptr]
    assert [c[1] for c in cudart.calls("cudaFreeHost")] == hosts
    d.close()
    del a, h, kept, e, s
    gc.collect()
    assert cudart.log == log  # idempotent, and collecting the arrays afterwards frees nothing twice
    with pytest.raises(RuntimeError, match="closed"):
        d.stream()


def test_buffers_dropped_before_close_are_freed_once(cudart: FakeCudart) -> None:
    d = CudaDevice()
    for _ in range(70):  # more than the device's pruning threshold
        d.empty((1,))
    gc.collect()
    assert len(cudart.calls("cudaFree")) == 70
    d.close()
    assert len(cudart.calls("cudaFree")) == 70 and len(d._allocations) == 0


def test_handles_are_read_with_get_cuda_native_handle(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    """Issue 21 (1.5): int(handle) is deprecated from cuda-bindings 12.9.1/13.0; the supported accessor is used."""
    seen: list[Any] = []
    original = cuda_utils.get_cuda_native_handle

    def spy(obj: Any) -> int:
        seen.append(obj)
        return int(original(obj))

    s = stream(cudart)
    expected = native(s.handle)
    monkeypatch.setattr(cuda_device.cuda_utils, "get_cuda_native_handle", spy)
    assert s.ptr == expected and seen == [s.handle]


# ------------------------------------------------------------------------------------------------------ builder


PROFILES = (InputProfile("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),)


def plan_runtime(trt: types.ModuleType, events: list[tuple[str, str]], lean: bool = False, **engine: Any) -> None:
    """Make trt.Runtime return (once) a runtime whose deserialize gives a fake vcg engine; with `lean`, the engine
    comes from the lean runtime its load_runtime gives. No reference is kept here."""
    runtime = FakeRuntime(None, events)
    reader = runtime
    if lean:
        runtime.lean = reader = FakeRuntime(None, events, name="lean")
    reader.plan_engine = FakeEngine("vcg", 512, events, runtime=reader, **engine)
    pending = [runtime]
    trt.Runtime = lambda logger: pending.pop()  # type: ignore[attr-defined]


def test_inspection_frees_inspector_context_engine_runtime_in_order(trt: types.ModuleType,
                                                                    events: list[tuple[str, str]]) -> None:
    plan_runtime(trt, events)
    got = inspect_plan(None, b"plan", PROFILES, BuildSettings(), "vcg.onnx")  # type: ignore[arg-type]
    gc.collect()
    assert got.layer_information == json.dumps({"Layers": []}) and got.device_memory_bytes == 512
    assert [e[0] for e in events] == ["runtime deserialize", "inspector freed", "context freed", "engine freed",
                                      "runtime freed"]


@pytest.mark.parametrize(("engine", "message"), [
    ({"context_fails": True}, "could not create an execution context to inspect it"),
    ({"max_batch": 1}, r"refused its own optimal shape \[2, 3, 8, 8\] for input x"),
    ({"inspector": False}, "could not create an engine inspector"),
])
def test_inspection_checks_every_step_and_still_frees(trt: types.ModuleType, events: list[tuple[str, str]],
                                                     engine: dict[str, Any], message: str) -> None:
    plan_runtime(trt, events, **engine)
    with pytest.raises(BuildError, match=message):
        inspect_plan(None, b"plan", PROFILES, BuildSettings(), "vcg.onnx")  # type: ignore[arg-type]
    gc.collect()
    assert {e[0] for e in events} >= {"engine freed", "runtime freed"}


def test_inspection_of_a_plan_without_lean_runtime_loads_it(trt: types.ModuleType, events: list[tuple[str, str]],
                                                            tmp_path: Path) -> None:
    library = tmp_path / "libnvinfer_lean.so.10"
    library.write_bytes(b"")
    plan_runtime(trt, events, lean=True)
    settings = BuildSettings(version_compatible=True, exclude_lean_runtime=True, lean_runtime=library)
    settings.check()
    inspect_plan(None, b"plan", PROFILES, settings, "vcg.onnx")  # type: ignore[arg-type]
    gc.collect()
    assert events == [("runtime load_runtime", str(library)), ("lean host code allowed", "True"),
                      ("lean deserialize", "plan"), ("inspector freed", "vcg"), ("context freed", "vcg"),
                      ("engine freed", "vcg"), ("lean freed", ""), ("runtime freed", "")]


def test_failed_profile_and_failed_build_are_build_errors(trt: types.ModuleType) -> None:
    class Builder:
        def create_optimization_profile(self) -> Any:
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network: Any, config: Any) -> None:
            return None

    config = types.SimpleNamespace(add_optimization_profile=lambda p: -1)
    with pytest.raises(BuildError, match="refused the optimisation profile"):
        add_profile(Builder(), config, PROFILES)  # type: ignore[arg-type]
    with pytest.raises(BuildError, match="could not build an engine from g.onnx"):
        build_plan(Builder(), None, config, Path("g.onnx"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("settings", "message"), [
    (BuildSettings(version_compatible=True, exclude_lean_runtime=True), "add --lean-runtime PATH"),
    (BuildSettings(lean_runtime=Path("x.so")), "--lean-runtime is only used with --exclude-lean-runtime"),
])
def test_lean_runtime_settings_are_checked(settings: BuildSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.check()


# ------------------------------------------------------------------------------------------------------- loader


def _bundle(tmp_path: Path, **fields: Any) -> Any:
    (tmp_path / "vcg.plan").write_bytes(b"engine bytes")
    entry = _entry(**fields)
    return types.SimpleNamespace(root=tmp_path, engine=lambda g, p: entry,
                                 engine_path=lambda g, p: tmp_path / "vcg.plan")


HERE = Machine("10.13.0.35", "G", "9.0")


def test_an_engine_without_its_lean_runtime_needs_one(tmp_path: Path, events: list[tuple[str, str]]) -> None:
    bundle = _bundle(tmp_path, version_compatible=True, lean_runtime="external",
                     flags={"exclude_lean_runtime": True})
    assert needs_lean_runtime(bundle.engine("vcg", "fp32"))
    runtime = FakeRuntime(None, events)
    with pytest.raises(DependencyError, match=r"built with --exclude-lean-runtime.*TensorRT 10\.13\.0\.35.*"
                                              r"--lean-runtime PATH"):
        load_engine(bundle, "vcg", "fp32", runtime, HERE)  # type: ignore[arg-type]
    lean = FakeRuntime(None, events, name="lean")
    lean.plan_engine = expected = FakeEngine("vcg", 1, events)
    engine = load_engine(bundle, "vcg", "fp32", runtime, HERE, lean_runtime=lean)  # type: ignore[arg-type]
    assert engine is expected and lean.read == b"engine bytes" and lean.engine_host_code_allowed
    assert not hasattr(runtime, "read")  # the full runtime never saw the plan


def test_embedded_lean_runtime_needs_nothing_more(tmp_path: Path, events: list[tuple[str, str]]) -> None:
    bundle = _bundle(tmp_path, version_compatible=True, lean_runtime="embedded")
    runtime = FakeRuntime(None, events)
    runtime.plan_engine = expected = FakeEngine("vcg", 1, events)
    assert load_engine(bundle, "vcg", "fp32", runtime, HERE) is expected  # type: ignore[arg-type]
    assert runtime.engine_host_code_allowed


def test_a_lean_runtime_keeps_its_parent_alive(tmp_path: Path, events: list[tuple[str, str]]) -> None:
    (tmp_path / "lean.so").write_bytes(b"")
    parent = FakeRuntime(None, events)
    parent.lean = FakeRuntime(None, events, name="lean")
    lean = load_lean_runtime(parent, tmp_path / "lean.so")  # type: ignore[arg-type]
    del parent
    gc.collect()
    assert events[-1] == ("lean host code allowed", "True")  # nothing freed: the lean runtime holds its parent
    del lean
    gc.collect()
    assert [e[0] for e in events[-2:]] == ["lean freed", "runtime freed"]


def test_lean_runtime_library_errors(tmp_path: Path, events: list[tuple[str, str]]) -> None:
    runtime = FakeRuntime(None, events)
    with pytest.raises(DependencyError, match="does not exist"):
        load_lean_runtime(runtime, tmp_path / "missing.so")  # type: ignore[arg-type]
    (tmp_path / "lean.so").write_bytes(b"")
    with pytest.raises(DependencyError, match="could not load the lean runtime library"):
        load_lean_runtime(runtime, tmp_path / "lean.so")  # type: ignore[arg-type]

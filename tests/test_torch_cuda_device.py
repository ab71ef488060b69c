"""The torch-cuda device layer and the PyTorch graphs on cuda-python's CudaDevice, as far as a CPU can check them.

TorchCudaDevice cannot be made without a GPU; its copy paths go through two seams (`_scope`, `_copy_event`) that the
tests replace with CPU stand-ins, so what they check is the device's own logic: which host memory a copy reads, how
long it is kept, and how an aborted capture is cleaned up. TorchOnCudaDeviceLauncher runs for real on the CPU over
HostPointerDevice (CudaDevice's arrays over host memory): its CUDA Array Interface dictionaries are what the tensors
are built from, so a wrong pointer, shape or type would show in the scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from diffv2iqa_trt.config import ScoringConfig
from diffv2iqa_trt.errors import BackendError, ConfigError
from diffv2iqa_trt.model.diffv2iqa import DiffV2IQA
from diffv2iqa_trt.reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher, host_tensor
from diffv2iqa_trt.reference.torch_executor import TorchExecutor
from diffv2iqa_trt.reference.torch_on_cuda_device import (
    CudaArrayView,
    HostPointerDevice,
    cuda_array_interface,
    host_launcher,
)
from diffv2iqa_trt.runtime.backends.cuda_device import DeviceArray
from diffv2iqa_trt.runtime.pipeline import Pipeline, PipelineSpec
from diffv2iqa_trt.runtime.stream_pipeline import StreamPipeline

FAKE_PTR = 0x7F00_0000_0000  # nothing is allocated there: the dictionaries are arithmetic only


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread: on a shared 2-core machine two contending threads ran a step 70x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ TorchCudaDevice


class FakeEvent:
    """A CUDA event stand-in: done when the test says so."""

    def __init__(self) -> None:
        self.done = False
        self.recorded_on: Any = "never"

    def record(self, stream: Any = None) -> None:
        self.recorded_on = stream

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


class CpuTorchDevice(TorchCudaDevice):
    """TorchCudaDevice with CPU tensors and fake events (no torch.cuda call on the copy paths)."""

    def __init__(self) -> None:  # no super().__init__: it refuses a machine without a GPU
        self.device = torch.device("cpu")
        self._setup()
        self.events: list[FakeEvent] = []

    def _scope(self, stream: Any) -> Any:
        return contextlib.nullcontext()

    def _copy_event(self) -> Any:
        self.events.append(FakeEvent())
        return self.events[-1]


class Stream:
    def synchronize(self) -> None:
        pass


def _staging(shape: tuple[int, ...]) -> tuple[np.ndarray, weakref.ref[np.ndarray]]:
    """What pinned() hands out (a NumPy view whose base is a tensor over the memory), and a weak reference to the
    memory itself: alive as long as anything (the array, a tensor view of it) still uses it."""
    memory = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    staged: np.ndarray = torch.from_numpy(memory).numpy()
    return staged, weakref.ref(memory)


def test_host_tensor_is_a_view_of_the_pinned_tensors_storage() -> None:
    """Not a torch.from_numpy alias (a storage of its own, which torch's caching host allocator does not track)."""
    pinned = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    array = pinned.numpy()
    for view in (array, array[2], array[1:3], array[:, 2:5]):
        t = host_tensor(view)
        assert t.untyped_storage().data_ptr() == pinned.untyped_storage().data_ptr()
        assert t.untyped_storage().nbytes() == pinned.untyped_storage().nbytes()  # the whole block, not the view
        assert torch.equal(t, torch.from_numpy(np.ascontiguousarray(view)))
    host_tensor(array[3])[1] = -5.0  # the same memory, not a copy
    assert pinned[3, 1] == -5.0
    plain = np.ones((2, 3), np.float32)  # no tensor behind it: torch.from_numpy
    assert host_tensor(plain).untyped_storage().nbytes() == plain.nbytes


def test_copies_keep_their_host_memory_alive_until_their_event_completes() -> None:
    d = CpuTorchDevice()
    stream = Stream()
    staged, memory = _staging((3, 4))
    dst = torch.empty(4)
    d.upload(staged[1], dst, stream)
    assert dst.tolist() == [4.0, 5.0, 6.0, 7.0]
    del staged
    gc.collect()
    assert memory() is not None  # the caller dropped it, but the copy's event has not completed
    assert d.events[0].recorded_on is stream and len(d.in_flight) == 1
    d.synchronize(stream)  # the event is still not done: nothing may go
    gc.collect()
    assert memory() is not None
    d.events[0].done = True
    d.synchronize(stream)
    gc.collect()
    assert memory() is None and len(d.in_flight) == 0

    out, out_memory = _staging((2, 2))
    d.download(torch.full((2,), 9.0), out[0], stream)
    assert out[0].tolist() == [9.0, 9.0]
    del out
    gc.collect()
    assert out_memory() is not None
    d.events[-1].done = True
    d.upload(np.zeros(4, np.float32), dst, stream)  # any later copy prunes the finished ones
    gc.collect()
    assert out_memory() is None and len(d.in_flight) == 1


class FakeGraph:
    instances: list[FakeGraph] = []

    def __init__(self) -> None:
        self.ended = self.reset_calls = 0
        self.fail_end = False
        FakeGraph.instances.append(self)

    def capture_begin(self, capture_error_mode: str = "global") -> None:
        self.mode = capture_error_mode

    def capture_end(self) -> None:
        self.ended += 1
        if self.fail_end:
            raise RuntimeError("operation not permitted when stream is capturing (capture invalidated)")

    def reset(self) -> None:
        self.reset_calls += 1


@pytest.fixture
def fake_graphs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch.cuda.CUDAGraph and torch.cuda.stream replaced: the stream scope logs its entries and exits."""
    scopes: list[str] = []

    @contextlib.contextmanager
    def stream_scope(stream: Any) -> Iterator[None]:
        scopes.append("enter")
        yield
        scopes.append("exit")

    FakeGraph.instances.clear()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "stream", stream_scope)
    return scopes


def test_abort_capture_never_raises_and_leaves_the_device_usable(fake_graphs: list[str]) -> None:
    d = CpuTorchDevice()
    stream = Stream()
    d.abort_capture(stream)  # nothing captured: a no-op
    d.begin_capture(stream)
    graph = FakeGraph.instances[-1]
    assert graph.mode == "thread_local" and fake_graphs == ["enter"]
    with pytest.raises(RuntimeError, match="while capturing"):
        d.synchronize(stream)
    graph.fail_end = True  # the error that interrupted the capture also invalidated it
    d.abort_capture(stream)
    assert graph.ended == 1 and graph.reset_calls == 1 and fake_graphs == ["enter", "exit"]
    d.synchronize(stream)  # eager work again
    d.abort_capture(stream)  # twice: still nothing raised, nothing ended twice
    assert graph.ended == 1
    with pytest.raises(RuntimeError, match="end_capture without begin_capture"):
        d.end_capture(stream)
    d.begin_capture(stream)  # a new capture can start
    staged, memory = _staging((4,))
    d.upload(staged, torch.empty(4), stream)  # recorded into the graph: kept with it, no event
    new = d.end_capture(stream)
    del staged
    gc.collect()
    assert memory() is not None and not d.in_flight and len(d.events) == 0
    assert new is FakeGraph.instances[-1] and new.ended == 1


def test_close_is_idempotent_and_releases_graphs_and_captures(fake_graphs: list[str]) -> None:
    with CpuTorchDevice() as d:
        stream = Stream()
        d.begin_capture(stream)
        kept = d.end_capture(stream)
        d.begin_capture(stream)  # left open by the caller
        d.upload(np.ones(2, np.float32), torch.empty(2), stream)
    open_graph = FakeGraph.instances[-1]
    assert kept.reset_calls == 1 and open_graph.reset_calls == 1 and fake_graphs.count("exit") == 2
    d.close()
    assert kept.reset_calls == 1


def test_launcher_close_drops_the_model(tiny_model: DiffV2IQA) -> None:
    with TorchGraphLauncher(tiny_model) as launcher:
        assert launcher.model is tiny_model
    with pytest.raises(BackendError, match="closed"):
        launcher.vcg(*[np.zeros((1, 3, 64, 64), np.float32)] * 4, np.zeros(1, np.float32), None)
    launcher.close()
    with pytest.raises(ConfigError, match="runs fp32 or fp16"):
        TorchGraphLauncher(tiny_model, "int8")


@pytest.mark.parametrize(("precision", "inside"), [("fp32", False), ("tf32", True)])
def test_launches_set_tf32_for_their_precision_and_restore_it(precision: str, inside: bool,
                                                              tiny_model: DiffV2IQA) -> None:
    """PyTorch allows TF32 convolutions by default, which moves scores by ~1e-3: fp32 must mean FP32."""
    seen: list[tuple[bool, bool]] = []

    class Probe:
        def eval(self) -> Probe:
            return self

        def vcg(self, *inputs: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return torch.zeros(1)

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not inside
        launcher = TorchGraphLauncher(Probe(), precision)  # type: ignore[arg-type]
        launcher.vcg(*[np.zeros((1, 3, 4, 4), np.float32)] * 4, np.zeros(1, np.float32), None)
        assert seen == [(inside, inside)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (not inside, not inside)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


# ------------------------------------------------------------------------------ TorchOnCudaDeviceLauncher


def test_cuda_array_interface_of_arrays_and_views() -> None:
    base = DeviceArray(FAKE_PTR, (5, 2, 3), np.float32)
    cai = cuda_array_interface(base)
    assert cai == {"shape": (5, 2, 3), "typestr": "<f4", "data": (FAKE_PTR, False), "strides": None, "version": 3,
                   "stream": None}
    row = cuda_array_interface(base[3])
    assert row["data"] == (FAKE_PTR + 3 * 2 * 3 * 4, False) and row["shape"] == (2, 3)
    inner = cuda_array_interface(base[4][1])
    host = np.zeros((5, 2, 3), np.float32)
    assert inner["data"][0] - FAKE_PTR == host[4, 1].ctypes.data - host.ctypes.data and inner["shape"] == (3,)
    half = cuda_array_interface(DeviceArray(FAKE_PTR, (7,), np.float16)[6])
    assert half["typestr"] == "<f2" and half["shape"] == () and half["data"][0] == FAKE_PTR + 12
    view = CudaArrayView(base[1])
    assert view.__cuda_array_interface__["data"][0] == FAKE_PTR + 24 and view.array.owner is base
    with pytest.raises(ValueError, match="null pointer"):
        cuda_array_interface(DeviceArray(0, (2,), np.float32))


@pytest.mark.parametrize(("crops", "mode", "streams"), [("center", "crops", True), ("five", "faithful", False)])
def test_the_launcher_on_cuda_device_arrays_gives_the_reference_scores(crops: str, mode: str, streams: bool,
                                                                       one_thread: None, tiny_model: DiffV2IQA,
                                                                       photos: list[np.ndarray]) -> None:
    """Step-table rows, noise rows and crop rows are views handed to the launcher as interface dictionaries; the
    window copies are cut as CudaDevice cuts them (window_copies)."""
    images = [rgb[::7, ::7] for rgb in photos[:3]]
    spec = PipelineSpec.from_config(tiny_model.config, ScoringConfig(crops=crops, mode=mode), 5)
    want = np.array([r.score for r in Pipeline(TorchExecutor(tiny_model, "cpu"), spec, 2).score(images)])
    with HostPointerDevice() as device:
        pipe = StreamPipeline(device, host_launcher(tiny_model), spec, batch_size=2, streams=streams)
        got = np.array([r.score for r in pipe.score(images)])
    assert np.abs(got - want).max() <= 1e-6


def test_the_launcher_on_cuda_device_is_not_capturable(tiny_model: DiffV2IQA) -> None:
    spec = PipelineSpec.from_config(tiny_model.config, ScoringConfig(), 5)
    with pytest.raises(ConfigError, match="cannot be captured"):
        StreamPipeline(HostPointerDevice(), host_launcher(tiny_model), spec, cuda_graph=True)
    launcher = host_launcher(tiny_model, "fp16")
    assert launcher.capturable is False and launcher.precision == "fp16"
    launcher.close()


def test_host_pointer_device_copies_through_pointers() -> None:
    d = HostPointerDevice()
    s = d.stream()
    src = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    a, c = d.empty(src.shape), d.empty((3, 2, 3))
    assert isinstance(a, DeviceArray) and np.isnan(d.pinned((2,))).all()
    d.upload(src, a, s)
    d.copy_window(a[1], 1, 2, c, s)
    out = np.empty((3, 2, 3), np.float32)
    d.download(c, out, s)
    assert np.array_equal(out, src[1, :, 1:3, 2:5])
    with pytest.raises(ValueError, match="upload"):
        d.upload(src[0], a, s)
    assert dataclasses.is_dataclass(s)

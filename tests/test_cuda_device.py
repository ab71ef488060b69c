"""CudaDevice and the TensorRT launcher, as far as a machine without a GPU can check them: the pointer arithmetic of
device views and window copies (against NumPy's own offsets), the error helper on real cuda-bindings error values,
the no-copy pinned view, and the refusals on a machine without a GPU or TensorRT. The `gpu` tests run the device
layer's copies, events and graphs on a real GPU; nothing here runs a TensorRT engine.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest

from diffv2iqa_trt.engine.tensorrt_api import tensorrt_missing
from diffv2iqa_trt.errors import BackendError, DependencyError
from diffv2iqa_trt.runtime.backends.cuda_device import (
    CudaDevice,
    CudaError,
    DeviceArray,
    check,
    host_view,
    window_copies,
)
from diffv2iqa_trt.runtime.stream_pipeline import BufferPlan

try:
    from cuda.bindings import runtime as cudart
except ImportError:  # the pointer arithmetic, window copies and host views below need no bindings and still run
    cudart = None
NO_BINDINGS = "cuda-bindings is not installed (pip install 'diffv2iqa-trt[dev]')"
needs_bindings = pytest.mark.skipif(cudart is None, reason=NO_BINDINGS)

FAKE_PTR = 0x7F00_0000_0000  # an address nothing is allocated at: views are arithmetic only


def _gpu_missing() -> str | None:
    if cudart is None:
        return NO_BINDINGS
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"no usable CUDA GPU: cudaGetDeviceCount returned {err.name}"
    return None if count > 0 else "no CUDA GPU"


NO_GPU = _gpu_missing()


# ------------------------------------------------------------------------------------------------- device views


def _offset(view: np.ndarray, base: np.ndarray) -> int:
    return int(view.ctypes.data) - int(base.ctypes.data)


@pytest.mark.parametrize("shape,index", [((4, 3, 8, 8), 2), ((5, 2), 4), ((7,), 3), ((2, 1, 3, 6, 10), 1)])
def test_view_is_pointer_arithmetic_matching_numpy(shape: tuple[int, ...], index: int) -> None:
    base = DeviceArray(FAKE_PTR, shape, np.float32)
    host = np.zeros(shape, np.float32)
    view = base[index]
    assert view.ptr - base.ptr == _offset(host[index, ...], host)
    assert view.shape == host[index].shape and view.dtype == np.float32
    assert view.nbytes == host[index].nbytes
    assert view.owner is base  # keeps the allocation alive; never owns (frees) it
    if len(shape) > 1:
        inner = view[shape[1] - 1]
        assert inner.ptr - base.ptr == _offset(host[index, shape[1] - 1, ...], host)
        assert inner.owner is base  # a view of a view points at the allocation, not at the intermediate view


def test_view_negative_and_out_of_range_indices() -> None:
    base = DeviceArray(FAKE_PTR, (3, 2), np.float16)
    assert base[-1].ptr == base[2].ptr == FAKE_PTR + 2 * 2 * 2
    with pytest.raises(IndexError):
        base[3]
    with pytest.raises(IndexError):
        base[-4]
    with pytest.raises(IndexError):
        DeviceArray(FAKE_PTR, (), np.float32)[0]


def test_closing_a_view_or_unowned_array_frees_nothing() -> None:
    base = DeviceArray(FAKE_PTR, (2, 3), np.float32)
    base[1].close()
    base.close()  # not allocated by DeviceArray.allocate: no cudaFree of a made-up pointer (it would crash)


def test_stream_pipeline_step_rows_are_views_of_the_tables() -> None:
    """The rows the orchestration reads per step (gamma[i], coef[i], noise[i], x[j]) land where NumPy puts them."""
    plan = BufferPlan(batch=3, height=16, width=24, crops_per_image=2, crop_size=8, steps=5, direct=False)
    for name, shape in plan.shapes().items():
        host = np.zeros(shape, np.float32)
        device = DeviceArray(FAKE_PTR, shape)
        for i in (0, shape[0] - 1):
            assert device[i].ptr - device.ptr == _offset(host[i, ...], host), name
            assert device[i].shape == host[i].shape, name


# ----------------------------------------------------------------------------------------------- window copies


def _run_copies(copies: list[tuple[int, int, int, int, int, int]]) -> None:
    """What cudaMemcpy2D does with these parameters, done on the host: `height` rows of `width` bytes."""
    for dst, dpitch, src, spitch, width, height in copies:
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("top,left,h,w", [(0, 0, 8, 8), (5, 11, 8, 8), (12, 0, 8, 24), (0, 0, 20, 24), (3, 7, 1, 1)])
def test_window_copies_cut_what_numpy_slicing_cuts(dtype: type, top: int, left: int, h: int, w: int) -> None:
    src = np.arange(3 * 20 * 24, dtype=np.float32).reshape(3, 20, 24).astype(dtype)
    dst = np.full((3, h, w), -1, dtype)
    copies = window_copies(src.ctypes.data, src.shape, top, left, dst.ctypes.data, dst.shape, src.itemsize)
    assert len(copies) == 3  # one 2D copy per channel
    _run_copies(copies)
    np.testing.assert_array_equal(dst, src[:, top:top + h, left:left + w])


def test_window_copy_parameters() -> None:
    itemsize, base_src, base_dst = 4, 1_000_000, 2_000_000
    (d0, dp, s0, sp, width, height), (d1, _, s1, _, _, _) = window_copies(
        base_src, (2, 20, 24), 5, 11, base_dst, (2, 8, 6), itemsize)[:2]
    assert (dp, sp, width, height) == (6 * 4, 24 * 4, 6 * 4, 8)  # dst pitch = w, src pitch = W, width = w
    assert s0 == base_src + (5 * 24 + 11) * 4 and d0 == base_dst  # offset top*W + left
    assert s1 == base_src + (20 * 24 + 5 * 24 + 11) * 4 and d1 == base_dst + 8 * 6 * 4  # next channel


@pytest.mark.parametrize("top,left,dst_shape", [(13, 0, (3, 8, 8)), (0, 17, (3, 8, 8)), (-1, 0, (3, 8, 8)),
                                                (0, 0, (2, 8, 8))])
def test_window_outside_the_source_is_refused(top: int, left: int, dst_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        window_copies(FAKE_PTR, (3, 20, 24), top, left, FAKE_PTR, dst_shape, 4)


# ------------------------------------------------------------------------------------------------ host memory


def test_host_view_aliases_memory_and_frees_after_the_last_view() -> None:
    memory = ctypes.create_string_buffer(6 * 4)
    freed: list[bool] = []
    array = host_view(ctypes.addressof(memory), (2, 3), np.float32, lambda: freed.append(True))
    array[1, 2] = 7.5
    assert np.frombuffer(memory.raw, np.float32)[5] == 7.5  # written through: no copy
    row = array[1]
    del array
    gc.collect()
    assert not freed  # a slice still uses the memory
    assert row[2] == 7.5
    del row
    gc.collect()
    assert freed == [True]


# ------------------------------------------------------------------------------------------------------ errors


@needs_bindings
def test_check_returns_the_values_of_a_success() -> None:
    ok = cudart.cudaError_t.cudaSuccess
    assert check("cudaGetDevice", (ok, 3)) == 3
    assert check("cudaFree", (ok,)) is None
    assert check("cudaPointerGetAttributes", (ok, 1, 2)) == (1, 2)


@needs_bindings
def test_check_names_the_call_and_the_error() -> None:
    with pytest.raises(CudaError) as info:
        check("cudaMalloc", (cudart.cudaError_t.cudaErrorMemoryAllocation, None))
    assert isinstance(info.value, BackendError)
    assert str(info.value).startswith("cudaMalloc failed: cudaErrorMemoryAllocation (")
    assert (info.value.call, info.value.error) == ("cudaMalloc", "cudaErrorMemoryAllocation")


@needs_bindings
@pytest.mark.skipif(NO_GPU is None, reason="this machine has a usable CUDA GPU")
def test_check_on_the_error_this_machine_returns() -> None:
    result = cudart.cudaGetDeviceCount()
    with pytest.raises(CudaError, match=rf"^cudaGetDeviceCount failed: {result[0].name} \(.+\)$"):
        check("cudaGetDeviceCount", result)


@needs_bindings
@pytest.mark.skipif(NO_GPU is None, reason="this machine has a usable CUDA GPU")
def test_cuda_device_without_a_gpu_says_so() -> None:
    with pytest.raises(BackendError, match="no usable CUDA GPU: cudaGetDeviceCount failed"):
        CudaDevice()


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed here")
def test_tensorrt_launcher_asks_for_tensorrt_first() -> None:
    from diffv2iqa_trt.runtime.backends.tensorrt_backend import TensorRTLauncher

    with pytest.raises(DependencyError, match="pypi.nvidia.com"):
        TensorRTLauncher(None, {})  # refused before the bundle is read


# ---------------------------------------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))
def test_device_copies_events_and_graphs_on_a_gpu() -> None:
    with CudaDevice() as d:
        s1, s2 = d.stream(), d.stream()
        start, end, fork = d.event(timing=True), d.event(timing=True), d.event()
        src = np.arange(2 * 3 * 10 * 12, dtype=np.float32).reshape(2, 3, 10, 12)
        host = d.pinned(src.shape)
        assert np.isnan(host).all()  # NaN-filled like HostDevice
        a, b, win = d.empty(src.shape), d.empty(src.shape), d.empty((3, 4, 5))
        d.download(a, host, s1)
        d.synchronize(s1)
        assert np.isnan(host).all()
        np.copyto(host, src)
        d.record(start, s1)
        d.upload(host, a, s1)
        d.record(fork, s1)
        d.wait(s2, fork)
        d.copy(a[1], b[0], s2)  # views: row 1 of a into row 0 of b
        d.copy_window(a[1], 6, 7, win, s2)
        d.record(end, s2)
        out, out_win = d.pinned(src.shape[1:]), d.pinned((3, 4, 5))
        d.wait(s1, end)
        d.download(b[0], out, s1)
        d.download(win, out_win, s1)
        d.synchronize(s1)
        np.testing.assert_array_equal(out, src[1])
        np.testing.assert_array_equal(out_win, src[1][:, 6:10, 7:12])
        assert d.elapsed_ms(start, end) >= 0.0

        # A captured copy runs only when replayed.
        calls: list[int] = []
        d.begin_capture(s1)
        with pytest.raises(RuntimeError, match="while capturing"):
            d.synchronize(s1)
        d.enqueue(lambda: calls.append(1), s1)
        d.copy(a[0], b[1], s1)
        graph = d.end_capture(s1)
        assert calls == [1]
        d.download(b[1], out, s1)
        d.synchronize(s1)
        assert np.isnan(out).all()
        d.replay(graph, s1)
        d.download(b[1], out, s1)
        d.synchronize(s1)
        np.testing.assert_array_equal(out, src[0])

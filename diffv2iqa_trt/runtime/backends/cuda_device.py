"""`CudaDevice`: the stream pipeline's `Device` (runtime/device.py) over cuda-python's runtime API, without torch.

Arrays are `DeviceArray`s (a device pointer, a shape and a dtype; `a[i]` is a view of row i, never a copy), host
buffers are page-locked NumPy arrays, streams are non-blocking, and a captured graph is an instantiated
`cudaGraphExec_t`. Every cuda-bindings call goes through `check`, which turns a non-success `cudaError_t` into a
`CudaError` naming the call and the error. Semantics follow `HostDevice`: buffers start NaN-filled, and
`synchronize`/`wait_host` (and allocations) inside a capture are refused the same way. Handles are read with
`cuda.bindings.utils.get_cuda_native_handle` (`int(handle)` is deprecated from cuda-bindings 12.9.1/13.0 on).

Lifecycle: the device tracks what it made (streams, events, graphs, device and page-locked buffers); `close()`
(idempotent; `with CudaDevice() as d:`) aborts a capture left open, waits for the GPU, and releases all of it, so
nothing is left to the garbage collector. A buffer dropped earlier is freed when it is collected, as before.

Typed against cuda-bindings names (checked by tests) and the TensorRT 10.13 stubs; never run here: no GPU with
TensorRT was available.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ...errors import BackendError, DependencyError
from ..device import Work

try:
    from cuda.bindings import runtime as cudart
    from cuda.bindings import utils as cuda_utils
except ImportError:  # the GPU extra is missing: CudaDevice() says what to install
    cudart = None
    cuda_utils = None

Copy2D = tuple[int, int, int, int, int, int]  # dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, height
H = TypeVar("H", bound="_Handle")
_ALLOCATE_FIRST = "allocate buffers before capturing (a graph keeps the addresses it captured)"


class CudaError(BackendError):
    """A cuda-bindings call that returned an error."""

    def __init__(self, call: str, error: Any) -> None:
        self.call = call
        self.error = getattr(error, "name", str(error))
        ok, text = cudart.cudaGetErrorString(error)  # needs no driver: the text is in the bindings
        detail = f" ({text.decode(errors='replace')})" if ok == cudart.cudaError_t.cudaSuccess else ""
        super().__init__(f"{call} failed: {self.error}{detail}")


def check(call: str, result: Any) -> Any:
    """cuda-bindings returns (err, *values): the values (one is unwrapped, none gives None), or CudaError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(call, err)
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _release(fn: Callable[[Any], Any], handle: Any) -> None:
    # Unchecked: finalizers also run at interpreter exit, after the driver may be gone, and cannot report anyway.
    fn(handle)


def native_handle(handle: Any) -> int:
    """The address a cuda-bindings handle (cudaStream_t, cudaEvent_t, cudaGraphExec_t, ...) stands for, as an int
    (what TensorRT's execute_async_v3 takes), read the supported way; a plain int is already one."""
    if isinstance(handle, int):
        return handle
    return int(cuda_utils.get_cuda_native_handle(handle))


def device_synchronize() -> None:
    """Wait for all work on the current GPU; errors ignored (used only before releasing memory on close)."""
    if cudart is not None:
        cudart.cudaDeviceSynchronize()


class DeviceArray:
    """A C-contiguous array in device memory. A view (`owner` set) keeps its base alive and never frees memory."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: Any = np.float32,
                 owner: DeviceArray | None = None) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.owner = owner
        self._free: Callable[[], Any] | None = None  # set on the array that allocated

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: Any = np.float32) -> DeviceArray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = int(check("cudaMalloc", cudart.cudaMalloc(max(nbytes, 1))))
        array = cls(ptr, shape, dtype)
        array._free = weakref.finalize(array, _release, cudart.cudaFree, ptr)
        return array

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along the first axis."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> DeviceArray:
        if not self.shape:
            raise IndexError("a 0-d DeviceArray has no rows")
        i = index + self.shape[0] if index < 0 else index
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"index {index} out of range for first axis of size {self.shape[0]}")
        base = self if self.owner is None else self.owner  # not `or`: an empty array is falsy through __len__
        return DeviceArray(self.ptr + i * self.row_bytes, self.shape[1:], self.dtype, base)

    def close(self) -> None:
        """Free the allocation now (no-op for a view, or when already freed). Its views must not be used after."""
        if self._free is not None:
            self._free()

    def __repr__(self) -> str:
        kind = "view" if self.owner is not None else "array"
        return f"DeviceArray({kind}, ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype})"


def host_view(ptr: int, shape: tuple[int, ...], dtype: Any, free: Callable[[], None] | None) -> np.ndarray:
    """A NumPy array over `ptr` (no copy). `free` runs once the last array over that memory is gone: the buffer
    object is every view's base, so slices keep the memory alive too."""
    return _host_view(ptr, shape, dtype, free)[0]


def _host_view(ptr: int, shape: tuple[int, ...], dtype: Any,
               free: Callable[[], None] | None) -> tuple[np.ndarray, weakref.finalize[Any, Any] | None]:
    """host_view, and the finalizer that frees the memory (to free it early, on close)."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buffer = (ctypes.c_char * max(count * dt.itemsize, 1)).from_address(ptr)
    finalizer = None if free is None else weakref.finalize(buffer, free)
    return np.frombuffer(buffer, dt, count).reshape(shape), finalizer


def window_copies(src_ptr: int, src_shape: tuple[int, ...], top: int, left: int, dst_ptr: int,
                  dst_shape: tuple[int, ...], itemsize: int) -> list[Copy2D]:
    """The 2D copies (one per channel) of dst (C,h,w) = src (C,H,W)[:, top:top+h, left:left+w], both C-contiguous:
    (dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, height) as cudaMemcpy2DAsync takes them."""
    (c, big_h, big_w), (dc, h, w) = src_shape, dst_shape
    if c != dc or top < 0 or left < 0 or top + h > big_h or left + w > big_w:
        raise ValueError(f"window {h}x{w} at ({top}, {left}) of {dc} channels does not fit in a {src_shape} source")
    return [(dst_ptr + k * h * w * itemsize, w * itemsize,
             src_ptr + (k * big_h * big_w + top * big_w + left) * itemsize, big_w * itemsize,
             w * itemsize, h) for k in range(c)]


class _Handle:
    """A stream, event or graph handle, destroyed on close() or when garbage-collected (an evicted slot's events and
    graph go with it)."""

    def __init__(self, handle: Any, destroy: Callable[[Any], Any]) -> None:
        self.handle = handle
        self._destroy = weakref.finalize(self, _release, destroy, handle)

    @property
    def ptr(self) -> int:
        return native_handle(self.handle)

    def close(self) -> None:
        self._destroy()


class CudaStream(_Handle):
    """A non-blocking stream; `ptr` is the handle TensorRT's execute_async_v3 takes."""

    @property
    def capturing(self) -> bool:
        status = check("cudaStreamIsCapturing", cudart.cudaStreamIsCapturing(self.handle))
        return bool(status != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)


class CudaEvent(_Handle):
    """An event (timed only when asked: untimed events are cheaper to record and wait on)."""


class CudaGraph(_Handle):
    """An instantiated graph (cudaGraphExec_t), launched by `replay`."""


def _same(src: Any, dst: Any, what: str) -> None:
    # np.copyto would broadcast or cast; a raw copy cannot, so the shapes and dtypes must agree exactly.
    if tuple(src.shape) != tuple(dst.shape) or np.dtype(src.dtype) != np.dtype(dst.dtype):
        raise ValueError(f"{what}: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
    if any(isinstance(a, np.ndarray) and not a.flags.c_contiguous for a in (src, dst)):
        raise ValueError(f"{what}: host arrays must be C-contiguous")


class CudaDevice:
    """runtime.device.Device over cuda-bindings on one GPU (`index`, default the current one)."""

    name = "cuda"

    def __init__(self, index: int | None = None) -> None:
        if cudart is None:
            raise DependencyError("the tensorrt backend needs cuda-bindings: pip install "
                                  "'diffv2iqa-trt[tensorrt-cu12]' or '[tensorrt-cu13]' (by the CUDA major of the "
                                  "driver), which bring the matching cuda-bindings")
        try:
            count = int(check("cudaGetDeviceCount", cudart.cudaGetDeviceCount()))
        except CudaError as exc:
            raise BackendError(f"no usable CUDA GPU: {exc}; the tensorrt backend needs an NVIDIA GPU and driver "
                               "(use --backend onnxruntime on the CPU)") from None
        if count < 1:
            raise BackendError("no usable CUDA GPU: cudaGetDeviceCount found none")
        self.index = int(check("cudaGetDevice", cudart.cudaGetDevice())) if index is None else index
        check("cudaSetDevice", cudart.cudaSetDevice(self.index))  # also creates the context TensorRT will use
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
        # Finalizers of the device and page-locked buffers this device allocated: each frees its memory once, either
        # when its array is collected or on close(), whichever comes first.
        self._allocations: list[weakref.finalize[Any, Any]] = []
        self._capturing: CudaStream | None = None
        self._closed = False
        # A private stream for the NaN fill of new buffers: non-blocking streams do not wait for the legacy default
        # stream, so a plain cudaMemset could land after the first upload.
        self._fill = self.stream()

    # --------------------------------------------------------------------------------------------------- memory

    def _allocated(self, finalizer: weakref.finalize[Any, Any] | None) -> None:
        if finalizer is not None:
            if len(self._allocations) >= 64:  # forget buffers already freed, so the list stays as long as the live set
                self._allocations = [f for f in self._allocations if f.alive]
            self._allocations.append(finalizer)

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> DeviceArray:
        self._not_capturing("allocation", _ALLOCATE_FIRST)
        self._open()
        array = DeviceArray.allocate(shape, dtype)
        self._allocated(array._free if isinstance(array._free, weakref.finalize) else None)
        if np.issubdtype(array.dtype, np.floating):  # all-ones bytes are a NaN in every float format
            check("cudaMemsetAsync", cudart.cudaMemsetAsync(array.ptr, 0xFF, array.nbytes, self._fill.handle))
            check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self._fill.handle))
        return array

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        self._not_capturing("allocation", _ALLOCATE_FIRST)
        self._open()
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = int(check("cudaMallocHost", cudart.cudaMallocHost(max(nbytes, 1))))
        array, finalizer = _host_view(ptr, shape, dtype, lambda: _release(cudart.cudaFreeHost, ptr))
        self._allocated(finalizer)
        if np.issubdtype(array.dtype, np.floating):
            array.fill(np.nan)
        return array

    # ------------------------------------------------------------------------------------ streams, events, graphs

    def _track(self, handle: H) -> H:
        self._handles.add(handle)
        return handle

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("this CudaDevice is closed")

    def stream(self) -> CudaStream:
        self._open()
        # Non-blocking: no implicit sync with the legacy default stream, which TensorRT's own calls may use.
        raw = check("cudaStreamCreateWithFlags", cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        return self._track(CudaStream(raw, cudart.cudaStreamDestroy))

    def event(self, timing: bool = False) -> CudaEvent:
        self._open()
        flags = cudart.cudaEventDefault if timing else cudart.cudaEventDisableTiming
        raw = check("cudaEventCreateWithFlags", cudart.cudaEventCreateWithFlags(flags))
        return self._track(CudaEvent(raw, cudart.cudaEventDestroy))

    # ------------------------------------------------------------------------------------------------- copies

    def _memcpy(self, dst: int, src: int, nbytes: int, kind: Any, stream: CudaStream) -> None:
        check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle))

    def upload(self, src: np.ndarray, dst: DeviceArray, stream: CudaStream) -> None:
        _same(src, dst, "upload")
        self._memcpy(dst.ptr, src.ctypes.data, dst.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def download(self, src: DeviceArray, dst: np.ndarray, stream: CudaStream) -> None:
        _same(src, dst, "download")
        self._memcpy(dst.ctypes.data, src.ptr, src.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def copy(self, src: DeviceArray, dst: DeviceArray, stream: CudaStream) -> None:
        _same(src, dst, "copy")
        self._memcpy(dst.ptr, src.ptr, src.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)

    def copy_window(self, src: DeviceArray, top: int, left: int, dst: DeviceArray, stream: CudaStream) -> None:
        if src.dtype != dst.dtype or len(src.shape) != 3 or len(dst.shape) != 3:
            raise ValueError(f"copy_window: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for dptr, dpitch, sptr, spitch, width, height in window_copies(src.ptr, src.shape, top, left, dst.ptr,
                                                                       dst.shape, src.dtype.itemsize):
            check("cudaMemcpy2DAsync",
                  cudart.cudaMemcpy2DAsync(dptr, dpitch, sptr, spitch, width, height, kind, stream.handle))

    # -------------------------------------------------------------------------------------------- ordering

    def enqueue(self, work: Work, stream: CudaStream) -> None:
        work()  # a launcher call: it enqueues on `stream` itself (or is recorded, while capturing)

    def record(self, event: CudaEvent, stream: CudaStream) -> None:
        check("cudaEventRecord", cudart.cudaEventRecord(event.handle, stream.handle))

    def wait(self, stream: CudaStream, event: CudaEvent) -> None:
        check("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(stream.handle, event.handle, 0))

    def _not_capturing(self, what: str, why: str = "the orchestration waits inside the capture") -> None:
        if self._capturing is not None:
            raise RuntimeError(f"{what} while capturing a graph: {why}")

    def synchronize(self, stream: CudaStream) -> None:
        self._not_capturing("synchronize")
        check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream.handle))

    def wait_host(self, event: CudaEvent) -> None:
        self._not_capturing("wait_host")
        check("cudaEventSynchronize", cudart.cudaEventSynchronize(event.handle))

    def elapsed_ms(self, start: CudaEvent, end: CudaEvent) -> float:
        return float(check("cudaEventElapsedTime", cudart.cudaEventElapsedTime(start.handle, end.handle)))

    # ------------------------------------------------------------------------------------------ CUDA graphs

    def begin_capture(self, stream: CudaStream) -> None:
        if self._capturing is not None:
            raise RuntimeError("a capture is already in progress")
        # Thread-local: another thread's unsafe CUDA call (a decoder, a logger) cannot invalidate this capture.
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check("cudaStreamBeginCapture", cudart.cudaStreamBeginCapture(stream.handle, mode))
        self._capturing = stream

    def end_capture(self, stream: CudaStream) -> CudaGraph:
        if self._capturing is None:
            raise RuntimeError("end_capture without begin_capture")
        self._capturing = None
        graph = check("cudaStreamEndCapture", cudart.cudaStreamEndCapture(stream.handle))
        try:
            exec_ = check("cudaGraphInstantiate", cudart.cudaGraphInstantiate(graph, 0))
        except CudaError:
            cudart.cudaGraphDestroy(graph)
            raise
        check("cudaGraphDestroy", cudart.cudaGraphDestroy(graph))  # an executable graph does not need its template
        return self._track(CudaGraph(exec_, cudart.cudaGraphExecDestroy))

    def abort_capture(self, stream: CudaStream) -> None:
        """End a capture in progress on `stream` and destroy what it captured; a no-op when nothing is being
        captured. Never raises: it runs after another error, which must not be hidden. The stream is usable again
        afterwards (cudaStreamEndCapture ends even an invalidated capture, returning no graph)."""
        try:
            capturing = self._capturing is stream
            if not capturing:
                status = cudart.cudaStreamIsCapturing(stream.handle)
                capturing = (status[0] == cudart.cudaError_t.cudaSuccess
                             and status[1] != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)
            if capturing:
                err, graph = cudart.cudaStreamEndCapture(stream.handle)
                if err == cudart.cudaError_t.cudaSuccess and graph is not None and native_handle(graph):
                    cudart.cudaGraphDestroy(graph)
                cudart.cudaGetLastError()  # an invalidated capture leaves its error as the thread's last error
        except Exception:  # the error being handled is the one that matters
            pass
        finally:
            if self._capturing is stream:
                self._capturing = None

    def replay(self, graph: CudaGraph, stream: CudaStream) -> None:
        check("cudaGraphLaunch", cudart.cudaGraphLaunch(graph.handle, stream.handle))

    def close(self) -> None:
        """Release everything this device made: abort a capture left open, wait for the GPU (memory may not be
        freed under running work), destroy graphs, events and streams, then free the device and page-locked
        buffers. Idempotent. Arrays and host views from this device must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._capturing is not None:
            self.abort_capture(self._capturing)
        device_synchronize()
        handles = list(self._handles)
        for kind in (CudaGraph, CudaEvent, CudaStream):  # graphs may use events and streams: they go first
            for handle in handles:
                if isinstance(handle, kind):
                    handle.close()
        self._handles.clear()
        for finalizer in self._allocations:
            finalizer()
        self._allocations.clear()

    def __enter__(self) -> CudaDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

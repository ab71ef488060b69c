"""The GPU an engine is built on or loaded on: name, compute capability and memory, from cuda-bindings (no torch).

cuda-bindings imports on any machine; without a GPU or driver its calls return an error code (e.g.
cudaErrorInsufficientDriver), which becomes a DependencyError saying so. It ships no type information: the names used
here are checked against the installed module by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DependencyError


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    sm: str  # compute capability, "9.0"
    memory_bytes: int
    driver: str  # CUDA driver API version, "13.0"
    runtime: str  # CUDA runtime version of cuda-bindings, "13.0"


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _ok(cudart: Any, result: tuple[Any, ...], call: str) -> tuple[Any, ...]:
    err, *rest = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise DependencyError(f"no usable CUDA GPU: {call} returned {getattr(err, 'name', err)}; engines are built "
                              "and loaded on a machine with an NVIDIA GPU and driver")
    return tuple(rest)


def current_gpu() -> GpuInfo:
    """The current CUDA device (as CUDA_VISIBLE_DEVICES and the process select it)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise DependencyError(f"cuda-bindings is not installed ({exc}): `pip install 'diffv2iqa-trt[gpu-cu12]'` "
                              "or `[gpu-cu13]`, by the CUDA major of the driver") from None
    (index,) = _ok(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    (prop,) = _ok(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    (driver,) = _ok(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    (runtime,) = _ok(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    raw = prop.name
    name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).split("\x00", 1)[0].strip()
    return GpuInfo(index=int(index), name=name, sm=f"{prop.major}.{prop.minor}", memory_bytes=int(prop.totalGlobalMem),
                   driver=_version(int(driver)), runtime=_version(int(runtime)))

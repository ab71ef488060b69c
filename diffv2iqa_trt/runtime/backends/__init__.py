"""Executors by name: the registry the runtime picks backends from.

Two kinds. An executor backend is a factory `(bundle, BackendOptions) -> Executor`, driven by the host pipeline
(pipeline.py): `onnxruntime`, `torch`. A stream backend is a factory `(bundle, spec, **StreamOptions) ->
StreamPipeline` that keeps the loop on a GPU (stream_pipeline.py): `torch-cuda` (reference side), `tensorrt`.
Built-in backends are registered as lazy "module:function" references (like packaging entry points): a framework
(onnxruntime, torch, tensorrt) is imported only when its backend is asked for, and the runtime package itself never
imports torch or the model. The `torch` and `torch-cuda` backends live on the reference side
(`diffv2iqa_trt.reference`); other packages may `register_backend` their own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import BackendError

if TYPE_CHECKING:
    from ...bundle.store import Bundle
    from ..executor import Executor


@dataclass(frozen=True)
class BackendOptions:
    precision: str | None = None  # precision plan (`fp16`, `restore_step=fp16,vcg=int8,...`); None: the bundle's
    device: str = "cpu"  # backend-specific: cpu / cuda for torch; cpu / cuda / tensorrt EPs for onnxruntime
    threads: int | None = None  # CPU threads, where the backend has a setting


BackendFactory = Callable[["Bundle", BackendOptions], "Executor"]

_REGISTRY: dict[str, str | BackendFactory] = {
    "onnxruntime": "diffv2iqa_trt.runtime.backends.onnxruntime_backend:executor_from_bundle",
    "openvino": "diffv2iqa_trt.runtime.backends.openvino_backend:executor_from_bundle",
    "torch": "diffv2iqa_trt.reference.torch_executor:executor_from_bundle",
}


# Stream backends: "module:function" references to `stream_pipeline_from_bundle(bundle, spec, *, batch_size, streams,
# cuda_graph, precision)`.
STREAM_BACKENDS: dict[str, str | Callable[..., Any]] = {
    "torch-cuda": "diffv2iqa_trt.reference.torch_cuda:stream_pipeline_from_bundle",
    "tensorrt": "diffv2iqa_trt.runtime.backends.tensorrt_backend:stream_pipeline_from_bundle",
}


def stream_factory(name: str) -> Callable[..., Any]:
    entry = STREAM_BACKENDS[name]
    if not isinstance(entry, str):
        return entry
    module, _, function = entry.partition(":")
    factory: Callable[..., Any] = getattr(importlib.import_module(module), function)
    STREAM_BACKENDS[name] = factory
    return factory


def register_backend(name: str, factory: str | BackendFactory) -> None:
    """Add or replace a backend: a factory, or a "module:function" reference imported on first use."""
    _REGISTRY[name] = factory


def backend_names() -> tuple[str, ...]:
    return (*_REGISTRY, *STREAM_BACKENDS)


def _resolve(name: str) -> BackendFactory:
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(backend_names())}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, function = entry.partition(":")
        factory: BackendFactory = getattr(importlib.import_module(module), function)
        _REGISTRY[name] = entry = factory
    return entry


def create_executor(name: str, bundle: Bundle, options: BackendOptions | None = None) -> Executor:
    """An executor of backend `name` for the bundle's graphs."""
    return _resolve(name)(bundle, options or BackendOptions())

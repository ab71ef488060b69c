"""Executors by name: the registry the runtime picks backends from.

Two kinds. An executor backend is a factory `(bundle, BackendOptions) -> Executor`, driven by the host pipeline
(pipeline.py): `onnxruntime`, `openvino`, `torch`. A stream backend is a factory `(bundle, spec, **StreamOptions) ->
StreamPipeline` that keeps the loop on a GPU (stream_pipeline.py): `tensorrt`, `torch-cuda`.

Registration is explicit: every backend is a function object handed to `register_backend` or
`register_stream_backend`, never a "module:function" string, so every import edge is an import statement that the
layering test (tests/test_layers.py) reads. The runtime's own backends are registered below by small functions that
import their framework (onnxruntime, openvino, tensorrt) only when the backend is asked for. The reference side
(`torch`, `torch-cuda`: PyTorch and the model) registers itself from `diffv2iqa_trt.reference.backends`, which the
CLI imports; the runtime package never imports torch, the model or the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import BackendError

if TYPE_CHECKING:
    from ...bundle.store import Bundle
    from ..executor import Executor
    from ..pipeline import PipelineSpec
    from ..stream_pipeline import StreamPipeline


@dataclass(frozen=True)
class BackendOptions:
    precision: str | None = None  # precision plan (`fp16`, `restore_step=fp16,vcg=int8,...`); None: the bundle's
    device: str = "cpu"  # backend-specific: cpu / cuda for torch; cpu / cuda / tensorrt EPs for onnxruntime
    threads: int | None = None  # CPU threads, where the backend has a setting


BackendFactory = Callable[["Bundle", BackendOptions], "Executor"]
# `(bundle, spec, *, batch_size, streams, cuda_graph, precision, **backend options) -> StreamPipeline`
StreamFactory = Callable[..., "StreamPipeline"]

_REGISTRY: dict[str, BackendFactory] = {}
STREAM_BACKENDS: dict[str, StreamFactory] = {}  # name -> factory; `name in STREAM_BACKENDS` says "GPU stream backend"


def _check(name: str, factory: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a backend name is a non-empty string, got {name!r}")
    if not callable(factory):  # a "module:function" string included: the layering test could not see that edge
        raise TypeError(f"backend {name!r}: register a function, not {type(factory).__name__} {factory!r}")


def register_backend(name: str, factory: BackendFactory) -> None:
    """Add or replace an executor backend: `factory(bundle, options)` returns its Executor."""
    _check(name, factory)
    _REGISTRY[name] = factory


def register_stream_backend(name: str, factory: StreamFactory) -> None:
    """Add or replace a GPU stream backend: `factory(bundle, spec, *, batch_size, streams, cuda_graph, precision,
    **backend_options)` returns its StreamPipeline."""
    _check(name, factory)
    STREAM_BACKENDS[name] = factory


def backend_names() -> tuple[str, ...]:
    return (*_REGISTRY, *STREAM_BACKENDS)


def _unknown(name: str) -> BackendError:
    return BackendError(f"unknown backend {name!r}; use one of {', '.join(backend_names())}")


def stream_factory(name: str) -> StreamFactory:
    if name not in STREAM_BACKENDS:
        raise _unknown(name)
    return STREAM_BACKENDS[name]


def create_executor(name: str, bundle: Bundle, options: BackendOptions | None = None) -> Executor:
    """An executor of backend `name` for the bundle's graphs."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name](bundle, options or BackendOptions())


# --- the runtime's own backends: each imports its framework on first use -------------------------------------------


def _onnxruntime(bundle: Bundle, options: BackendOptions) -> Executor:
    from .onnxruntime_backend import executor_from_bundle

    return executor_from_bundle(bundle, options)


def _openvino(bundle: Bundle, options: BackendOptions) -> Executor:
    from .openvino_backend import executor_from_bundle

    return executor_from_bundle(bundle, options)


def _tensorrt(bundle: Bundle, spec: PipelineSpec, **options: Any) -> StreamPipeline:
    from .tensorrt_backend import stream_pipeline_from_bundle

    return stream_pipeline_from_bundle(bundle, spec, **options)


register_backend("onnxruntime", _onnxruntime)
register_backend("openvino", _openvino)
register_stream_backend("tensorrt", _tensorrt)

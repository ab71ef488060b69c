"""Wire a bundle into the pipeline: the spec from the manifest, the executor from the backend registry."""

from __future__ import annotations

from typing import Any

from ..bundle.store import Bundle
from ..config import ScoringConfig
from ..errors import ConfigError
from .backends import STREAM_BACKENDS, BackendOptions, create_executor, stream_factory
from .batching import BatchLimits
from .pipeline import Pipeline, PipelineSpec
from .stream_pipeline import StreamPipeline

# Stream backends whose engines refuse shapes outside the bundle's profiles (torch-cuda runs any size).
PROFILE_BOUND_BACKENDS = ("tensorrt",)


def bundle_pipeline(bundle: Bundle, backend: str = "onnxruntime", *, precision: str | None = None, device: str = "cpu",
                    scoring: ScoringConfig | None = None, batch_size: int = 8, threads: int | None = None) -> Pipeline:
    """A pipeline over the bundle's graphs on `backend`; `scoring` overrides the bundle's crops, mode and seed."""
    spec = PipelineSpec.from_manifest(bundle.manifest.pipeline, scoring)
    executor = create_executor(backend, bundle, BackendOptions(precision=precision, device=device, threads=threads))
    # Batches follow the bundle's profiles on every backend; sizes only where TensorRT (the EP) enforces them.
    limits = BatchLimits.from_bundle(bundle, resolution=device == "tensorrt")
    return Pipeline(executor, spec, batch_size, limits=limits)


def bundle_stream_pipeline(bundle: Bundle, backend: str, *, precision: str | None = None,
                           scoring: ScoringConfig | None = None, batch_size: int = 8, streams: bool = True,
                           cuda_graph: bool = True, **backend_options: Any) -> StreamPipeline:
    """A stream pipeline (the loop on a GPU) over the bundle's graphs on `backend` (torch-cuda or tensorrt);
    `backend_options` go to that backend's factory (tensorrt: lean_runtime, max_contexts)."""
    if backend not in STREAM_BACKENDS:
        raise ConfigError(f"{backend!r} is not a GPU stream backend; use one of {', '.join(STREAM_BACKENDS)}")
    spec = PipelineSpec.from_manifest(bundle.manifest.pipeline, scoring)
    pipeline: StreamPipeline = stream_factory(backend)(bundle, spec, batch_size=batch_size, streams=streams,
                                                       cuda_graph=cuda_graph, precision=precision,
                                                       **backend_options)
    pipeline.limits = BatchLimits.from_bundle(bundle, resolution=backend in PROFILE_BOUND_BACKENDS)
    return pipeline

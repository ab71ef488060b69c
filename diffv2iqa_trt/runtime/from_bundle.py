"""Wire a bundle into the pipeline: the spec from the manifest, the executor from the backend registry."""

from __future__ import annotations

from ..bundle.store import Bundle
from ..config import ScoringConfig
from .backends import BackendOptions, create_executor
from .pipeline import Pipeline, PipelineSpec


def bundle_pipeline(bundle: Bundle, backend: str = "onnxruntime", *, precision: str | None = None, device: str = "cpu",
                    scoring: ScoringConfig | None = None, batch_size: int = 8, threads: int | None = None) -> Pipeline:
    """A pipeline over the bundle's graphs on `backend`; `scoring` overrides the bundle's crops, mode and seed."""
    spec = PipelineSpec.from_manifest(bundle.manifest.pipeline, scoring)
    executor = create_executor(backend, bundle, BackendOptions(precision=precision, device=device, threads=threads))
    return Pipeline(executor, spec, batch_size)

"""Wire a bundle into the pipeline: the spec from the manifest, executors from its graph files."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..bundle.manifest import Bundle, BundleError
from ..config import ScoringConfig
from .executor import Executor
from .pipeline import Pipeline, PipelineSpec

BACKENDS = ("onnxruntime", "torch")


def pipeline_spec(bundle: Bundle, scoring: ScoringConfig | None = None) -> PipelineSpec:
    """The bundle's pipeline; `scoring` overrides its crop policy, mode and noise seed."""
    p = bundle.pipeline
    spec = PipelineSpec(
        gamma=np.asarray(p["gamma"], dtype=np.float32),
        coef=np.asarray(p["coef"], dtype=np.float32),
        capture_t1=int(p["capture_t1"]), capture_t2=int(p["capture_t2"]),
        noise_seed=int(p["noise"]["seed"]), crop_size=int(p["crop_size"]), size_multiple=int(p["size_multiple"]),
        crops=p["crops"], mode=p["mode"],
        vcg_weight=float(p["fusion"]["vcg_weight"]), vda_weight=float(p["fusion"]["vda_weight"]),
    )
    if scoring is not None:
        spec = dataclasses.replace(spec, crops=scoring.crops, mode=scoring.mode, noise_seed=scoring.noise_seed)
    return spec


def onnxruntime_executor(bundle: Bundle, precision: str = "fp32", device: str = "cpu",
                         threads: int | None = None) -> Executor:
    from .backends.onnxruntime_backend import OnnxRuntimeExecutor

    paths, inputs, outputs = {}, {}, {}
    for graph in ("restore_step", "vcg", "vda"):
        if precision not in bundle.precisions(graph):
            raise BundleError(f"{bundle.root}: graph {graph} has no {precision} variant (has "
                              f"{', '.join(bundle.precisions(graph))}); rebuild with that precision or pick another")
        g = bundle.graph(graph)
        paths[graph] = bundle.onnx_path(graph, precision)
        inputs[graph] = [i["name"] for i in g["inputs"]]
        outputs[graph] = g["outputs"][0]["name"]
    return OnnxRuntimeExecutor(paths, inputs, outputs, device=device, threads=threads)


def bundle_pipeline(bundle: Bundle, backend: str = "onnxruntime", *, precision: str = "fp32", device: str = "cpu",
                    scoring: ScoringConfig | None = None, batch_size: int = 8, threads: int | None = None) -> Pipeline:
    spec = pipeline_spec(bundle, scoring)
    if backend == "onnxruntime":
        executor = onnxruntime_executor(bundle, precision, device, threads)
    elif backend == "torch":
        # The reference needs torch and the bundle's checkpoint; imported here so the runtime core stays torch-free.
        from .backends.torch_backend import torch_executor_from_bundle

        executor = torch_executor_from_bundle(bundle, device)
    else:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return Pipeline(executor, spec, batch_size)

"""The reference side's backends, registered with the runtime's registry: `torch` (the PyTorch reference executor,
CPU or CUDA) and `torch-cuda` (the PyTorch graphs in the GPU stream pipeline).

Importing this module registers them (idempotent); it imports neither torch nor the model: each factory imports its
module when the backend is first asked for, so `diffv2iqa-trt --help` and an ONNX Runtime deployment stay torch-free.
The CLI imports this module; so must any front end that offers the torch backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..runtime.backends import BackendOptions, register_backend, register_stream_backend

if TYPE_CHECKING:
    from ..bundle.store import Bundle
    from ..runtime.executor import Executor
    from ..runtime.pipeline import PipelineSpec
    from ..runtime.stream_pipeline import StreamPipeline


def torch_executor(bundle: Bundle, options: BackendOptions) -> Executor:
    from .torch_executor import executor_from_bundle

    return executor_from_bundle(bundle, options)


def torch_cuda_pipeline(bundle: Bundle, spec: PipelineSpec, **options: Any) -> StreamPipeline:
    from .torch_cuda import stream_pipeline_from_bundle

    return stream_pipeline_from_bundle(bundle, spec, **options)


def register() -> None:
    register_backend("torch", torch_executor)
    register_stream_backend("torch-cuda", torch_cuda_pipeline)


register()

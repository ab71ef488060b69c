"""Load a bundle's engine on this machine: refuse one built elsewhere (compatibility.py), then deserialise it.

The GPU runtime (runtime/backends, next issue) opens engines only through `load_engine`, so the refusal cannot be
skipped. The bundle's files were hash-checked when it was loaded, and `Bundle.file_path` checks the path again.
Typed against the TensorRT 10.13 stubs; never run here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..errors import BundleError
from .compatibility import Machine, check_loadable
from .gpu import current_gpu
from .tensorrt_api import require_tensorrt, tensorrt_version

if TYPE_CHECKING:
    import tensorrt as trt


def this_machine() -> Machine:
    trt_module = require_tensorrt()
    gpu = current_gpu()
    return Machine(tensorrt=tensorrt_version(trt_module).text, gpu=gpu.name, sm=gpu.sm)


def load_engine(bundle: Bundle, graph: str, precision: str, runtime: trt.Runtime,
                here: Machine | None = None) -> trt.ICudaEngine:
    """The deserialised engine of `graph` at `precision`; BundleError (with the rebuild command) when it was built
    for another TensorRT or GPU, or TensorRT cannot read it."""
    entry = bundle.engine(graph, precision)
    check_loadable(str(bundle.root), graph, precision, entry, here or this_machine())
    if entry.extra.get("version_compatible") is True:
        runtime.engine_host_code_allowed = True  # the plan carries its own lean runtime
    path = bundle.engine_path(graph, precision)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BundleError(f"TensorRT cannot deserialise {path} (its log says why); rebuild the engines on this "
                          "machine with `diffv2iqa-trt build --target tensorrt --from-bundle`", path=path)
    return engine

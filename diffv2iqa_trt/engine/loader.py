"""Load a bundle's engine on this machine: refuse one built elsewhere (compatibility.py), then deserialise it.

The GPU runtime (runtime/backends) opens engines only through `load_engine`, so the refusal cannot be skipped. The
bundle's files were hash-checked when it was loaded, and `Bundle.file_path` checks the path again.

Version-compatible engines come in two kinds (TensorRT's "Version Compatibility" and "Manually Loading the Runtime"
sections, and `IRuntime::loadRuntime` in NvInferRuntime.h):
- with the lean runtime embedded (the default): the runtime is allowed to run the plan's host code
  (`engine_host_code_allowed`) and deserialises it;
- built with EXCLUDE_LEAN_RUNTIME: the plan carries no runtime, so the lean runtime library of the TensorRT release
  that built it (libnvinfer_lean.so.<major>) is loaded from a file with `Runtime.load_runtime(path)`, and that
  runtime deserialises the plan (as trtexec's --leanDLLPath does). The library is named by the caller
  (`--lean-runtime`); the entry records that it is needed (`lean_runtime: "external"`).
Typed against the TensorRT 10.13 stubs; never run here.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundle import Bundle, EngineEntry
from ..errors import BundleError, DependencyError
from .compatibility import Machine, check_loadable
from .gpu import current_gpu
from .tensorrt_api import require_tensorrt, tensorrt_version

if TYPE_CHECKING:
    import tensorrt as trt


def this_machine() -> Machine:
    trt_module = require_tensorrt()
    gpu = current_gpu()
    return Machine(tensorrt=tensorrt_version(trt_module).text, gpu=gpu.name, sm=gpu.sm)


def lean_runtime_kind(version_compatible: bool, exclude_lean_runtime: bool) -> str | None:
    """What the manifest records about an engine's lean runtime: None (not version-compatible: the full runtime
    runs it), "embedded" (in the plan), or "external" (loaded from a library file when the engine is loaded)."""
    if not version_compatible:
        return None
    return "external" if exclude_lean_runtime else "embedded"


def needs_lean_runtime(entry: EngineEntry) -> bool:
    """Whether the engine was built without its lean runtime (the entry's record, or its builder flags)."""
    excluded = entry.flags.get("exclude_lean_runtime") is True
    return entry.lean_runtime == "external" or (entry.version_compatible and excluded)


# Parent runtimes of the lean runtimes loaded from them, by id(lean): the bindings' load_runtime does not keep the
# parent alive (deserialize_cuda_engine does keep an engine's runtime alive), and trtexec keeps the parent for the
# lean runtime's whole life. An entry goes when its lean runtime is collected.
_PARENTS: dict[int, Any] = {}


def load_lean_runtime(runtime: trt.Runtime, path: Path) -> trt.Runtime:
    """The lean runtime in the library `path`, allowed to run version-compatible plans; `runtime` (its parent) is
    kept alive as long as it is. DependencyError when the file is missing or TensorRT cannot load it."""
    if not path.is_file():
        raise DependencyError(f"the lean runtime library {path} does not exist: give the path of "
                              "libnvinfer_lean.so.<major> from the TensorRT release that built the engines")
    lean = runtime.load_runtime(str(path))
    if lean is None:  # the bindings return None when TensorRT cannot load the library
        raise DependencyError(f"TensorRT could not load the lean runtime library {path} (its log above says why); "
                              "it must be libnvinfer_lean from the TensorRT release that built the engines")
    lean.engine_host_code_allowed = True
    _PARENTS[id(lean)] = runtime
    weakref.finalize(lean, _PARENTS.pop, id(lean), None)
    return lean


def load_engine(bundle: Bundle, graph: str, precision: str, runtime: trt.Runtime, here: Machine | None = None, *,
                lean_runtime: trt.Runtime | None = None) -> trt.ICudaEngine:
    """The deserialised engine of `graph` at `precision`; BundleError (with the rebuild command) when it was built
    for another TensorRT or GPU, or TensorRT cannot read it. An engine built with --exclude-lean-runtime is read by
    `lean_runtime` (from load_lean_runtime), and refused with the reason when none is given."""
    entry = bundle.engine(graph, precision)
    check_loadable(str(bundle.root), graph, precision, entry, here or this_machine())
    reader = runtime
    if needs_lean_runtime(entry):
        if lean_runtime is None:
            raise DependencyError(
                f"{bundle.root}: the {precision} TensorRT engine of {graph} was built with --exclude-lean-runtime, "
                f"so it runs only on the lean runtime of TensorRT {entry.tensorrt} loaded from its library: pass "
                "--lean-runtime PATH (libnvinfer_lean.so.<major> of that release), or rebuild the engines without "
                "--exclude-lean-runtime")
        reader = lean_runtime
    if entry.version_compatible:
        reader.engine_host_code_allowed = True  # the plan carries (or its lean runtime runs) host code
    path = bundle.engine_path(graph, precision)
    engine = reader.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        lean_hint = (f"; the lean runtime given must be the one of TensorRT {entry.tensorrt}"
                     if reader is lean_runtime else "")
        raise BundleError(f"TensorRT cannot deserialise {path} (its log says why){lean_hint}; rebuild the engines on "
                          "this machine with `diffv2iqa-trt build --target tensorrt --from-bundle`", path=path)
    return engine

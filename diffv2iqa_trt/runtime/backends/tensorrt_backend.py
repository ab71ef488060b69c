"""The `tensorrt` stream backend: `TensorRTLauncher` runs a bundle's engines on `CudaDevice` arrays, and
`stream_pipeline_from_bundle` wires both into the stream pipeline (runtime/stream_pipeline.py).

Engines are opened only through engine.loader.load_engine, which refuses an engine built for another TensorRT or GPU.
Each engine is checked against the contract (tensor names, directions, float32 I/O) before it runs.

Execution contexts are made lazily, one per (graph, stream, input shapes), and a context captured into a CUDA graph is
never reshaped afterwards (reshaping may move what the graph's kernels point at). Their activation memory is the
launcher's, not TensorRT's (user-managed allocation, as NVIDIA's demoDiffusion shares one block across its engines):
- one block per stream: contexts on one stream run in stream order, so they can share it; the loop stream and the
  two branch streams (VCG and VDA run concurrently) each get their own;
- every block has the size of the largest engine's `device_memory_size_v2` (what a context needs at any shape of its
  profile), fixed when the launcher is made: a block never grows or moves, so a captured graph keeps pointing at
  valid memory;
- the contexts are an LRU cache of at most `max_contexts` (`context_budget`: 32, or more when the bundle's branch
  profiles allow more batch sizes: the stream pipeline's slots need one restore context each and at most one VCG
  and one VDA context per branch batch size, so the contexts of every slot the pipeline keeps fit in the cache
  together, and a slot's contexts are normally still there when it is captured on its second run). A context
  evicted while a captured graph uses it stays alive with the graph: `take_capture_refs()` hands the pipeline the
  contexts each capture used.
Memory bound: blocks x block size (at most 3 x the largest engine's device_memory_size_v2 with the stream
pipeline, 1 x with --streams off), plus the engines' weights, plus each cached context's own small state (at most
`max_contexts` of them, plus those captured graphs still hold); the per-context activation memory of TensorRT's
default (static) allocation is gone.
One optimisation profile per engine means an engine's contexts must not run concurrently (TensorRT's rule for
dynamic shapes): every engine is used on one stream only, and a second stream is refused.
Every launch binds all tensor addresses again, so one context serves every step of the loop and both ping-pong slots.

Typed against cuda-bindings names (checked by tests) and the TensorRT 10.13 stubs; never run here: no GPU with
TensorRT was available. Tested with a fake TensorRT module and a fake cudart (tests/test_gpu_fakes.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contract import GRAPH_INPUTS, GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP, VCG, VDA
from ...engine.loader import load_engine, load_lean_runtime, needs_lean_runtime
from ...engine.tensorrt_api import require_tensorrt
from ...errors import BackendError, BundleError, ConfigError
from ...precision_plan import PrecisionPlan, runnable_plan
from ..pipeline import PipelineSpec
from ..stream_pipeline import DEFAULT_SLOTS, StreamPipeline
from .cuda_device import CudaDevice, CudaStream, DeviceArray, device_synchronize

if TYPE_CHECKING:
    import tensorrt as trt

    from ...bundle.store import Bundle

# Per graph: its input names in the order the launcher's methods take them, and its one output.
IO = {g: (GRAPH_INPUTS[g], GRAPH_OUTPUTS[g][0]) for g in GRAPH_NAMES}
ContextKey = tuple[str, int, tuple[tuple[int, ...], ...]]  # graph, stream handle, input shapes
ALIGNMENT = 256  # bytes: TensorRT's requirement on tensor addresses (cudaMalloc gives at least this)
DEFAULT_MAX_CONTEXTS = 32


class TensorRTLauncher:
    """runtime.device.Launcher over the bundle's TensorRT engines, one precision per graph (`plan`). A context
    manager; `close()` releases contexts, engines, runtimes and the context memory, in that order."""

    capturable = True  # execute_async_v3 only enqueues, so it can be captured (after one eager run per context)

    def __init__(self, bundle: Bundle, plan: Mapping[str, str], *, max_contexts: int = DEFAULT_MAX_CONTEXTS,
                 lean_runtime: Path | None = None) -> None:
        require_tensorrt()
        import tensorrt as trt

        missing = [g for g in GRAPH_NAMES if g not in plan]
        if missing:
            raise ConfigError(f"the precision plan names no precision for {', '.join(missing)}")
        if max_contexts < 1:
            raise ConfigError(f"max_contexts must be at least 1, got {max_contexts}")
        self.plan = PrecisionPlan({g: plan[g] for g in GRAPH_NAMES}).label()
        self.name = f"tensorrt-{self.plan}"
        self.max_contexts = max_contexts
        self._closed = False
        self._contexts: OrderedDict[ContextKey, trt.IExecutionContext] = OrderedDict()
        self._captured: dict[int, trt.IExecutionContext] = {}  # by id(): contexts launched while capturing
        self._blocks: dict[int, DeviceArray] = {}  # stream handle -> that stream's context memory
        self._engine_stream: dict[str, int] = {}  # graph -> the one stream its contexts run on
        self._engines: dict[str, trt.ICudaEngine] = {}
        self._logger: trt.ILogger | None = trt.Logger(trt.Logger.WARNING)  # the runtime logs through it
        self._runtime: trt.Runtime | None = trt.Runtime(self._logger)
        self._lean: trt.Runtime | None = None
        try:
            if lean_runtime is not None and any(needs_lean_runtime(bundle.engine(g, plan[g])) for g in GRAPH_NAMES):
                self._lean = load_lean_runtime(self._runtime, lean_runtime)
            for graph in GRAPH_NAMES:
                engine = load_engine(bundle, graph, plan[graph], self._runtime, lean_runtime=self._lean)
                _check_io(engine, graph, f"{bundle.root}: the {plan[graph]} {graph} engine")
                self._engines[graph] = engine
        except BaseException:
            self.close()
            raise
        # Sized once, from the largest need at any profile shape: a block never has to grow (see the docstring).
        self.context_memory_bytes = max(int(e.device_memory_size_v2) for e in self._engines.values())
        # TODO(lead): expose `limits` (runtime.batching.BatchLimits) built from the bundle's engine profiles
        # (bundle.engine(g, p).profile: max restore batch and height/width, max branch batch).

    @property
    def context_count(self) -> int:
        return len(self._contexts)

    @property
    def memory_blocks(self) -> int:
        return len(self._blocks)

    def _block(self, stream: CudaStream) -> DeviceArray:
        block = self._blocks.get(stream.ptr)
        if block is None:
            block = DeviceArray.allocate((max(self.context_memory_bytes, 1),), "uint8")
            self._blocks[stream.ptr] = block
        return block

    def _context(self, graph: str, inputs: Sequence[DeviceArray], out: DeviceArray,
                 stream: CudaStream) -> trt.IExecutionContext:
        key = (graph, stream.ptr, tuple(a.shape for a in inputs))
        context = self._contexts.get(key)
        if context is not None:
            self._contexts.move_to_end(key)
            return context
        if stream.capturing:  # a new context allocates memory, which a capture forbids (and would be invalidated)
            raise BackendError(f"a {graph} context for new shapes was needed inside a CUDA graph capture: the "
                               "orchestration must run every (shape, stream) eagerly before capturing it")
        owner = self._engine_stream.setdefault(graph, stream.ptr)
        if owner != stream.ptr:
            raise BackendError(f"the {graph} engine runs on stream 0x{owner:x} and was asked to run on "
                               f"0x{stream.ptr:x}: its one optimisation profile lets only one of its contexts run at "
                               "a time, so each engine keeps to one stream")
        import tensorrt as trt

        block = self._block(stream)
        context = self._engines[graph].create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:  # the bindings return None when TensorRT fails
            raise BackendError(f"TensorRT could not create a {graph} execution context; its log above says why")
        context.set_device_memory(block.ptr, self.context_memory_bytes)
        names, output = IO[graph]
        for name, array in zip(names, inputs, strict=True):
            if not context.set_input_shape(name, trt.Dims(list(array.shape))):
                raise BackendError(f"the {graph} engine does not accept {name} of shape {array.shape} (outside the "
                                   "shapes it was built for; see its profile in the bundle's manifest)")
        dims = context.get_tensor_shape(output)
        got = tuple(int(dims[i]) for i in range(len(dims)))
        if got != out.shape:
            raise BackendError(f"the {graph} engine gives {output} of shape {got} for these inputs; the pipeline's "
                               f"buffer is {out.shape}")
        self._contexts[key] = context
        while len(self._contexts) > self.max_contexts:
            self._contexts.popitem(last=False)  # a captured graph still holding it keeps it alive (take_capture_refs)
        return context

    def _launch(self, graph: str, inputs: Sequence[DeviceArray], out: DeviceArray, stream: CudaStream) -> None:
        if self._closed:
            raise BackendError(f"the {self.name} launcher is closed")
        context = self._context(graph, inputs, out, stream)
        names, output = IO[graph]
        for name, ptr in [*zip(names, (a.ptr for a in inputs), strict=True), (output, out.ptr)]:
            if ptr % ALIGNMENT:  # TensorRT requires it; the stream pipeline allocates every bound tensor on its own
                raise BackendError(f"{graph}: {name} at 0x{ptr:x} is not {ALIGNMENT}-byte aligned, as TensorRT "
                                   "requires of every tensor address")
            if not context.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused the address of {name} for the {graph} engine")
        if stream.capturing:
            self._captured[id(context)] = context
        if not context.execute_async_v3(stream.ptr):
            raise BackendError(f"TensorRT could not enqueue the {graph} engine ({self.plan}); its log above says why")

    def take_capture_refs(self) -> list[Any]:
        """The execution contexts launched while a stream was capturing since the last call: the pipeline keeps
        them with the captured graph, so a context the LRU cache evicts lives as long as a graph that uses it."""
        refs = list(self._captured.values())
        self._captured.clear()
        return refs

    def restore_step(self, x: DeviceArray, y: DeviceArray, gamma: DeviceArray, coef: DeviceArray, z: DeviceArray,
                     out: DeviceArray, stream: CudaStream) -> None:
        self._launch(RESTORE_STEP, (x, y, gamma, coef, z), out, stream)

    def vcg(self, x: DeviceArray, y0: DeviceArray, yt1: DeviceArray, yt2: DeviceArray, out: DeviceArray,
            stream: CudaStream) -> None:
        self._launch(VCG, (x, y0, yt1, yt2), out, stream)

    def vda(self, x: DeviceArray, y0: DeviceArray, yt1: DeviceArray, yt2: DeviceArray, out: DeviceArray,
            stream: CudaStream) -> None:
        self._launch(VDA, (x, y0, yt1, yt2), out, stream)

    def close(self) -> None:
        """Release, in TensorRT's destruction order: contexts, engines, the lean runtime, the runtime, then the
        context memory blocks (after the GPU finished the work that used them). Idempotent. Graphs captured with
        these contexts must be destroyed first and never replayed afterwards."""
        if self._closed:
            return
        self._closed = True
        self._captured.clear()
        self._contexts.clear()
        self._engine_stream.clear()
        self._engines.clear()
        self._lean = None
        self._runtime = None
        self._logger = None
        if self._blocks:
            device_synchronize()
            for block in self._blocks.values():
                block.close()
            self._blocks.clear()

    def __enter__(self) -> TensorRTLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_io(engine: trt.ICudaEngine, graph: str, what: str) -> None:
    """The engine's I/O must be the contract's: these names, inputs as inputs, the output as output, all float32
    (every variant keeps float32 I/O), since the launcher binds raw float32 buffers by name."""
    import tensorrt as trt

    names, output = IO[graph]
    have = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    if have != {*names, output}:
        raise BundleError(f"{what} has tensors {sorted(have)}, the contract {sorted({*names, output})}; rebuild the "
                          "engines with `diffv2iqa-trt build --target tensorrt --from-bundle`")
    for name in (*names, output):
        mode = trt.TensorIOMode.OUTPUT if name == output else trt.TensorIOMode.INPUT
        if engine.get_tensor_mode(name) != mode or engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise BundleError(f"{what}: tensor {name} is {engine.get_tensor_mode(name)} "
                              f"{engine.get_tensor_dtype(name)}, the contract says {mode} float32; rebuild the "
                              "engines with `diffv2iqa-trt build --target tensorrt --from-bundle`")


def context_budget(bundle: Bundle, plan: Mapping[str, str], slots: int = DEFAULT_SLOTS) -> int:
    """How many contexts the launcher caches for the stream pipeline: one restore context per slot, and one per
    possible branch batch size (1 to the profile's maximum) for VCG and VDA; at least DEFAULT_MAX_CONTEXTS."""
    branch = 0
    for graph in (VCG, VDA):
        first = bundle.engine(graph, plan[graph]).profile.get(IO[graph][0][0])
        branch += 0 if first is None else first.max[0]
    return max(DEFAULT_MAX_CONTEXTS, slots + branch)


def stream_pipeline_from_bundle(bundle: Bundle, spec: PipelineSpec, *, batch_size: int = 8, streams: bool = True,
                                cuda_graph: bool = True, precision: str | None = None,
                                lean_runtime: Path | None = None,
                                max_contexts: int | None = None) -> StreamPipeline:
    """The registry's `tensorrt` pipeline: the bundle's engines chosen by `precision` (a --precision text; None: the
    plan the bundle's build chose), run exactly as planned (no int8-cpu substitution). `lean_runtime`: the lean
    runtime library engines built with --exclude-lean-runtime need; `max_contexts`: None for `context_budget`."""
    bare = [g for g in GRAPH_NAMES if not bundle.engine_precisions(g)]
    if bare:  # runnable_plan's message is about ONNX variants; an ONNX-only bundle needs its engines built
        raise BundleError(f"{bundle.root} has no TensorRT engine for {', '.join(bare)}; build them on this machine "
                          f"with `diffv2iqa-trt build --target tensorrt --from-bundle {bundle.root} --out "
                          f"{bundle.root} --overwrite`", path=bundle.manifest_path)
    plan = runnable_plan(bundle.run_plan(precision), {g: bundle.engine_precisions(g) for g in GRAPH_NAMES},
                         cpu=False, source=f"{bundle.root} (TensorRT engines)")
    device = CudaDevice()  # first: engines are deserialised onto the current CUDA device
    launcher = None
    try:
        budget = context_budget(bundle, plan.to_dict()) if max_contexts is None else max_contexts
        launcher = TensorRTLauncher(bundle, plan.to_dict(), lean_runtime=lean_runtime, max_contexts=budget)
        return StreamPipeline(device, launcher, spec, batch_size=batch_size, streams=streams, cuda_graph=cuda_graph)
    except BaseException:  # nothing half-made is left to the garbage collector
        if launcher is not None:
            launcher.close()
        device.close()
        raise

"""The `tensorrt` stream backend: `TensorRTLauncher` runs a bundle's engines on `CudaDevice` arrays, and
`stream_pipeline_from_bundle` wires both into the stream pipeline (runtime/stream_pipeline.py).

Engines are opened only through engine.loader.load_engine, which refuses an engine built for another TensorRT or GPU.
Each engine is checked against the contract (tensor names, directions, float32 I/O) before it runs. Execution
contexts are made lazily, one per (graph, stream, input shapes): a context is never used on two streams at once (its
scratch memory is per context), and a context captured into a CUDA graph is never reshaped afterwards (reshaping may
move the memory the graph's kernels point at). Every launch binds all tensor addresses again, so one context serves
every step of the loop and both ping-pong slots.

Typed against cuda-bindings names (checked by tests) and the TensorRT 10.13 stubs; never run here: no GPU with
TensorRT was available.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ...contract import GRAPH_INPUTS, GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP, VCG, VDA
from ...engine.loader import load_engine
from ...engine.tensorrt_api import require_tensorrt
from ...errors import BackendError, BundleError, ConfigError
from ...precision_plan import PrecisionPlan, runnable_plan
from ..pipeline import PipelineSpec
from ..stream_pipeline import StreamPipeline
from .cuda_device import CudaDevice, CudaStream, DeviceArray

if TYPE_CHECKING:
    import tensorrt as trt

    from ...bundle.store import Bundle

# Per graph: its input names in the order the launcher's methods take them, and its one output.
IO = {g: (GRAPH_INPUTS[g], GRAPH_OUTPUTS[g][0]) for g in GRAPH_NAMES}
ContextKey = tuple[str, int, tuple[tuple[int, ...], ...]]  # graph, stream handle, input shapes
ALIGNMENT = 256  # bytes: TensorRT's requirement on tensor addresses (cudaMalloc gives at least this)


class TensorRTLauncher:
    """runtime.device.Launcher over the bundle's TensorRT engines, one precision per graph (`plan`)."""

    capturable = True  # execute_async_v3 only enqueues, so it can be captured (after one eager run per context)

    def __init__(self, bundle: Bundle, plan: Mapping[str, str]) -> None:
        require_tensorrt()
        import tensorrt as trt

        missing = [g for g in GRAPH_NAMES if g not in plan]
        if missing:
            raise ConfigError(f"the precision plan names no precision for {', '.join(missing)}")
        self.plan = PrecisionPlan({g: plan[g] for g in GRAPH_NAMES}).label()
        self.name = f"tensorrt-{self.plan}"
        self._logger = trt.Logger(trt.Logger.WARNING)  # kept: the runtime logs through it for its whole life
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[str, trt.ICudaEngine] = {}
        for graph in GRAPH_NAMES:
            engine = load_engine(bundle, graph, plan[graph], self._runtime)
            _check_io(engine, graph, f"{bundle.root}: the {plan[graph]} {graph} engine")
            self._engines[graph] = engine
        self._contexts: dict[ContextKey, trt.IExecutionContext] = {}

    def _context(self, graph: str, inputs: Sequence[DeviceArray], out: DeviceArray,
                 stream: CudaStream) -> trt.IExecutionContext:
        key = (graph, stream.ptr, tuple(a.shape for a in inputs))
        context = self._contexts.get(key)
        if context is not None:
            return context
        if stream.capturing:  # a new context allocates memory, which a capture forbids (and would be invalidated)
            raise BackendError(f"a {graph} context for new shapes was needed inside a CUDA graph capture: the "
                               "orchestration must run every (shape, stream) eagerly before capturing it")
        import tensorrt as trt

        context = self._engines[graph].create_execution_context()
        if context is None:  # the bindings return None when TensorRT fails (e.g. no memory for its scratch space)
            raise BackendError(f"TensorRT could not create a {graph} execution context; its log above says why")
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
        return context

    def _launch(self, graph: str, inputs: Sequence[DeviceArray], out: DeviceArray, stream: CudaStream) -> None:
        context = self._context(graph, inputs, out, stream)
        names, output = IO[graph]
        for name, ptr in [*zip(names, (a.ptr for a in inputs), strict=True), (output, out.ptr)]:
            if ptr % ALIGNMENT:  # TensorRT requires it; the stream pipeline allocates every bound tensor on its own
                raise BackendError(f"{graph}: {name} at 0x{ptr:x} is not {ALIGNMENT}-byte aligned, as TensorRT "
                                   "requires of every tensor address")
            if not context.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused the address of {name} for the {graph} engine")
        if not context.execute_async_v3(stream.ptr):
            raise BackendError(f"TensorRT could not enqueue the {graph} engine ({self.plan}); its log above says why")

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
        """Drop contexts before engines before the runtime (TensorRT's destruction order). Graphs captured with these
        contexts must not be replayed afterwards."""
        self._contexts.clear()
        self._engines.clear()


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


def stream_pipeline_from_bundle(bundle: Bundle, spec: PipelineSpec, *, batch_size: int = 8, streams: bool = True,
                                cuda_graph: bool = True, precision: str | None = None) -> StreamPipeline:
    """The registry's `tensorrt` pipeline: the bundle's engines chosen by `precision` (a --precision text; None: the
    plan the bundle's build chose), run exactly as planned (no int8-cpu substitution)."""
    bare = [g for g in GRAPH_NAMES if not bundle.engine_precisions(g)]
    if bare:  # runnable_plan's message is about ONNX variants; an ONNX-only bundle needs its engines built
        raise BundleError(f"{bundle.root} has no TensorRT engine for {', '.join(bare)}; build them on this machine "
                          f"with `diffv2iqa-trt build --target tensorrt --from-bundle {bundle.root} --out "
                          f"{bundle.root} --overwrite`", path=bundle.manifest_path)
    plan = runnable_plan(bundle.run_plan(precision), {g: bundle.engine_precisions(g) for g in GRAPH_NAMES},
                         cpu=False, source=f"{bundle.root} (TensorRT engines)")
    device = CudaDevice()  # first: engines are deserialised onto the current CUDA device
    launcher = TensorRTLauncher(bundle, plan.to_dict())
    return StreamPipeline(device, launcher, spec, batch_size=batch_size, streams=streams, cuda_graph=cuda_graph)

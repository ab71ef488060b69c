"""ONNX Runtime executor: CPUExecutionProvider everywhere; CUDA and TensorRT execution providers with IOBinding.

On the CPU a handle is a NumPy array and each graph call is `session.run`. On CUDA (and the TensorRT EP) a handle is
an `OrtValue` in device memory and calls go through IOBinding, so the restoration loop stays on the GPU and only
snapshots and scores are copied back. The CUDA and TensorRT paths have not run in this project yet (no GPU with
onnxruntime-gpu was available): they are written against ONNX Runtime's documented Python API only.

A bundle's graph files are untrusted input: before a session is created the bundle layer checks that the graph reads
no data outside the manifest (`Bundle.check_onnx_references`); each session's inputs and outputs are compared with
the manifest; ONNX Runtime's own exceptions become BundleError (creating a session) or BackendError (running one)
naming the graph; and every result's shape is checked, so a graph that does not keep the contract never yields
scores.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ...contract import GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP, TensorSpec
from ...errors import BackendError, BundleError, ConfigError
from ...precision_plan import runnable_plan

if TYPE_CHECKING:
    from ...bundle.store import Bundle
    from . import BackendOptions

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

# ONNX Runtime's tensor type names -> the manifest's dtype names.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(bool)": "bool", "tensor(double)": "float64"}

T = TypeVar("T")


def _ort_errors(ort: Any) -> tuple[type[Exception], ...]:
    """ONNX Runtime's exception types (Fail, InvalidArgument, InvalidGraph, NoSuchFile, RuntimeException, ...): they
    derive from Exception only. Its Python layer also raises ValueError and RuntimeError (e.g. missing inputs)."""
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    native = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)) if state else ()
    return (*native, ValueError, RuntimeError)


def _describe(dtype: str, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join('?' if d is None else str(d) for d in shape)}]"


def io_mismatches(session_io: Sequence[Any], expected: Sequence[TensorSpec], kind: str, exact: bool) -> list[str]:
    """Differences between a session's inputs or outputs (ONNX Runtime NodeArgs: name, type, shape) and the manifest's
    description: names (all of them for inputs, `exact`; the described ones for outputs), element types, ranks and
    dimensions. The runtime feeds what the manifest says, so a dimension the manifest leaves symbolic must be
    symbolic in the file, and one it fixes must be that size (or symbolic: the graph then accepts it)."""
    actual = {a.name: a for a in session_io}
    problems: list[str] = []
    for want in expected:
        got = actual.get(want.name)
        described = _describe(want.dtype, want.shape)
        if got is None:
            problems.append(f"{kind[:-1]} {want.name!r}: the manifest describes {described}, the ONNX file has no "
                            f"such {kind[:-1]} (it has {sorted(actual)})")
            continue
        got_dtype = _ORT_DTYPES.get(got.type, str(got.type))
        shape = list(got.shape) if got.shape is not None else []
        # No shape at all (ONNX Runtime reports [] when its inference conflicts with the declared one): nothing to
        # compare here; every contract tensor has a rank, and each result's shape is checked when it is computed.
        same_dims = not shape or (len(shape) == len(want.shape) and all(
            not isinstance(d, int) or (isinstance(w, int) and d == w) for w, d in zip(want.shape, shape, strict=True)))
        if got_dtype != want.dtype or not same_dims:
            problems.append(f"{kind[:-1]} {want.name!r}: the manifest describes {described}, the ONNX file has "
                            f"{_describe(got_dtype, shape)}")
    if exact:
        extra = sorted(set(actual) - {t.name for t in expected})
        if extra:
            problems.append(f"{kind} {extra} of the ONNX file are not described in the manifest")
    return problems


class OnnxRuntimeExecutor:
    def __init__(self, onnx_paths: Mapping[str, str | os.PathLike[str]], input_names: Mapping[str, Sequence[str]],
                 output_names: Mapping[str, str], *, device: str = "cpu", threads: int | None = None,
                 device_id: int = 0, spin: bool = True,
                 io: Mapping[str, tuple[Sequence[TensorSpec], Sequence[TensorSpec]]] | None = None) -> None:
        """`io`: per graph, the (inputs, outputs) the sessions must have; a mismatch is a BundleError naming the
        graph, the tensor and both descriptions."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs onnxruntime (CPU) or onnxruntime-gpu: "
                               "pip install 'diffv2iqa-trt[cpu]' or '[gpu]'") from None
        if device not in PROVIDERS:
            raise ConfigError(f"unknown device {device!r} for onnxruntime; use one of {sorted(PROVIDERS)}")
        wanted = PROVIDERS[device]
        if wanted[0] not in ort.get_available_providers():
            raise BackendError(f"{wanted[0]} is not available in this onnxruntime build "
                               f"(available: {ort.get_available_providers()}); install onnxruntime-gpu for "
                               "cuda/tensorrt, or use --device cpu")
        self._ort = ort
        self._errors = _ort_errors(ort)
        self.name = f"onnxruntime-{device}"
        self.plan = "fp32"  # the precision plan of `paths`, for reports (set by the bundle factory)
        self.on_device = device != "cpu"
        self.device_id = device_id
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Spinning workers cut a paper U-Net step from ~1.7 s to ~1.45 s on 2 cores, but starve whatever shares the
        # cores right after a run (torch calls interleaved with ORT calls slow down many times): spin=False there.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._paths = {g: os.fspath(p) for g, p in onnx_paths.items()}
        self._sessions: dict[str, Any] = {}
        for g, p in self._paths.items():
            self._sessions[g] = self._guard(
                g, functools.partial(ort.InferenceSession, p, options, providers=wanted),
                lambda g, exc: BundleError(f"{self._paths[g]}: ONNX Runtime cannot load the {g} graph "
                                           f"({type(exc).__name__}: {_first_line(exc)}); rebuild the bundle with "
                                           f"`diffv2iqa-trt build`", path=self._paths[g]))
            if io is not None and g in io:
                self._check_io(g, *io[g])
        self._inputs = {g: list(names) for g, names in input_names.items()}
        self._outputs = dict(output_names)

    def _guard(self, graph: str, call: Callable[[], T], wrap: Callable[[str, Exception], Exception]) -> T:
        try:
            return call()
        except self._errors as exc:
            raise wrap(graph, exc) from exc

    def _check_io(self, graph: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        session = self._sessions[graph]
        problems = (io_mismatches(session.get_inputs(), inputs, "inputs", exact=True)
                    + io_mismatches(session.get_outputs(), outputs, "outputs", exact=False))
        if problems:
            path = self._paths[graph]
            raise BundleError(f"{path}: the {graph} graph does not match its description in the bundle's manifest "
                              f"(rebuild the bundle with `diffv2iqa-trt build`):\n  " + "\n  ".join(problems),
                              path=path, problems=problems)

    def upload(self, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not self.on_device:
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)

    def download(self, handle: Any) -> np.ndarray:
        return handle if isinstance(handle, np.ndarray) else handle.numpy()

    def _run(self, graph: str, *args: Any) -> Any:
        session, names, out = self._sessions[graph], self._inputs[graph], self._outputs[graph]

        def run() -> Any:
            if not self.on_device:
                return session.run([out], dict(zip(names, args, strict=True)))[0]
            binding = session.io_binding()
            for name, value in zip(names, args, strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_output(out, "cuda", self.device_id)
            session.run_with_iobinding(binding)
            return binding.get_outputs()[0]

        return self._guard(graph, run, lambda g, exc: BackendError(
            f"ONNX Runtime failed running the {g} graph of {self._paths[g]} ({type(exc).__name__}: "
            f"{_first_line(exc)}); the graph does not keep the runtime contract: rebuild the bundle"))

    def _checked(self, graph: str, result: Any, expected: tuple[int, ...]) -> Any:
        """A graph whose output has another shape than the contract's must not yield scores."""
        shape = tuple(result.shape) if isinstance(result, np.ndarray) else tuple(result.shape())
        if shape != expected:
            raise BackendError(f"the {graph} graph of {self._paths[graph]} returned {self._outputs[graph]} of shape "
                               f"{list(shape)}, the runtime contract needs {list(expected)}; the graph does not keep "
                               f"the contract: rebuild the bundle")
        return result

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        return self._checked(RESTORE_STEP, self._run(RESTORE_STEP, x, y, gamma, coef, z), _shape(y))

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._checked("vcg", self._run("vcg", x, y0, yt1, yt2), _shape(x)[:1])

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._checked("vda", self._run("vda", x, y0, yt1, yt2), _shape(x)[:1])


def _shape(handle: Any) -> tuple[int, ...]:
    return tuple(handle.shape) if isinstance(handle, np.ndarray) else tuple(handle.shape())


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def executor_from_bundle(bundle: Bundle, options: BackendOptions) -> OnnxRuntimeExecutor:
    """The registry's `onnxruntime` factory: the bundle's ONNX variants chosen by `options.precision` (a precision
    plan, or None for the plan the bundle's build chose: then, on the CPU, an int8 graph runs its int8-cpu variant
    when the bundle has one), each checked to read only the bundle's listed files and to have the inputs and
    outputs the manifest describes."""
    # The bundle's own plan (no precision named) runs int8 graphs in their CPU layout on the CPU; a named plan runs
    # exactly what it names.
    plan = runnable_plan(bundle.run_plan(options.precision),
                         {g: bundle.graph(g).precisions for g in GRAPH_NAMES},
                         cpu=options.device == "cpu" and options.precision is None, source=str(bundle.root))
    paths, inputs, outputs, io = {}, {}, {}, {}
    for graph in GRAPH_NAMES:
        entry = bundle.graph(graph)
        bundle.check_onnx_references(graph, plan[graph])
        paths[graph] = bundle.onnx_path(graph, plan[graph])
        inputs[graph] = list(entry.input_names)
        outputs[graph] = GRAPH_OUTPUTS[graph][0]  # the contract's output, wherever the manifest lists it
        io[graph] = (entry.inputs, entry.outputs)
    executor = OnnxRuntimeExecutor(paths, inputs, outputs, device=options.device, threads=options.threads, io=io)
    executor.plan = plan.label()
    return executor

"""OpenVINO executor: the bundle's ONNX graphs on the CPU through the OpenVINO runtime, in FP32, BF16 or INT8.

OpenVINO reads the bundle's ONNX files as they are. Each graph is compiled with an inference-precision hint from the
precision plan: `fp32` -> f32 (parity with ONNX Runtime FP32 within float rounding), `bf16` -> bf16: the same FP32
graph, which OpenVINO's CPU plugin runs with BF16 matrix kernels (AVX-512 BF16 or AMX). OpenVINO's own default on
such a CPU is bf16; here it is only what the plan asks for, and bf16 is refused, with the reason, on a CPU without
BF16 instructions (OpenVINO would otherwise run f32, or emulate, without saying so). Each compiled model's hint is
read back and checked.

`int8-cpu` (and `int8`, where the bundle holds the int8-cpu variant) runs the bundle's int8-cpu variant: the
toolkit's own calibration in Q/DQ form, whose quantised convolutions and matmuls OpenVINO runs with integer kernels
(AVX-512 VNNI, AMX-INT8). Its unquantised operations take bf16 where the CPU has BF16 instructions (what OpenVINO
does by default; on the paper restore_step 9 % faster than f32 there, with the same error), f32 elsewhere.

Handles are NumPy arrays. OpenVINO compiles fastest code for static shapes, so a graph is reshaped to the shapes of
each call and compiled once per input-shape set; the last MAX_SHAPES compiled models of each graph are kept (the
pipeline uses a handful: full batches, the last partial one, and in faithful mode one per image size). Compiled
models are also cached on disk (OpenVINO's CACHE_DIR) under the toolkit's cache folder, one folder per bundle and
OpenVINO version, so a second process skips the compilation.

Like the ONNX Runtime backend, a bundle's graph files are untrusted input: the bundle layer checks that a graph reads
no data outside the manifest before OpenVINO sees it; each model's inputs and outputs are compared with the manifest;
OpenVINO's exceptions become BundleError (reading a graph) or BackendError (reshaping, compiling, running it) naming
the graph; and every result's shape is checked.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...cache_dirs import CACHE_ENV, cache_root
from ...contract import GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP, TensorSpec
from ...errors import BackendError, BundleError, ConfigError
from ...precision_plan import BF16, INT8, INT8_CPU, runnable_plan, variant_of
from .onnxruntime_backend import bundle_key, io_mismatches

if TYPE_CHECKING:
    from ...bundle.store import Bundle
    from . import BackendOptions

# Plan precision -> OpenVINO's INFERENCE_PRECISION_HINT (int8-cpu: for its unquantised operations; f32 where the CPU
# has no BF16 instructions).
OV_PRECISIONS = {"fp32": "f32", BF16: "bf16", INT8_CPU: "bf16"}
OV_CACHE_DIR = "openvino"  # under the cache root: one folder per bundle and OpenVINO version
MAX_SHAPES = 8  # compiled models kept per graph, one per input-shape set
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of the BF16 instructions OpenVINO's kernels use

# OpenVINO element type names -> the manifest's dtype names.
_OV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "u8": "uint8",
              "i32": "int32", "i64": "int64", "boolean": "bool"}


@dataclass(frozen=True)
class _Port:
    """An OpenVINO model input or output, shaped like the ONNX Runtime NodeArg io_mismatches reads."""

    name: str
    type: str
    shape: list[int | None]


def _import_openvino() -> Any:
    """The openvino module (imported by name: OpenVINO ships no type information, and this keeps mypy off it)."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise BackendError("the openvino backend needs OpenVINO: pip install 'diffv2iqa-trt[openvino]'") from None


def cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's ISA flags as Linux lists them (the first processor's `flags` line); None where unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def bf16_problem(capabilities: Sequence[str], flags: frozenset[str] | None) -> str | None:
    """Why this CPU cannot run the bf16 hint (None when it can): OpenVINO must list BF16 among its CPU plugin's
    OPTIMIZATION_CAPABILITIES, and where the kernel's flags are readable one of BF16_FLAGS must be there (a CPU
    without them has no BF16 instructions: bf16 would be emulated or silently run as f32)."""
    found = sorted(f for f in BF16_FLAGS if flags is not None and f in flags)
    if "BF16" in capabilities and (flags is None or found):
        return None
    have = ("unreadable" if flags is None else ", ".join(found) or f"none of {', '.join(BF16_FLAGS)}")
    return (f"--precision bf16 needs a CPU with BF16 instructions (AVX-512 BF16 or AMX); this one has "
            f"{have} in /proc/cpuinfo and OpenVINO's CPU capabilities are {', '.join(capabilities) or 'none'}. "
            f"Run --precision fp32 here")


def bf16_problem_here(core: Any | None = None) -> str | None:
    """bf16_problem for this machine: OpenVINO's CPU capabilities (from `core`, else a new ov.Core) and
    /proc/cpuinfo."""
    core = core if core is not None else _import_openvino().Core()
    return bf16_problem(list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")), cpu_flags())


def openvino_cache_dir(bundle: Bundle, ov_version: str, root: Path | None = None) -> Path:
    """Where OpenVINO keeps this bundle's compiled models: <cache root>/openvino/ov<version>-<bundle key>. OpenVINO
    keys each blob by the model and the compile options; the folder per bundle and version keeps them apart from
    other bundles' and easy to delete."""
    base = root if root is not None else cache_root()
    return base / OV_CACHE_DIR / f"ov{ov_version.split('-')[0]}-{bundle_key(bundle)}"


def _message(exc: BaseException, limit: int = 300) -> str:
    """OpenVINO's message without its "Exception from src/...cpp:N:" location lines, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from ")]
    text = " ".join(lines) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ports(outputs: Sequence[Any]) -> list[_Port]:
    ports = []
    for port in outputs:
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        dtype = _OV_DTYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        ports += [_Port(name, dtype, shape) for name in sorted(port.get_names())]
    return ports


class OpenVinoExecutor:
    def __init__(self, onnx_paths: Mapping[str, str | os.PathLike[str]], input_names: Mapping[str, Sequence[str]],
                 output_names: Mapping[str, str], *, precisions: Mapping[str, str] | None = None,
                 threads: int | None = None, streams: int = 1, cache_dir: Path | None = None,
                 io: Mapping[str, tuple[Sequence[TensorSpec], Sequence[TensorSpec]]] | None = None,
                 max_shapes: int = MAX_SHAPES) -> None:
        """`precisions`: per graph, fp32 or bf16 (default fp32). `threads`: INFERENCE_NUM_THREADS (None: OpenVINO's
        choice, all cores); `streams`: NUM_STREAMS (the host pipeline makes one request at a time: 1). `cache_dir`:
        OpenVINO's compiled-model cache (None: no cache). `io`: per graph, the (inputs, outputs) the models must
        have; a mismatch is a BundleError naming the graph, the tensor and both descriptions."""
        ov = _import_openvino()
        self._ov = ov
        self._core = ov.Core()
        self.name = "openvino-cpu"
        self.plan = "fp32"  # the precision plan run, for reports (set by the bundle factory)
        self.on_device = False
        precisions = dict(precisions or {})
        unknown = sorted({p for p in precisions.values() if p not in OV_PRECISIONS})
        if unknown:
            raise ConfigError(f"the openvino backend runs {', '.join(OV_PRECISIONS)} (the FP32 graphs with an f32 or "
                              f"bf16 inference hint, the int8-cpu variants), not {', '.join(unknown)}; use --backend "
                              f"onnxruntime for the bundle's fp16 variants")
        problem = bf16_problem_here(self._core) if {BF16, INT8_CPU} & set(precisions.values()) else None
        if problem and BF16 in precisions.values():
            raise ConfigError(problem)
        self._hints = {**OV_PRECISIONS, INT8_CPU: "f32" if problem else "bf16"}
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        if isinstance(streams, bool) or streams < 1:
            raise ConfigError(f"streams must be a positive integer, got {streams!r}")
        self._paths = {g: os.fspath(p) for g, p in onnx_paths.items()}
        self._precisions = {g: precisions.get(g, "fp32") for g in self._paths}
        self._config: dict[str, Any] = {"NUM_STREAMS": streams}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create the OpenVINO cache folder {cache_dir} ({exc.strerror}); point "
                                   f"${CACHE_ENV} at a writable folder") from None
            self._config["CACHE_DIR"] = os.fspath(cache_dir)
        self._max_shapes = max_shapes
        self._models: dict[str, Any] = {}
        for g, p in self._paths.items():
            try:
                self._models[g] = self._core.read_model(p)
            except RuntimeError as exc:
                raise BundleError(f"{p}: OpenVINO cannot read the {g} graph ({_message(exc)}); rebuild the bundle "
                                  f"with `diffv2iqa-trt build`", path=p) from exc
            if io is not None and g in io:
                self._check_io(g, *io[g])
        self._inputs = {g: list(names) for g, names in input_names.items()}
        self._outputs = dict(output_names)
        # Per graph: input shapes -> (compiled model, its infer request), least recently used first.
        self._compiled: dict[str, OrderedDict[tuple[tuple[int, ...], ...], tuple[Any, Any]]] = {
            g: OrderedDict() for g in self._paths}
        self.cache_loads = dict.fromkeys(self._paths, 0)  # compiled models read from CACHE_DIR instead of compiled

    def _check_io(self, graph: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        model = self._models[graph]
        problems = (io_mismatches(_ports(model.inputs), inputs, "inputs", exact=True)
                    + io_mismatches(_ports(model.outputs), outputs, "outputs", exact=False))
        if problems:
            path = self._paths[graph]
            raise BundleError(f"{path}: the {graph} graph does not match its description in the bundle's manifest "
                              f"(rebuild the bundle with `diffv2iqa-trt build`):\n  " + "\n  ".join(problems),
                              path=path, problems=problems)

    def compiled_shapes(self, graph: str) -> list[tuple[tuple[int, ...], ...]]:
        """The input-shape sets with a compiled model kept for `graph`, least recently used first."""
        return list(self._compiled[graph])

    def inference_precision(self, graph: str) -> str:
        """The precision hint `graph` is compiled with (f32 or bf16; for an int8-cpu graph, its unquantised
        operations')."""
        return self._hints[self._precisions[graph]]

    def _request(self, graph: str, shapes: tuple[tuple[int, ...], ...]) -> Any:
        kept = self._compiled[graph]
        if shapes in kept:
            kept.move_to_end(shapes)
            return kept[shapes][1]
        model, names = self._models[graph], self._inputs[graph]
        hint = self.inference_precision(graph)
        try:
            model.reshape({n: self._ov.PartialShape(list(s)) for n, s in zip(names, shapes, strict=True)})
            compiled = self._core.compile_model(model, "CPU", {**self._config, "INFERENCE_PRECISION_HINT": hint})
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO could not compile the {graph} graph of {self._paths[graph]} for input "
                               f"shapes {dict(zip(names, map(list, shapes), strict=True))} ({_message(exc)}); "
                               f"the graph does not keep the runtime contract for these shapes: rebuild the "
                               f"bundle") from exc
        got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != hint:
            raise BackendError(f"OpenVINO compiled the {graph} graph in {got}, not the {hint} asked for; refused "
                               f"rather than run in another precision (OpenVINO {self._ov.__version__})")
        if compiled.get_property("LOADED_FROM_CACHE"):
            self.cache_loads[graph] += 1
        kept[shapes] = (compiled, compiled.create_infer_request())
        while len(kept) > self._max_shapes:
            kept.popitem(last=False)
        return kept[shapes][1]

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def download(self, handle: np.ndarray) -> np.ndarray:
        return handle

    def _run(self, graph: str, *args: np.ndarray) -> np.ndarray:
        names, out = self._inputs[graph], self._outputs[graph]
        request = self._request(graph, tuple(tuple(int(d) for d in a.shape) for a in args))
        try:
            # Inputs shared (they are contiguous float32 and the call is synchronous); outputs copied, because the
            # request's output tensor is overwritten by its next run while the pipeline still holds the result.
            result = request.infer(dict(zip(names, args, strict=True)), share_inputs=True, share_outputs=False)
            return np.asarray(result[out])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"OpenVINO failed running the {graph} graph of {self._paths[graph]} "
                               f"({type(exc).__name__}: {_message(exc)}); the graph does not keep the runtime "
                               f"contract: rebuild the bundle") from exc

    def _checked(self, graph: str, result: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
        """A graph whose output has another shape than the contract's must not yield scores."""
        if tuple(result.shape) != expected:
            raise BackendError(f"the {graph} graph of {self._paths[graph]} returned {self._outputs[graph]} of shape "
                               f"{list(result.shape)}, the runtime contract needs {list(expected)}; the graph does "
                               f"not keep the contract: rebuild the bundle")
        return result

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
        return self._checked(RESTORE_STEP, self._run(RESTORE_STEP, x, y, gamma, coef, z), tuple(y.shape))

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        return self._checked("vcg", self._run("vcg", x, y0, yt1, yt2), tuple(x.shape[:1]))

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        return self._checked("vda", self._run("vda", x, y0, yt1, yt2), tuple(x.shape[:1]))


def ov_version() -> str:
    """The installed OpenVINO's version ("unknown" without one: the executor then reports the missing package)."""
    try:
        return str(_import_openvino().__version__)
    except BackendError:
        return "unknown"


def executor_from_bundle(bundle: Bundle, options: BackendOptions) -> OpenVinoExecutor:
    """The registry's `openvino` factory: the bundle's FP32 graphs, each compiled with the hint its plan names, or
    its int8-cpu variant (`options.precision`: fp32, bf16, int8-cpu, or per graph; int8 runs the int8-cpu variant;
    None: the plan the bundle's build chose), each checked to read only the bundle's listed files and to have the
    inputs and outputs the manifest describes."""
    if options.device != "cpu":
        raise ConfigError(f"the openvino backend runs on the CPU (--device cpu), not {options.device!r}")
    requested = bundle.run_plan(options.precision)
    available = {g: bundle.graph(g).precisions for g in GRAPH_NAMES}
    other = sorted({requested[g] for g in GRAPH_NAMES if not (
        requested[g] in OV_PRECISIONS or requested[g] == INT8 and INT8_CPU in available[g])})
    if other:
        why = "this bundle's plan is" if options.precision is None else "the plan asks for"
        raise ConfigError(f"the openvino backend runs fp32, bf16 (the FP32 graphs with an f32 or bf16 hint) and the "
                          f"bundle's int8-cpu variants; {why} {requested.label()}: pass --precision fp32, bf16 or "
                          f"int8-cpu, or use --backend onnxruntime for {', '.join(other)}")
    plan = runnable_plan(requested, available, cpu=True, source=str(bundle.root), hints=(BF16,))
    paths, inputs, outputs, io = {}, {}, {}, {}
    for graph in GRAPH_NAMES:
        entry = bundle.graph(graph)
        variant = variant_of(plan[graph])
        bundle.check_onnx_references(graph, variant)
        paths[graph] = bundle.onnx_path(graph, variant)
        inputs[graph] = list(entry.input_names)
        outputs[graph] = GRAPH_OUTPUTS[graph][0]  # the contract's output, wherever the manifest lists it
        io[graph] = (entry.inputs, entry.outputs)
    executor = OpenVinoExecutor(paths, inputs, outputs, precisions=plan.to_dict(), threads=options.threads, io=io,
                                cache_dir=openvino_cache_dir(bundle, ov_version()))
    executor.plan = plan.label()
    return executor

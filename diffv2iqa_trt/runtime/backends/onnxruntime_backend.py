"""ONNX Runtime executor: CPUExecutionProvider everywhere; CUDA and TensorRT execution providers with IOBinding.

On the CPU a handle is a NumPy array and each graph call is `session.run`. On CUDA (and the TensorRT EP) a handle is
an `OrtValue` in device memory and calls go through IOBinding, so the restoration loop stays on the GPU and only
snapshots and scores are copied back. The CUDA and TensorRT paths have not run in this project yet (no GPU with
onnxruntime-gpu was available): they are written against ONNX Runtime's documented Python API only.

ONNX Runtime drops an execution provider it cannot initialise (CUDA or cuDNN libraries not found, no GPU, TensorRT
missing) with a log line and runs the graph on the next provider, down to the CPU; its Python layer also retries a
failed session on the CPU. So on a GPU device every session is created without that retry and its own provider list
(`session.get_providers()`) is checked: a session that lost the provider asked for is refused with the reason.
`provider_options` gives each provider its options (TensorRT: engine cache per bundle, the manifest's profile, FP16 /
INT8 per variant; see its docstring for each choice).

A bundle's graph files are untrusted input: before a session is created the bundle layer checks that the graph reads
no data outside the manifest (`Bundle.check_onnx_references`); each session's inputs and outputs are compared with
the manifest; ONNX Runtime's own exceptions become BundleError (creating a session) or BackendError (running one)
naming the graph; and every result's shape is checked, so a graph that does not keep the contract never yields
scores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ...cache_dirs import CACHE_ENV, cache_root
from ...contract import GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP, TensorSpec
from ...errors import BackendError, BundleError, ConfigError
from ...precision_plan import runnable_plan

if TYPE_CHECKING:
    from ...bundle.manifest import GraphEntry
    from ...bundle.store import Bundle
    from . import BackendOptions

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
CPU_PROVIDER = "CPUExecutionProvider"

# A provider and its options, as `ort.InferenceSession(providers=...)` takes them (ONNX Runtime turns every value into
# a string; booleans of the TensorRT EP must read "True" / "False").
ProviderList = list[tuple[str, dict[str, str]]]

TRT_CACHE_DIR = "onnxruntime-tensorrt"  # under the cache root: one folder per bundle (and ONNX Runtime version)

# Why a GPU provider is missing from a session, and what to do about it (the message of a refused fallback).
_FALLBACK_HELP = {
    "CUDAExecutionProvider": (
        "ONNX Runtime could not initialise CUDA: the CUDA 12 runtime, cuBLAS or cuDNN 9 libraries that "
        "onnxruntime-gpu loads were not found, or no CUDA GPU / driver is usable (ONNX Runtime's log lines above "
        "name what failed)",
        "install the libraries (`pip install 'onnxruntime-gpu[cuda,cudnn]'`, or CUDA 12 and cuDNN 9 on the library "
        "path), check the GPU with `nvidia-smi`"),
    "TensorrtExecutionProvider": (
        "ONNX Runtime could not initialise TensorRT: the TensorRT libraries (libnvinfer) of the version this "
        "onnxruntime-gpu release was built against were not found, or CUDA itself failed (ONNX Runtime's log lines "
        "above name what failed)",
        "install that TensorRT release and put its lib/ folder on LD_LIBRARY_PATH (the requirements table of "
        "https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html), or use --device cuda"),
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


def bundle_key(bundle: Bundle) -> str:
    """16 hex digits of the sha256 of the bundle's manifest (canonical JSON). The manifest lists the sha256 of every
    file, so two bundles share a key only when they hold the same graphs."""
    text = json.dumps(bundle.manifest.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def engine_cache_dir(bundle: Bundle, ort_version: str, root: Path | None = None) -> Path:
    """Where the TensorRT EP keeps this bundle's engines: <cache root>/onnxruntime-tensorrt/ort<version>-<bundle key>.
    The EP names an engine file after the model's file name and its node and input names, not its weights (its
    `TRTGenerateId`): every bundle's `restore_step.fp32.onnx` would get the same name, and a rebuilt bundle would load
    the old engine. Its docs also say to discard engines when ONNX Runtime changes: a folder per bundle and version."""
    base = root if root is not None else cache_root()
    return base / TRT_CACHE_DIR / f"ort{ort_version}-{bundle_key(bundle)}"


def profile_shapes(shapes: Mapping[str, Sequence[int]], order: Sequence[str]) -> str:
    """One level of a profile in the TensorRT EP's format: `name:1x3x224x224,name2:...`, inputs in `order` first (the
    graph's input order), then any others the profile names."""
    names = [n for n in order if n in shapes] + sorted(n for n in shapes if n not in order)
    return ",".join(f"{n}:{'x'.join(str(int(d)) for d in shapes[n])}" for n in names)


def provider_options(device: str, *, graph: str = "", entry: GraphEntry | None = None, precision: str = "fp32",
                     cache_dir: Path | None = None, device_id: int = 0) -> ProviderList:
    """The providers, with their options, for one graph variant on `device` (cuda or tensorrt; the CPU session is
    created with the bare provider name and no options).

    CUDA EP: `device_id`, and `use_tf32` "0": the EP allows TF32 by default, and TF32 rounding alone moved the demo
    scores by 8.5e-4 against the 1e-3 parity gate (issue 21), so an fp32 variant must run in fp32.
    TensorRT EP (options as named in ONNX Runtime's TensorRT EP docs and `tensorrt_execution_provider_info.cc`):
    - `trt_engine_cache_enable` / `trt_engine_cache_path`: `cache_dir`/engines/<graph>.<precision> (`cache_dir` is
      per bundle, see engine_cache_dir), so an engine is built once and never reused for another graph or variant;
      `trt_timing_cache_enable` / `trt_timing_cache_path`: `cache_dir`/timing, shared by the bundle's graphs (the EP
      names the file by the GPU's compute capability). No caching without `cache_dir`.
    - `trt_profile_min_shapes` / `_opt_` / `_max_`: the manifest's profile (`entry.profiles`), the one the bundle's
      own engines are built for, so both TensorRT paths accept the same shapes (the EP needs all three).
    - precision flags follow the variant, whose ONNX is already typed: fp32 sets none (TensorRT may not pick FP16
      kernels); fp16 sets `trt_fp16_enable`; int8 (explicit Q/DQ, FP16 elsewhere) sets `trt_int8_enable` and
      `trt_fp16_enable`, with no calibration table (the docs: a table must not be given for a Q/DQ model); int8-cpu
      (Q/DQ, FP32 elsewhere) sets `trt_int8_enable` only. The EP builds weakly typed networks, so with
      `trt_fp16_enable` TensorRT may also run in FP16 the few nodes the fp16 recipe kept in FP32.
    """
    if device not in ("cuda", "tensorrt"):
        raise ConfigError(f"provider options are for the GPU devices cuda and tensorrt, not {device!r}")
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), "use_tf32": "0"})
    if device == "cuda":
        return [cuda, (CPU_PROVIDER, {})]
    trt: dict[str, str] = {"device_id": str(device_id)}
    if cache_dir is not None:
        trt |= {"trt_engine_cache_enable": "True",
                "trt_engine_cache_path": os.fspath(cache_dir / "engines" / f"{graph or 'graph'}.{precision}"),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": os.fspath(cache_dir / "timing")}
    if entry is not None and entry.profiles.min:
        order = [t.name for t in entry.inputs]
        trt |= {"trt_profile_min_shapes": profile_shapes(entry.profiles.min, order),
                "trt_profile_opt_shapes": profile_shapes(entry.profiles.opt, order),
                "trt_profile_max_shapes": profile_shapes(entry.profiles.max, order)}
    int8 = precision.startswith("int8")
    fp16 = precision in ("fp16", "int8")
    trt |= {"trt_fp16_enable": str(fp16), "trt_int8_enable": str(int8)}
    return [("TensorrtExecutionProvider", trt), cuda, (CPU_PROVIDER, {})]


def fallback_problem(graph: str, wanted: Sequence[str], got: Sequence[str]) -> str | None:
    """Why a session whose providers are `got` is not what `wanted` asked for (None when it is): the first wanted
    provider must come first, and no wanted GPU provider may be missing."""
    missing = [p for p in wanted if p != CPU_PROVIDER and p not in got]
    if not missing and list(got[:1]) == list(wanted[:1]):
        return None
    lost = missing[0] if missing else wanted[0]
    reason, fix = _FALLBACK_HELP.get(lost, ("ONNX Runtime could not initialise it", "check ONNX Runtime's log"))
    return (f"the {graph} session was created without {', '.join(missing) or wanted[0]} (it got {list(got)}): "
            f"ONNX Runtime drops a provider it cannot initialise and runs the graph on the next one, here "
            f"{got[0] if got else 'none'}, without an error. Likely reason: {reason}. Fix: {fix}; or run with "
            f"--device cpu. Refused rather than run silently on the wrong device")


class OnnxRuntimeExecutor:
    def __init__(self, onnx_paths: Mapping[str, str | os.PathLike[str]], input_names: Mapping[str, Sequence[str]],
                 output_names: Mapping[str, str], *, device: str = "cpu", threads: int | None = None,
                 device_id: int = 0, spin: bool = True,
                 io: Mapping[str, tuple[Sequence[TensorSpec], Sequence[TensorSpec]]] | None = None,
                 providers: Mapping[str, ProviderList] | None = None) -> None:
        """`io`: per graph, the (inputs, outputs) the sessions must have; a mismatch is a BundleError naming the
        graph, the tensor and both descriptions. `providers`: per graph, the providers with options for a GPU
        device (default: `provider_options(device)`, no engine cache or profile); ignored on the CPU."""
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
        self.device = device
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
            if device == "cpu":
                self._sessions[g] = self._guard(
                    g, functools.partial(ort.InferenceSession, p, options, providers=wanted),
                    lambda g, exc: BundleError(f"{self._paths[g]}: ONNX Runtime cannot load the {g} graph "
                                               f"({type(exc).__name__}: {_first_line(exc)}); rebuild the bundle "
                                               f"with `diffv2iqa-trt build`", path=self._paths[g]))
            else:
                self._sessions[g] = self._gpu_session(g, options, wanted, (providers or {}).get(g))
            if io is not None and g in io:
                self._check_io(g, *io[g])
        self._inputs = {g: list(names) for g, names in input_names.items()}
        self._outputs = dict(output_names)

    def _gpu_session(self, graph: str, options: Any, wanted: Sequence[str], chosen: ProviderList | None) -> Any:
        """A CUDA / TensorRT session, refused (BackendError) when it did not get the provider asked for. Created with
        enable_fallback=0: otherwise ONNX Runtime's Python layer prints to stdout and retries on the CPU when the
        provider fails during creation."""
        if chosen is None:
            chosen = provider_options(self.device, device_id=self.device_id)
        for _, opts in chosen:
            for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if key in opts:
                    try:
                        Path(opts[key]).mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise BackendError(f"cannot create the TensorRT EP cache folder {opts[key]} ({exc.strerror}); "
                                           f"point ${CACHE_ENV} at a writable folder") from None
        session = self._guard(
            graph, functools.partial(self._ort.InferenceSession, self._paths[graph], options, providers=chosen,
                                     enable_fallback=0),
            lambda g, exc: BackendError(f"ONNX Runtime could not create the {g} session of {self._paths[g]} on "
                                        f"{wanted[0]} ({type(exc).__name__}: {_first_line(exc)}); if the same "
                                        f"bundle loads with --device cpu, the {wanted[0]} setup is at fault (ONNX "
                                        f"Runtime's log names it), otherwise rebuild the bundle with "
                                        f"`diffv2iqa-trt build`"))
        problem = fallback_problem(graph, wanted, list(session.get_providers()))
        if problem:
            raise BackendError(problem)
        return session

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
    providers: dict[str, ProviderList] = {}
    cache_dir = engine_cache_dir(bundle, _ort_version()) if options.device == "tensorrt" else None
    for graph in GRAPH_NAMES:
        entry = bundle.graph(graph)
        bundle.check_onnx_references(graph, plan[graph])
        paths[graph] = bundle.onnx_path(graph, plan[graph])
        inputs[graph] = list(entry.input_names)
        outputs[graph] = GRAPH_OUTPUTS[graph][0]  # the contract's output, wherever the manifest lists it
        io[graph] = (entry.inputs, entry.outputs)
        if options.device in ("cuda", "tensorrt"):
            providers[graph] = provider_options(options.device, graph=graph, entry=entry, precision=plan[graph],
                                                cache_dir=cache_dir)
    executor = OnnxRuntimeExecutor(paths, inputs, outputs, device=options.device, threads=options.threads, io=io,
                                   providers=providers)
    executor.plan = plan.label()
    return executor


def _ort_version() -> str:
    """The installed ONNX Runtime's version ("unknown" without one: the executor then reports the missing package)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "unknown"
    return str(ort.__version__)

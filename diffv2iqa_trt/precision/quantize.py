"""Make one reduced-precision ONNX variant of one graph from its FP32 ONNX and a calibration set.

- fp16: NVIDIA ModelOpt AutoCast (float32 inputs and outputs kept); its reference run (which also keeps nodes whose
  values overflow FP16 in FP32) sees real recorded inputs, not random ones.
- int8: ModelOpt ONNX PTQ: explicit Q/DQ, per-channel weights, entropy or max calibration, FP16 elsewhere: the
  layout TensorRT's strongly typed builds take.
- int8-cpu: ONNX Runtime's quantize_static, QDQ with uint8 activations and int8 per-channel weights on Conv and
  MatMul: the layout ONNX Runtime's CPU kernels fuse into QLinearConv / integer matmuls.
Every tool works on a private copy in a scratch directory (ModelOpt writes intermediate files next to its input).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..calibration import CalibrationSet
from ..errors import ConfigError, DependencyError, ExportError
from ..precision_plan import INT8, INT8_CPU
from .groups import as_patterns, check_groups, excluded_nodes

FP16 = "fp16"
REDUCED = (FP16, INT8, INT8_CPU)
INT8_METHODS = ("entropy", "max")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear")
AUTOCAST_ROWS = 8  # recorded rows AutoCast's reference run checks value ranges on, at crop size 64


def autocast_rows(crop_size: int) -> int:
    """Rows for AutoCast's reference run, which holds every intermediate tensor of every row at once: 8 at crop 64,
    fewer in proportion to the pixels (1 at the paper's 224: its vda alone took 6.3 GB at 8 rows)."""
    return max(1, min(AUTOCAST_ROWS, AUTOCAST_ROWS * 64 * 64 // (crop_size * crop_size)))


@dataclass(frozen=True)
class Recipe:
    """How one variant is made: precision, node groups kept in FP32, and (int8) the calibration method."""

    precision: str
    exclude: tuple[str, ...] = ()
    method: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in REDUCED:
            raise ConfigError(f"no recipe makes {self.precision!r}; reduced precisions are {', '.join(REDUCED)}")
        if self.precision == FP16 and self.method is not None:
            raise ConfigError("fp16 takes no calibration method")
        if self.precision != FP16 and self.method not in INT8_METHODS:
            raise ConfigError(f"{self.precision} needs a calibration method: one of {', '.join(INT8_METHODS)}")

    @property
    def label(self) -> str:
        parts = [self.precision] + ([self.method] if self.method else [])
        return "/".join(parts) + (f"[fp32: {'+'.join(self.exclude)}]" if self.exclude else "")

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "exclude": list(self.exclude), "method": self.method}


@dataclass
class FeedReader:
    """ONNX Runtime's CalibrationDataReader protocol over a calibration set's batches of one graph. Records a digest
    of every batch it hands out, so a test can show the calibrator saw distinct batches (one ModelOpt snapshot built
    its batch list as `[{}] * n`: n references to one dict, every batch the last)."""

    cs: CalibrationSet
    graph: str
    batch_size: int
    max_batches: int | None = None  # evenly spaced over the set (for restore_step: over the steps)
    served: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        if self.max_batches is None:
            return self.cs.feeds(self.graph, self.batch_size)
        batches = self.cs.batches(self.graph, self.batch_size)
        keep = np.unique(np.linspace(0, len(batches) - 1, min(self.max_batches, len(batches))).round().astype(int))
        return (self.cs.feed(self.graph, batches[i]) for i in keep)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._iter, None)
        if feed is not None:
            self.served.append(feed_digest(feed))
        return feed

    def get_first(self) -> dict[str, np.ndarray]:
        return next(self._feeds())

    def rewind(self) -> None:
        self._iter = self._feeds()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._feeds()

    def __len__(self) -> int:
        n = len(self.cs.batches(self.graph, self.batch_size))
        return n if self.max_batches is None else min(n, self.max_batches)


def feed_digest(feed: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(feed):
        h.update(name.encode())
        h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()[:16]


def _ort_reader(reader: FeedReader) -> Any:
    """`reader` as a subclass of ONNX Runtime's CalibrationDataReader (ModelOpt and ORT check the type)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def get_first(self) -> dict[str, np.ndarray]:
            return reader.get_first()

        def rewind(self) -> None:
            reader.rewind()

    return Reader()


def check_float_graph(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a graph that is already quantised: calibrating Q/DQ nodes again would stack a second quantisation."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QDQ_OPS})
    if found:
        raise ConfigError(f"{path} already holds quantisation nodes ({', '.join(found)}); quantise the FP32 graph "
                          "(the bundle's <graph>.fp32.onnx), not a quantised one")


def _private_copy(src: Path, scratch: Path) -> Path:
    """Copy an ONNX file and its external-data files into `scratch`."""
    dst = scratch / src.name
    shutil.copyfile(src, dst)
    model = onnx.load(str(src), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and not (scratch / entry.value).exists():
                shutil.copyfile(src.parent / entry.value, scratch / entry.value)
    return dst


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The tools log at INFO/WARNING through `logging` (ModelOpt, ORT's quantizer on the root logger), print notices
    and draw progress bars: the builder reports what matters itself, so nothing gets through while a tool runs."""
    # tqdm reads TQDM_DISABLE when it is imported: ModelOpt (imported lazily, inside this context) brings it in.
    os.environ.setdefault("TQDM_DISABLE", "1")
    loggers = [logging.getLogger(), logging.getLogger("modelopt"), logging.getLogger("modelopt.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # ModelOpt logs "Failed to get GPU count" as an ERROR on every CPU machine
    try:
        # Progress bars (tqdm) and prints go to the Python streams: swallowed. A tool's failure still surfaces as its
        # exception, which make_variant turns into an ExportError with the message.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quiet_onnxruntime() -> None:
    """ONNX Runtime logs a warning per node it cannot constant-fold in a Q/DQ graph (hundreds): errors only."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def _require(module: str, what: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(f"{what} needs {module.split('.')[0]} ({exc}); install the toolkit's `precision` "
                              "extra: pip install -e '.[cpu,precision]'") from None


@dataclass(frozen=True)
class MadeVariant:
    path: Path
    recipe: Recipe
    excluded_nodes: int
    qdq_nodes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.recipe.to_dict(), "excluded_nodes": self.excluded_nodes, "qdq_nodes": self.qdq_nodes,
                "seconds": round(self.seconds, 2)}


def make_variant(src: Path, dst: Path, graph: str, recipe: Recipe, cs: CalibrationSet, scratch: Path,
                 *, batch_size: int = 8) -> MadeVariant:
    """Write the `recipe` variant of the FP32 graph `src` to `dst` (a single file, weights inside)."""
    check_groups(graph, recipe.exclude)
    model = onnx.load(str(src), load_external_data=False)
    check_float_graph(model, src)
    names = excluded_nodes(model, graph, recipe.exclude)
    scratch.mkdir(parents=True, exist_ok=True)
    local = _private_copy(src, scratch)
    start = time.perf_counter()
    quiet_onnxruntime()
    try:
        with quiet_logs():
            if recipe.precision == FP16:
                out = _fp16(local, graph, names, cs, scratch, batch_size)
            elif recipe.precision == INT8:
                out = _int8_modelopt(local, graph, names, cs, scratch, batch_size, recipe.method or "")
            else:
                out = _int8_ort_isolated(local, graph, names, cs, scratch, batch_size, recipe.method or "")
    except (DependencyError, ConfigError):
        raise
    except Exception as exc:  # the tools raise anything (AssertionError, RuntimeError, ORT's Fail)
        raise ExportError(f"making the {recipe.label} variant of {graph} failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    seconds = time.perf_counter() - start
    # Intermediate shapes the tools recorded can be wrong for other batch sizes (AutoCast pinned some to its
    # calibration batch, which ONNX Runtime then enforces): drop them, every consumer infers its own.
    del out.graph.value_info[:]
    onnx.save_model(out, str(dst))  # single file: every variant is far below protobuf's 2 GB
    qdq = sum(n.op_type in QDQ_OPS for n in out.graph.node)
    return MadeVariant(dst, recipe, len(names), qdq, seconds)


def _fp16(src: Path, graph: str, names: list[str], cs: CalibrationSet, scratch: Path,
          batch_size: int) -> onnx.ModelProto:
    _require("modelopt.onnx.autocast", "the fp16 variant")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    data = scratch / f"{graph}-autocast-inputs"
    data.mkdir(exist_ok=True)
    # Single rows: AutoCast's reference run keeps every intermediate tensor of the graph (a paper-size U-Net at
    # batch 8 does not fit in 24 GB). Rows spread over the set: for restore_step, over the steps.
    rows = autocast_rows(cs.crop_size)
    feeds = list(FeedReader(cs, graph, 1))
    stride = max(1, len(feeds) // rows)
    for i, feed in enumerate(feeds[::stride][:rows]):
        np.savez(data / f"{i:04d}.npz", **feed)  # type: ignore[arg-type]
    model: onnx.ModelProto = convert_to_mixed_precision(
        str(src), low_precision_type="fp16", nodes_to_exclude=as_patterns(names) or None, keep_io_types=True,
        providers=["cpu"], calibration_data=str(data))
    return model


def _int8_modelopt(src: Path, graph: str, names: list[str], cs: CalibrationSet, scratch: Path, batch_size: int,
                   method: str, reader: FeedReader | None = None) -> onnx.ModelProto:
    _require("modelopt.onnx.quantization", "the int8 variant")
    from modelopt.onnx.quantization import quantize

    out = scratch / f"{graph}.int8.modelopt.onnx"
    quantize(str(src), quantize_mode="int8", calibration_method=method, calibration_eps=["cpu"],
             calibration_data_reader=_ort_reader(reader or FeedReader(cs, graph, batch_size)),
             high_precision_dtype="fp16", nodes_to_exclude=as_patterns(names), output_path=str(out),
             log_level="WARNING")
    return onnx.load(str(out))


def _int8_ort_isolated(src: Path, graph: str, names: list[str], cs: CalibrationSet, scratch: Path, batch_size: int,
                       method: str) -> onnx.ModelProto:
    """`_int8_ort` in a fresh interpreter: importing ModelOpt's quantizer replaces functions of ONNX Runtime's
    calibrators (modelopt/onnx/quantization/ort_patching.py) for the whole process, after which ORT's own
    quantize_static loses tensor ranges. A spawned process has never imported ModelOpt."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            path = pool.submit(_int8_ort_worker, str(src), graph, names, cs.arrays(), dict(cs.meta), str(scratch),
                               batch_size, method).result()
        except BrokenProcessPool:
            raise ExportError(killed_quantizer_message(graph, cs)) from None
    return onnx.load(path)


def killed_quantizer_message(graph: str, cs: CalibrationSet) -> str:
    """Why the int8-cpu quantizer's process died without an exception: the kernel killed it, nearly always for
    memory (quantize_static keeps every intermediate tensor of every calibration row: 15 GB for the paper
    restore_step's 88 rows at 224²)."""
    return (f"the int8-cpu quantizer of {graph} was killed by the system, most likely out of memory (ONNX Runtime's "
            f"quantize_static holds every intermediate tensor of its {cs.rows(graph)} calibration rows); record "
            f"fewer rows with a smaller --calib-crops, or stop other large jobs on this machine, and build again")


def _int8_ort_worker(src: str, graph: str, names: list[str], arrays: dict[str, np.ndarray], meta: dict[str, Any],
                     scratch: str, batch_size: int, method: str) -> str:
    quiet_onnxruntime()
    with quiet_logs():
        cs = CalibrationSet.from_arrays(arrays, meta)
        model = _int8_ort(Path(src), graph, names, cs, Path(scratch), batch_size, method)
    out = Path(scratch) / f"{graph}.int8-cpu.onnx"
    onnx.save_model(model, str(out))
    return str(out)


def ort_batches(crop_size: int) -> int | None:
    """Calibration batches ONNX Runtime's quantize_static gets: every batch for small crops; 3 (spread over the set)
    from crop 128 up, because its calibrator keeps each batch's activations until the end: the paper restore_step
    held about 1.8 GB per batch of 8 (20 GB at 11 batches, on a 24 GB machine)."""
    return None if crop_size < 128 else 3


MAX_ORT_RETRIES = 8
_MISSING_RANGE = re.compile(r"Quantization parameters are not specified for param (\S+?)\.? In static mode")


def _missing_range(message: str) -> str | None:
    m = _MISSING_RANGE.search(message)
    return m.group(1) if m else None


def _int8_ort(src: Path, graph: str, names: list[str], cs: CalibrationSet, scratch: Path, batch_size: int,
              method: str, reader: FeedReader | None = None) -> onnx.ModelProto:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # ONNX Runtime's basic (hardware-independent) graph optimisations first: constant folding turns tensors computed
    # from constants (e.g. a Concat feeding a MatMul) into initializers, which the quantizer needs ranges or values for.
    folded = scratch / f"{graph}.folded.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    src = folded
    out = scratch / f"{graph}.int8-cpu.ort.onnx"
    calibrate = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[method]

    def run(op_types: list[str], exclude: list[str]) -> None:
        quantize_static(str(src), str(out), _ort_reader(reader or FeedReader(cs, graph, batch_size,
                                                                             max_batches=ort_batches(cs.crop_size))),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=calibrate, extra_options={"CalibTensorRangeSymmetric": False})

    # Conv and MatMul: the ops with integer CPU kernels. ORT 1.32's quantizer sometimes calibrates no range for a
    # node's input (seen: a Concat of the graph input with computed tensors) and then refuses the whole model; such
    # nodes stay in float (each one named in the error, found and excluded, a few times at most).
    model = onnx.load(str(src), load_external_data=False)
    excluded = list(names)
    for _ in range(MAX_ORT_RETRIES):
        try:
            run(["Conv", "MatMul"], excluded)
            break
        except ValueError as exc:
            tensor = _missing_range(str(exc))
            consumers = [n.name for n in model.graph.node if tensor in n.input and n.name not in excluded]
            if tensor is None or not consumers:
                raise
            excluded += consumers
    else:
        raise ExportError(f"ONNX Runtime's quantizer kept refusing {graph} after {MAX_ORT_RETRIES} exclusions")
    return onnx.load(str(out))

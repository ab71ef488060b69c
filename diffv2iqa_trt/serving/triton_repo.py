"""A standalone Triton Inference Server model repository of a bundle (`diffv2iqa-trt export-triton`).

What it writes, one folder per model (Triton's layout: `<model>/config.pbtxt`, `<model>/1/<file>`):
- `restore_step`, `vcg`, `vda`: the chosen ONNX variant of each graph (`platform: "onnxruntime_onnx"`, `model.onnx`
  and its external-data files under the names the graph refers to);
- `restore_step_trt`, `vcg_trt`, `vda_trt`: the bundle's TensorRT engine of the same precision, when it holds one
  (`platform: "tensorrt_plan"`, `model.plan`; the config's comment says which TensorRT and GPU built it);
- `diffv2iqa`: the front (Python backend) that decodes the request, runs the fixed-step loop and the fusion by calling
  the graph models through BLS, with the bundle's manifest and the noise bank of a crop-size restoration beside it;
- `diffv2iqa_local` (optional): a Python-backend model that runs the whole host pipeline on ONNX Runtime inside the
  backend, with a copy of the bundle; it needs no other Triton backend.

Shapes come from the manifest's profiles: a dimension whose min and max agree is fixed, any other is -1. The branch
graphs are batched by Triton (`max_batch_size`, dynamic batching); restore_step is not (`max_batch_size: 0`), since
its noise input `z` is one image broadcast over the batch (contract.BROADCAST_INPUTS), which Triton's batcher would
concatenate; the front forms its batches itself.

The repository is written into a temporary folder beside `out` and renamed onto it at the end, so an interrupted
export never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import normal_permissions
from ..bundle.manifest import GraphEntry
from ..bundle.schema import MANIFEST_NAME
from ..bundle.store import Bundle
from ..contract import BROADCAST_INPUTS, GRAPH_NAMES, RESTORE_STEP
from ..errors import BundleError, ConfigError
from ..precision_plan import PrecisionPlan, runnable_plan

FRONT = "diffv2iqa"
LOCAL = "diffv2iqa_local"
ENGINE_SUFFIX = "_trt"
VERSION = "1"  # every model has one version folder
NOISE_FILE = "noise_bank.npy"  # in the front's version folder: rows 0..T of a crop-size restoration
BUNDLE_DIR = "bundle"  # in a Python model's version folder: the manifest (front) or the whole bundle (local)
BLS_TARGETS = ("auto", "onnx", "tensorrt")
ONNX_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
MAX_INSTANCES = 64
DEFAULT_BATCH = 8  # diffv2iqa_trt.load's batch_size

# The manifest's dtype names -> Triton's.
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
                "float64": "TYPE_FP64"}


@dataclass(frozen=True)
class RepositoryOptions:
    """What `export-triton` is asked for. `max_batch`: Triton's max_batch_size of the batched models and the front's
    batch (None: the largest the profiles allow); `precision`: a precision plan (None: the bundle's own plan, an
    int8 graph in its int8-cpu layout where the ONNX models run on the CPU); `bls_target`: which graph models the
    front calls (auto: the engines when the bundle holds one of every graph at the plan's precision)."""

    max_batch: int | None = None
    instances: int = 1
    precision: str | None = None
    onnx_device: str = "cpu"
    local: bool = True
    bls_target: str = "auto"
    max_queue_delay_us: int = 0

    def __post_init__(self) -> None:
        if self.max_batch is not None and (isinstance(self.max_batch, bool) or self.max_batch < 1):
            raise ConfigError(f"--max-batch must be a positive integer, got {self.max_batch!r}")
        if isinstance(self.instances, bool) or not 1 <= self.instances <= MAX_INSTANCES:
            raise ConfigError(f"--instances must be an integer between 1 and {MAX_INSTANCES}, got {self.instances!r}")
        if self.onnx_device not in ONNX_KINDS:
            raise ConfigError(f"--onnx-device must be one of {', '.join(ONNX_KINDS)}, got {self.onnx_device!r}")
        if self.bls_target not in BLS_TARGETS:
            raise ConfigError(f"--bls-target must be one of {', '.join(BLS_TARGETS)}, got {self.bls_target!r}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-ms must not be negative, got {self.max_queue_delay_us / 1000}")


@dataclass(frozen=True)
class ExportedModel:
    """One model of the repository: its name, what runs it, its files (repository-relative) with their source in the
    bundle (None for files the export made), and what a server needs to load it."""

    name: str
    runs_on: str  # `platform: onnxruntime_onnx`, `platform: tensorrt_plan`, `backend: python`
    files: Mapping[str, str | None]
    needs: str


@dataclass(frozen=True)
class RepositoryReport:
    root: Path
    plan: PrecisionPlan
    max_batch: int
    front_calls: tuple[str, ...]  # the graph models the front calls (restore_step, vcg, vda order)
    models: tuple[ExportedModel, ...] = field(default=())

    @property
    def bls_target(self) -> str:
        return "tensorrt" if self.front_calls[0].endswith(ENGINE_SUFFIX) else "onnx"


# ------------------------------------------------------------------------------------------------------ shapes


def profile_max_batch(bundle: Bundle) -> int:
    """The largest batch every graph's profile accepts (the first dim of each input's max shape, broadcast inputs
    aside)."""
    return min(int(shape[0]) for g in GRAPH_NAMES for name, shape in bundle.graph(g).profiles.max.items()
               if name not in BROADCAST_INPUTS)


def input_dims(entry: GraphEntry, batched: bool) -> dict[str, list[int]]:
    """Per input, Triton's dims from the profile: min == max gives the size, anything else -1; without the batch
    axis when Triton batches the model."""
    p = entry.profiles
    dims = {}
    for t in entry.inputs:
        lo, hi = p.min.get(t.name), p.max.get(t.name)
        if lo is None or hi is None:  # an input without a dynamic dim: its manifest shape
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
        else:
            shape = [int(a) if a == b else -1 for a, b in zip(lo, hi, strict=True)]
        dims[t.name] = shape[1:] if batched else shape
    return dims


def output_dims(entry: GraphEntry, batched: bool) -> dict[str, list[int]]:
    """Per output, its manifest shape with each symbolic dim bound the way the inputs' profiles bind it (fixed when
    every input dim of that name has min == max), -1 otherwise; without the batch axis when Triton batches."""
    bound: dict[str, int | None] = {}
    for t in entry.inputs:
        lo, hi = entry.profiles.min.get(t.name), entry.profiles.max.get(t.name)
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                fixed = int(lo[i]) if lo is not None and hi is not None and lo[i] == hi[i] else None
                bound[d] = fixed if bound.get(d, fixed) == fixed else None
    dims = {}
    for t in entry.outputs:
        shape = [d if isinstance(d, int) else (bound.get(d) or -1) for d in t.shape]
        dims[t.name] = shape[1:] if batched else shape
    return dims


# ------------------------------------------------------------------------------------------------------ config text


def _q(text: str) -> str:
    return json.dumps(text)  # a protobuf text-format string literal (JSON escapes are a subset)


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor_block(kind: str, rows: Sequence[str]) -> list[str]:
    lines = [f"{kind} ["]
    for i, row in enumerate(rows):
        lines.append(f"  {{ {row} }}{',' if i < len(rows) - 1 else ''}")
    lines.append("]")
    return lines


def _tensor_row(name: str, dtype: str, dims: Sequence[int], *, optional: bool = False) -> str:
    """One input/output; an empty shape (one value per batch item) is Triton's dims [1] reshaped to []."""
    shape = f"dims: {_dims(dims)}" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f"name: {_q(name)} data_type: {dtype} {shape}" + (" optional: true" if optional else "")


def _comment(lines: Sequence[str]) -> list[str]:
    return [f"# {line}" if line else "#" for line in lines]


def _instances(kind: str, count: int) -> list[str]:
    return [f"instance_group [ {{ count: {count} kind: {kind} }} ]"]


def _batching(max_batch: int, delay_us: int) -> list[str]:
    return [f"max_batch_size: {max_batch}",
            f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"]


def _parameters(values: Mapping[str, str]) -> list[str]:
    lines = ["parameters ["]
    items = list(values.items())
    for i, (key, value) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        lines.append(f"  {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}{sep}")
    lines.append("]")
    return lines


def graph_config(name: str, graph: str, entry: GraphEntry, *, platform: str, max_batch: int, kind: str,
                 instances: int, delay_us: int, comment: Sequence[str]) -> str:
    """config.pbtxt of one graph model (ONNX or engine)."""
    batched = graph != RESTORE_STEP
    ins, outs = input_dims(entry, batched), output_dims(entry, batched)
    lines = _comment(comment) + [f"name: {_q(name)}", f"platform: {_q(platform)}"]
    lines += _batching(max_batch, delay_us) if batched else [
        "# No Triton batching: input z is one noise image broadcast over the batch (the front batches itself).",
        "max_batch_size: 0"]
    lines += _tensor_block("input", [_tensor_row(t.name, TRITON_TYPES[t.dtype], ins[t.name]) for t in entry.inputs])
    lines += _tensor_block("output", [_tensor_row(t.name, TRITON_TYPES[t.dtype], outs[t.name])
                                      for t in entry.outputs])
    lines += _instances(kind, instances)
    return "\n".join(lines) + "\n"


FRONT_INPUTS = (("image", "TYPE_STRING", [1]), ("pixels", "TYPE_UINT8", [-1, -1, 3]))
FRONT_OUTPUTS = (("score", "TYPE_FP64", [1]), ("vcg", "TYPE_FP64", [1]), ("vda", "TYPE_FP64", [1]),
                 ("crops", "TYPE_INT32", [1]), ("error", "TYPE_STRING", [1]))


def python_config(name: str, *, max_batch: int, instances: int, delay_us: int, comment: Sequence[str],
                  parameters: Mapping[str, str]) -> str:
    """config.pbtxt of a Python-backend scoring model: one image per batch item, as encoded bytes (`image`) or uint8
    HWC pixels (`pixels`), one of the two; a result or an error string per item."""
    lines = _comment(comment) + [f"name: {_q(name)}", 'backend: "python"']
    lines += _batching(max_batch, delay_us)
    lines += _tensor_block("input", [_tensor_row(n, t, d, optional=True) for n, t, d in FRONT_INPUTS])
    lines += _tensor_block("output", [_tensor_row(n, t, d) for n, t, d in FRONT_OUTPUTS])
    lines += _instances("KIND_CPU", instances)
    lines += _parameters(parameters)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ the export


def check_out(out: Path) -> None:
    """Refuse an --out that exists and is not an empty folder: an export never replaces anything."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a folder; choose a new folder for the repository")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder (or remove it yourself): "
                          "export-triton never writes into or replaces an existing repository")


def choose_plan(bundle: Bundle, options: RepositoryOptions) -> PrecisionPlan:
    """The ONNX variants to export: the plan asked for, else the bundle's, an int8 graph in its int8-cpu layout
    when the ONNX models run on the CPU (as `score` picks them)."""
    return runnable_plan(bundle.run_plan(options.precision), {g: bundle.precisions(g) for g in GRAPH_NAMES},
                         cpu=options.onnx_device == "cpu" and options.precision is None, source=str(bundle.root))


def pipeline_batch(max_batch: int) -> int:
    """The Python models' pipeline batch: `score`'s default, within what Triton's branch models accept, so a
    request's images are cut into the batches `score` would form (scores then agree bit for bit on ONNX Runtime)."""
    return min(DEFAULT_BATCH, max_batch)


def choose_max_batch(bundle: Bundle, requested: int | None) -> int:
    most = profile_max_batch(bundle)
    if requested is None:
        return most
    if requested > most:
        raise ConfigError(f"--max-batch {requested} is larger than the bundle's profiles allow ({most}: the max "
                          f"shapes of {bundle.manifest_path}); use --max-batch {most} or less, or rebuild the bundle "
                          "with a larger batch")
    return requested


def _engine_precision(bundle: Bundle, graph: str, precision: str) -> str | None:
    """The engine that serves `graph` at the planned precision (int8-cpu runs the int8 engine's calibration)."""
    have = bundle.engine_precisions(graph)
    for p in (precision, "int8" if precision == "int8-cpu" else None):
        if p is not None and p in have:
            return p
    return None


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _onnx_model(bundle: Bundle, graph: str, precision: str, root: Path, options: RepositoryOptions,
                max_batch: int) -> ExportedModel:
    entry = bundle.graph(graph)
    variant = entry.variants[precision]
    external = bundle.check_onnx_references(graph, precision)  # refuses data outside the bundle's listed files
    files: dict[str, str | None] = {f"{graph}/config.pbtxt": None, f"{graph}/{VERSION}/model.onnx": variant.file}
    base = posixpath.dirname(variant.file)
    for name in external:
        # ONNX resolves a location against the graph file's folder: keep the same relative path beside model.onnx.
        files[f"{graph}/{VERSION}/{posixpath.relpath(name, base or '.')}"] = name
    for rel, source in files.items():
        if source is not None:
            _copy(bundle.file_path(source), root / rel)
    kind = ONNX_KINDS[options.onnx_device]
    sha = bundle.manifest.files[variant.file].sha256
    comment = [f"{graph}: the {precision} ONNX variant ({variant.file}, sha256 {sha})",
               f"of the bundle of {bundle.manifest.model.label}, exported by diffv2iqa-trt {__version__}.",
               "Shapes from the bundle's profiles (-1: dynamic). Needs Triton's onnxruntime backend."]
    (root / graph / "config.pbtxt").write_text(graph_config(
        graph, graph, entry, platform="onnxruntime_onnx", max_batch=max_batch, kind=kind,
        instances=options.instances, delay_us=options.max_queue_delay_us, comment=comment), encoding="utf-8")
    return ExportedModel(graph, 'platform: "onnxruntime_onnx"', files, "Triton's onnxruntime backend")


def _engine_model(bundle: Bundle, graph: str, precision: str, root: Path, options: RepositoryOptions,
                  max_batch: int) -> ExportedModel:
    engine = bundle.engine(graph, precision)
    name = graph + ENGINE_SUFFIX
    files: dict[str, str | None] = {f"{name}/config.pbtxt": None, f"{name}/{VERSION}/model.plan": engine.file}
    _copy(bundle.file_path(engine.file), root / name / VERSION / "model.plan")
    built = f"TensorRT {engine.tensorrt} on {engine.gpu} (SM {engine.sm})"
    compat = ("version-compatible (runs on later TensorRT releases of the same major)" if engine.version_compatible
              else "loads only with that TensorRT version, on a GPU of that SM")
    comment = [f"{name}: the {precision} TensorRT engine of {graph} ({engine.file}, sha256 "
               f"{bundle.manifest.files[engine.file].sha256})",
               f"built for {built}: {compat}.",
               f"Built from {engine.source_onnx}. Needs Triton's tensorrt backend of that TensorRT version."]
    (root / name / "config.pbtxt").write_text(graph_config(
        name, graph, bundle.graph(graph), platform="tensorrt_plan", max_batch=max_batch, kind="KIND_GPU",
        instances=options.instances, delay_us=options.max_queue_delay_us, comment=comment), encoding="utf-8")
    return ExportedModel(name, 'platform: "tensorrt_plan"', files, f"Triton's tensorrt backend with {built}")


def _model_source(module: str) -> str:
    return resources.files("diffv2iqa_trt.serving.triton_model").joinpath(module).read_text(encoding="utf-8")


def _front_model(bundle: Bundle, plan: PrecisionPlan, root: Path, options: RepositoryOptions, max_batch: int,
                 targets: Mapping[str, str]) -> ExportedModel:
    import numpy as np

    from ..runtime.noise import noise_bank

    version = root / FRONT / VERSION
    p = bundle.manifest.pipeline
    files: dict[str, str | None] = {f"{FRONT}/config.pbtxt": None, f"{FRONT}/{VERSION}/model.py": None,
                                    f"{FRONT}/{VERSION}/{BUNDLE_DIR}/{MANIFEST_NAME}": MANIFEST_NAME,
                                    f"{FRONT}/{VERSION}/{NOISE_FILE}": None}
    _copy(bundle.manifest_path, version / BUNDLE_DIR / MANIFEST_NAME)
    (version / "model.py").write_text(_model_source("bls_model.py"), encoding="utf-8")
    np.save(version / NOISE_FILE, noise_bank(p.noise.seed, p.steps, p.crop_size, p.crop_size))
    parameters = {"restore_step_model": targets[RESTORE_STEP], "vcg_model": targets["vcg"],
                  "vda_model": targets["vda"], "batch_size": str(pipeline_batch(max_batch)),
                  "engines": "1" if targets[RESTORE_STEP].endswith(ENGINE_SUFFIX) else "0",
                  "max_pixels": "", "toolkit_version": __version__}
    comment = [f"{FRONT}: the scoring front of {bundle.manifest.model.label} (Python backend, BLS).",
               f"Runs the {p.steps}-step loop and the fusion by calling {', '.join(targets.values())};",
               "needs diffv2iqa-trt installed in the Python environment of Triton's Python backend.",
               f"Precision plan of the graphs: {plan.label()}. Request: `image` (encoded bytes) or `pixels` (uint8 "
               "HxWx3), one of them.",
               "Parameters: the graph models it calls, batch_size (the pipeline's batch), engines (1: refuse "
               "restorations outside the profiles), max_pixels (empty: the toolkit's 100 M)."]
    (root / FRONT / "config.pbtxt").write_text(python_config(
        FRONT, max_batch=max_batch, instances=options.instances, delay_us=options.max_queue_delay_us,
        comment=comment, parameters=parameters), encoding="utf-8")
    calls = ", ".join(targets.values())
    return ExportedModel(FRONT, 'backend: "python" (BLS)', files,
                         f"Triton's python backend with diffv2iqa-trt installed, and the models {calls}")


def _local_model(bundle: Bundle, plan: PrecisionPlan, root: Path, options: RepositoryOptions,
                 max_batch: int) -> ExportedModel:
    version = root / LOCAL / VERSION
    files: dict[str, str | None] = {f"{LOCAL}/config.pbtxt": None, f"{LOCAL}/{VERSION}/model.py": None,
                                    f"{LOCAL}/{VERSION}/{BUNDLE_DIR}/{MANIFEST_NAME}": MANIFEST_NAME}
    _copy(bundle.manifest_path, version / BUNDLE_DIR / MANIFEST_NAME)
    for name in bundle.manifest.files:
        files[f"{LOCAL}/{VERSION}/{BUNDLE_DIR}/{name}"] = name
        _copy(bundle.file_path(name), version / BUNDLE_DIR / name)
    (version / "model.py").write_text(_model_source("local_model.py"), encoding="utf-8")
    parameters = {"precision": options.precision or "", "batch_size": str(pipeline_batch(max_batch)), "threads": "",
                  "max_pixels": "", "toolkit_version": __version__}
    comment = [f"{LOCAL}: {bundle.manifest.model.label} scored by diffv2iqa-trt's ONNX Runtime host pipeline inside",
               "the Python backend (no BLS, no other Triton backend); a copy of the bundle is in 1/bundle.",
               "Needs diffv2iqa-trt with onnxruntime installed in the Python backend's environment.",
               "Parameters: precision (a --precision plan; empty: the bundle's), threads (ONNX Runtime intra-op "
               "threads; empty: its default), max_pixels (decoded pixels per image; empty: the toolkit's 100 M)."]
    (root / LOCAL / "config.pbtxt").write_text(python_config(
        LOCAL, max_batch=max_batch, instances=options.instances, delay_us=options.max_queue_delay_us,
        comment=comment, parameters=parameters), encoding="utf-8")
    return ExportedModel(LOCAL, 'backend: "python" (ONNX Runtime inside)', files,
                         "Triton's python backend with diffv2iqa-trt[cpu] installed")


def _bls_targets(bundle: Bundle, plan: PrecisionPlan, wanted: str) -> dict[str, str]:
    engines = {g: _engine_precision(bundle, g, plan[g]) for g in GRAPH_NAMES}
    if wanted == "tensorrt":
        missing = [g for g in GRAPH_NAMES if engines[g] is None]
        if missing:
            raise BundleError(f"--bls-target tensorrt: the bundle {bundle.root} holds no engine of "
                              f"{', '.join(f'{g} ({plan[g]})' for g in missing)}; build engines with "
                              "`diffv2iqa-trt build` on the GPU, or use --bls-target onnx", path=bundle.manifest_path)
    use_engines = wanted == "tensorrt" or (wanted == "auto" and all(e is not None for e in engines.values()))
    return {g: g + ENGINE_SUFFIX if use_engines else g for g in GRAPH_NAMES}


def write_repository(bundle: Bundle, out: str | os.PathLike[str], options: RepositoryOptions) -> RepositoryReport:
    """Write the model repository of a loaded (verified) bundle into `out`, a new or empty folder."""
    out = Path(os.path.abspath(out))
    check_out(out)
    plan = choose_plan(bundle, options)
    max_batch = choose_max_batch(bundle, options.max_batch)
    targets = _bls_targets(bundle, plan, options.bls_target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        models = [_onnx_model(bundle, g, plan[g], tmp, options, max_batch) for g in GRAPH_NAMES]
        for g in GRAPH_NAMES:
            engine = _engine_precision(bundle, g, plan[g])
            if engine is not None:
                models.append(_engine_model(bundle, g, engine, tmp, options, max_batch))
        models.append(_front_model(bundle, plan, tmp, options, max_batch, targets))
        if options.local:
            models.append(_local_model(bundle, plan, tmp, options, max_batch))
        report = RepositoryReport(out, plan, max_batch, tuple(targets[g] for g in GRAPH_NAMES), tuple(models))
        (tmp / "README.md").write_text(repository_readme(bundle, report), encoding="utf-8")
        (tmp / "export.json").write_text(json.dumps(export_record(bundle, report), indent=2) + "\n",
                                         encoding="utf-8")
        normal_permissions(tmp)
        check_out(out)  # it may have been filled meanwhile
        os.rename(tmp, out)  # onto a missing or empty folder: atomic on POSIX
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def export_record(bundle: Bundle, report: RepositoryReport) -> dict[str, Any]:
    """export.json: where every file of the repository came from (bundle file and sha256), for audits and tests."""
    files = bundle.manifest.files
    return {
        "toolkit_version": __version__, "bundle": os.fspath(bundle.root.resolve()),
        "model": bundle.manifest.model.label, "precision": report.plan.to_dict(), "max_batch": report.max_batch,
        "bls_target": report.bls_target,
        "models": {m.name: {"runs_on": m.runs_on, "needs": m.needs,
                            "files": {rel: None if src is None else {"bundle_file": src, "sha256": files[src].sha256}
                                      if src in files else {"bundle_file": src}
                                      for rel, src in m.files.items()}}
                   for m in report.models},
    }


def repository_readme(bundle: Bundle, report: RepositoryReport) -> str:
    p = bundle.manifest.pipeline
    rows = "\n".join(f"| `{m.name}` | {m.runs_on} | {m.needs} |" for m in report.models)
    engines = [m for m in report.models if m.name.endswith(ENGINE_SUFFIX)]
    engine_note = ("The `*_trt` models are the bundle's TensorRT engines: they load only on the TensorRT version and "
                   "GPU their config.pbtxt comment names." if engines else
                   "The bundle holds no TensorRT engines, so the repository has no `tensorrt_plan` models.")
    return f"""# Triton model repository: {bundle.manifest.model.label}

Written by `diffv2iqa-trt export-triton` {__version__} from the bundle `{bundle.root.resolve()}`
(precision plan {report.plan.label()}, max batch {report.max_batch}). `export.json` lists every file's source and
sha256.

| model | runs on | needs |
|---|---|---|
{rows}

{engine_note}

## Requirements
- `{FRONT}` and `{LOCAL}` are Python-backend models that import the toolkit: install `diffv2iqa-trt` (for
  `{LOCAL}` with its `cpu` extra, i.e. onnxruntime) into the Python environment of Triton's Python backend, with a
  NumPy the backend's stub was built against (PyTriton 0.7's stub: NumPy < 2). The toolkit's version should be
  {__version__}, the one that wrote this repository.
- `{FRONT}` calls {', '.join(f'`{m}`' for m in report.front_calls)} through BLS (the models named in its
  config.pbtxt `parameters`): load them too. `restore_step` has `max_batch_size: 0` because its input `z` is one
  noise image shared by the whole batch; the front forms its batches itself, across the requests of a call.

## Scores
`{LOCAL}` runs the scorer of `diffv2iqa-trt score --backend onnxruntime` on the copy of the bundle: same scores,
bit for bit, for the same images. `{FRONT}` runs the same pipeline (crops, loop, batches, fusion) over the graph
models, so its scores are the toolkit's for the same graph outputs; Triton's onnxruntime backend is another build of
ONNX Runtime (and TensorRT engines another precision path), so expect agreement within the bundle's parity report,
not bit for bit.

## Request and response (both Python models)
Inputs, one of them per batch item: `image` (BYTES [1]: a PNG, JPEG, PPM... file, decoded by the toolkit's checked
decoder) or `pixels` (UINT8 [-1, -1, 3]: RGB, height x width x 3). Outputs: `score`, `vcg`, `vda` (FP64 [1]; NaN
for a branch with fusion weight 0, and on error), `crops` (INT32 [1]) and `error` (BYTES [1]: empty when scored). An
image that cannot be scored is an error in its own response; the other requests of the batch are scored.

The pipeline: {p.steps} steps, crops `{p.crops}` of {p.crop_size} pixels, mode `{p.mode}`, fusion
{p.fusion.vcg_weight} x VCG + {p.fusion.vda_weight} x VDA, noise seed {p.noise.seed}. `{FRONT}/{VERSION}/{NOISE_FILE}`
is the noise bank of a {p.crop_size}x{p.crop_size} restoration (rows 0..{p.steps}, float32), checked against the
manifest's test vectors when the model loads.

## Start a server and score
```
tritonserver --model-repository=$PWD --model-control-mode=explicit --load-model={LOCAL}
```
or load `{FRONT}` with the graph models it calls (`--load-model={FRONT} {' '.join(f'--load-model={m}' for m in
report.front_calls)}`) on a server with the onnxruntime (or tensorrt) backend. Then, with `tritonclient[http]`:
```python
import numpy as np, tritonclient.http as http
client = http.InferenceServerClient("127.0.0.1:8000")
image = http.InferInput("image", [1, 1], "BYTES")
image.set_data_from_numpy(np.array([[open("photo.png", "rb").read()]], dtype=object))
result = client.infer("{LOCAL}", [image])
print(result.as_numpy("score")[0, 0], result.as_numpy("error")[0, 0])
```
"""

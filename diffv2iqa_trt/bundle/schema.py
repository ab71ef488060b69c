"""Validation of a manifest document, hashing, and the build-environment record.

Runtimes in any language read manifest.json, so it is checked twice: against the JSON Schema shipped next to this
module (`manifest.schema.json`, draft 2020-12, usable from C++ or any other language), then by the cross-field rules
JSON Schema cannot express (`validate_manifest`). The typed view is `manifest.Manifest`; directories are `store.py`.
Torch-free: stdlib, numpy and jsonschema only.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import importlib.resources
import itertools
import json
import math
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from ..config import MAX_GRID, MAX_STEPS, grid_size  # the toolkit's bounds, defined once
from ..contract import (
    BRANCH_GRAPHS,
    COEF,
    COEF_NAMES,
    COEF_WIDTH,
    GRAPH_INPUTS,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    NORM_DIVISOR,
    NORM_MEAN,
    NORM_STD,
    RESTORE_STEP,
    TensorSpec,
    graph_spec,
)
from ..errors import BundleError, ConfigError

SCHEMA_NAME = "diffv2iqa-trt-bundle"
SCHEMA_VERSION = 4
# Versions whose scores this toolkit can no longer reproduce, and why (docs/bundle.md, "Schema versions").
RETIRED_VERSIONS = {
    3: "its scores come from the retired NumPy noise bank and Pillow's resize, which version 4 replaced by the "
       "portable generator and resize of the scoring contract (scores differ)",
}
MANIFEST_NAME = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"

REBUILD = "rebuild the bundle with `diffv2iqa-trt build`"
_MAX_ERRORS = 8
_MAX_SCHEMA_ERRORS = 64  # collected before sorting: a hostile array can hold millions of wrong items
_CHUNK = 1 << 20

# --- What a reader accepts -------------------------------------------------------------------------------------------
# A manifest comes from a file anyone may have written, so its size and the pipeline it describes are bounded before
# anything is allocated from it. Measured on a tiny bundle's manifest: 76.5 kB, 2,397 JSON values, nesting depth 7
# (a paper bundle's adds ~40 coef rows); the caps leave a factor of 50 or more.
MAX_MANIFEST_BYTES = 4 << 20  # read at most this (+1 byte to notice more); parsing it takes < 0.3 s and < 100 MB
MAX_MANIFEST_VALUES = 200_000  # JSON values in all; the JSON Schema check takes ~4 us per value
MAX_MANIFEST_DEPTH = 32  # nesting of arrays and objects; deeper ones would end in a RecursionError downstream
# Bounds of the pipeline a bundle may describe (steps and grid:N: config.MAX_STEPS and config.MAX_GRID).
MAX_CROP_SIZE = 4096  # crop side in pixels [paper: 224]
MAX_SIZE_MULTIPLE = 256  # U-Net size multiple, a power of two [paper: 16]
MAX_NOISE_BANK_BYTES = 4 << 30  # the noise bank at crop size, (steps + 1) x 3 x crop x crop float32 [paper: 30 MB]
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # gamma and coef are fed to the graphs as float32
# What an engine entry records about its lean runtime (engine/loader.py): None (not version-compatible), "embedded"
# in the plan, or "external" (loaded from the lean runtime library of the TensorRT release that built it).
LEAN_RUNTIME_KINDS = (None, "embedded", "external")


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return importlib.resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest version this toolkit writes (a fresh copy: callers may modify it)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def _is_json_integer(_checker: Any, instance: Any) -> bool:
    """An integer as this toolkit and the C++ reader read it: a number written without a decimal point or exponent.
    JSON Schema itself counts 12.0 as an integer, which then reaches code that needs an int (a TypeError in `range`)
    or is silently taken as a size; Python's json parses 12.0 and 1e3 to float, so a float is refused here."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 2020-12 with that one change; every "integer" of manifest.schema.json follows it, whatever field it is.
_ManifestValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer))
_WHOLE_NUMBER_HINT = "(whole numbers are written without a decimal point or exponent, e.g. 12, not 12.0)"


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return _ManifestValidator(schema)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks (bundles hold files of hundreds of MB)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def utc_timestamp() -> str:
    """Now, as the manifest's `created` wants it: ISO 8601 in UTC with a 'Z', whole seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# Packages whose versions matter to a build; looked up by distribution metadata so nothing (torch!) is imported.
# pillow: it decodes the images (the resize is the contract's own since schema 4, runtime/resize.py).
_ENV_PACKAGES = ("numpy", "pillow", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "nvidia-modelopt", "polygraphy", "tensorrt", "cuda-bindings", "diffv2iqa-trt")


def environment_versions(extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Python, platform and the versions of the packages a build uses (None where not installed), plus `extra`
    (e.g. GPU name, driver, CUDA: those need the GPU stack, which the caller has)."""
    env: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in _ENV_PACKAGES:
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    if extra:
        env.update(extra)
    return env


def to_plain_json(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Deep copy as plain JSON values (numpy scalars and arrays become numbers and lists, tuples become lists), so a
    manifest is validated exactly as a reader will parse it. NaN and infinities are refused: they are not JSON."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, np.ndarray | np.generic):
            return obj.tolist()
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    try:
        doc: dict[str, Any] = json.loads(json.dumps(manifest, default=convert, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"the manifest cannot be written as JSON: {exc}") from exc
    return doc


def _short(message: str, limit: int = 240) -> str:
    # jsonschema quotes whole instances (a 50-row coef table); keep messages readable.
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _schema_problems(doc: Any) -> list[str]:
    errors = itertools.islice(_validator().iter_errors(doc), _MAX_SCHEMA_ERRORS)
    return [f"at {e.json_path}: {_short(e.message)}{_hint(e.instance)}"
            for e in sorted(errors, key=lambda e: e.json_path)]


def _hint(instance: Any) -> str:
    whole = isinstance(instance, float) and math.isfinite(instance) and instance.is_integer()
    return f" {_WHOLE_NUMBER_HINT}" if whole else ""


def _size_problem(doc: Any) -> str | None:
    """Whether the parsed document is too large or too deep to validate safely (iterative: no recursion)."""
    count, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_MANIFEST_VALUES:
            return f"it holds more than {MAX_MANIFEST_VALUES} JSON values"
        if depth > MAX_MANIFEST_DEPTH:
            return f"it nests arrays or objects more than {MAX_MANIFEST_DEPTH} deep"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def _finite(value: Any, limit: float = math.inf) -> bool:
    """A JSON number within +-limit. JSON has no NaN, but 1e999 parses as inf and a 400-digit integer overflows."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= limit
    except OverflowError:
        return False


def _relpath_problem(name: str) -> str | None:
    if name == MANIFEST_NAME:
        return f"{name!r} is the manifest itself and cannot be listed in files"
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is not a relative '/'-separated path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return f"{name!r} has an empty, '.' or '..' segment"
    return None


def _semantic_problems(doc: dict[str, Any], hashes: bool = True) -> list[str]:
    """Cross-field rules; assumes the document already passed the schema. `hashes=False` skips the rules that
    compare file hashes (a writer validating before the files are copied and hashed)."""
    problems: list[str] = []
    try:
        _dt.datetime.fromisoformat(doc["created"].replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"at $.created: {doc['created']!r} is not a valid date and time")

    p = doc["pipeline"]
    steps = p["steps"]
    problems += _pipeline_problems(p)
    for key in ("gamma", "coef"):
        if len(p[key]) != steps:
            problems.append(f"at $.pipeline.{key}: {len(p[key])} rows, but steps is {steps} (one row per step)")
    for key in ("capture_t1", "capture_t2"):
        if not 0 < p[key] < steps:
            problems.append(f"at $.pipeline.{key}: step {p[key]} is outside the {steps}-step schedule "
                            f"(must be in [1, {steps - 1}])")
    if p["capture_t1"] == p["capture_t2"]:
        problems.append(f"at $.pipeline.capture_t2: the two snapshots must come from distinct steps, both are "
                        f"{p['capture_t1']}")

    if tuple(p["coef_names"]) != COEF_NAMES:
        problems.append(f"at $.pipeline.coef_names: {p['coef_names']} is not the restore_step contract's "
                        f"{list(COEF_NAMES)}")
    norm = p["normalisation"]
    wanted = {"divisor": NORM_DIVISOR, "mean": NORM_MEAN, "std": NORM_STD}
    if any(norm[k] != v for k, v in wanted.items()):
        # The runtimes implement one normalisation (contract.NORM_FORMULA); another one could not be honoured.
        problems.append(f"at $.pipeline.normalisation: divisor/mean/std {norm['divisor']}/{norm['mean']}/"
                        f"{norm['std']} differ from the only supported {NORM_DIVISOR}/{NORM_MEAN}/{NORM_STD}")

    files = doc["files"]
    for name in files:
        if (why := _relpath_problem(name)) is not None:
            problems.append(f"at $.files: {why}")
    checkpoint = doc["model"].get("checkpoint")
    if checkpoint is not None and checkpoint not in files:
        problems.append(f"at $.model.checkpoint: {checkpoint!r} is not listed in $.files")
    for k, image in enumerate((doc.get("golden") or {}).get("images", [])):
        if image["file"] not in files:
            problems.append(f"at $.golden.images[{k}].file: {image['file']!r} is not listed in $.files")

    for gname in GRAPH_NAMES:
        g = doc["graphs"][gname]
        where = f"$.graphs.{gname}"
        problems += _io_problems(gname, g, where, p)
        problems += _contract_problems(gname, g, where, p["crop_size"])
        problems += _profile_problems(g, where)
        for kind in ("variants", "engines"):
            for precision, entry in g[kind].items():
                if entry["file"] not in files:
                    problems.append(f"at {where}.{kind}.{precision}.file: {entry['file']!r} is not listed in $.files")
                elif entry.get("sha256") != files[entry["file"]]["sha256"]:
                    problems.append(f"at {where}.{kind}.{precision}.sha256: "
                                    f"{'differs from' if 'sha256' in entry else 'missing; it must equal'} "
                                    f"$.files[{entry['file']!r}].sha256")
                if entry["precision"] != precision:
                    problems.append(f"at {where}.{kind}.{precision}.precision: {entry['precision']!r} is not the "
                                    "entry's key")
        problems += _engine_problems(g, where, files, hashes)
    return problems


def _engine_problems(g: dict[str, Any], where: str, files: dict[str, Any], hashes: bool) -> list[str]:
    """An engine names the variant it was built from, by file and hash, and its layer information is a bundle file."""
    problems = []
    for precision, entry in g["engines"].items():
        at = f"{where}.engines.{precision}"
        variant = g["variants"].get(precision)
        if variant is None:
            problems.append(f"at {at}: there is no {precision} ONNX variant to have built it from")
        elif entry["source_onnx"] != variant["file"] or (hashes and entry["source_sha256"] != variant.get("sha256")):
            problems.append(f"at {at}.source_sha256: the engine was built from {entry['source_onnx']!r} with sha256 "
                            f"{entry['source_sha256'][:12]}…, which is not the bundle's {precision} variant "
                            f"({variant['file']!r}, {str(variant.get('sha256'))[:12]}…): the engine is stale")
        layers = entry.get("layer_information")
        if layers is not None and layers not in files:
            problems.append(f"at {at}.layer_information: {layers!r} is not listed in $.files")
        if entry.get("lean_runtime") not in LEAN_RUNTIME_KINDS:
            problems.append(f"at {at}.lean_runtime: {_short(repr(entry.get('lean_runtime')), 40)} is not one of "
                            f"{list(LEAN_RUNTIME_KINDS)}")
        problems += _engine_profile_problems(g, entry["profile"], f"{at}.profile")
    return problems


def _engine_profile_problems(g: dict[str, Any], profile: dict[str, Any], at: str) -> list[str]:
    """An engine's profile gives, per input of the graph, min/opt/max shapes of the input's rank in whole numbers
    (the schema only says "object"; the typed EngineEntry and the TensorRT launcher read these shapes)."""
    ranks = {t["name"]: len(t["shape"]) for t in g["inputs"]}
    problems: list[str] = []
    for name, levels in profile.items():
        if name not in ranks:
            problems.append(f"at {at}: {_short(repr(name), 40)} is not an input of the graph "
                            f"(inputs: {sorted(ranks)})")
            continue
        shapes = [levels.get(level) if isinstance(levels, dict) else None for level in ("min", "opt", "max")]
        if not all(isinstance(s, list) and len(s) == ranks[name] and all(_is_json_integer(None, d) and d >= 0
                                                                         for d in s) for s in shapes):
            problems.append(f"at {at}.{name}: needs min, opt and max shapes of rank {ranks[name]} in whole "
                            f"numbers, got {_short(repr(levels), 80)}")
    return problems


def _pipeline_problems(p: dict[str, Any]) -> list[str]:
    """Bounds and consistency of the numbers the runtime allocates and computes from."""
    problems: list[str] = []
    steps, crop, multiple = p["steps"], p["crop_size"], p["size_multiple"]
    if steps > MAX_STEPS:
        problems.append(f"at $.pipeline.steps: {steps} steps, at most {MAX_STEPS} are supported")
    if multiple > MAX_SIZE_MULTIPLE or multiple & (multiple - 1):
        problems.append(f"at $.pipeline.size_multiple: {multiple} is not a power of two up to {MAX_SIZE_MULTIPLE} "
                        f"(the U-Net halves the image once per level)")
    if crop > MAX_CROP_SIZE:
        problems.append(f"at $.pipeline.crop_size: {crop} is larger than the supported {MAX_CROP_SIZE}")
    elif crop % multiple:
        problems.append(f"at $.pipeline.crop_size: {crop} is not a multiple of size_multiple {multiple}")
    elif steps <= MAX_STEPS and (bank := (steps + 1) * 3 * crop * crop * 4) > MAX_NOISE_BANK_BYTES:
        problems.append(f"at $.pipeline: {steps} steps at crop size {crop} need a {bank / 2**30:.1f} GiB noise bank, "
                        f"more than the supported {MAX_NOISE_BANK_BYTES / 2**30:.0f} GiB")
    try:
        grid_size(p["crops"])  # the schema's pattern already holds: only N can be out of range
    except ConfigError:
        problems.append(f"at $.pipeline.crops: {_short(p['crops'], 40)} has more than the supported "
                        f"{MAX_GRID} x {MAX_GRID} crops")
    bad_gamma = [i for i, v in enumerate(p["gamma"]) if not _finite(v, _FLOAT32_MAX)]
    if bad_gamma:
        problems.append(f"at $.pipeline.gamma[{bad_gamma[0]}]: not a finite float32 value "
                        f"({len(bad_gamma)} such entries)")
    for i, row in enumerate(p["coef"]):
        if len(row) != COEF_WIDTH:
            problems.append(f"at $.pipeline.coef[{i}]: {len(row)} columns, coef_names has {COEF_WIDTH}")
            break
        if not all(_finite(v, _FLOAT32_MAX) for v in row):
            problems.append(f"at $.pipeline.coef[{i}]: not all finite float32 values")
            break
    for key in ("vcg_weight", "vda_weight"):
        if not _finite(p["fusion"][key]):
            problems.append(f"at $.pipeline.fusion.{key}: not a finite number")
    return problems + _test_vector_problems(p)


def _test_vector_problems(p: dict[str, Any]) -> list[str]:
    """The noise test vectors describe the bank the pipeline derives: rows 0..steps of shape (3, crop, crop). A port
    recomputes every row they list (diffv2iqa-score --check-golden), so a shape or row count of another pipeline
    would make it compute a bank of that size (a [4096, 4096, 4096] shape: 200 GB) instead of the bundle's."""
    problems: list[str] = []
    tv, steps, crop = p["noise"]["test_vectors"], p["steps"], p["crop_size"]
    at = "at $.pipeline.noise.test_vectors"
    if tv["shape"] != [3, crop, crop]:
        problems.append(f"{at}.shape: {_short(str(tv['shape']), 60)} is not the shape of a noise row at the "
                        f"pipeline's crop size, [3, {crop}, {crop}] (3 x crop_size x crop_size)")
    if len(tv["row_sha256"]) != steps + 1:
        problems.append(f"{at}.row_sha256: {len(tv['row_sha256'])} row hashes, the noise bank of {steps} steps has "
                        f"{steps + 1} rows (0 to steps)")
    bad = [key for key in tv["first8_bits"] if not re.fullmatch(r"0|[1-9][0-9]{0,5}", key) or int(key) > steps]
    if bad:
        problems.append(f"at $.pipeline.noise.test_vectors.first8_bits: key {_short(repr(bad[0]), 40)} is not a row "
                        f"number of the bank (0 to {steps}, in decimal)")
    return problems


def _contract_problems(gname: str, g: dict[str, Any], where: str, crop: int) -> list[str]:
    """Each described tensor against the runtime contract: dtype, rank and the dimensions the contract fixes (a
    symbolic dimension in the manifest is allowed; the ONNX file itself is compared when a session is created)."""
    problems: list[str] = []
    spec = graph_spec(gname, crop)
    wanted: dict[str, TensorSpec] = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for kind in ("inputs", "outputs"):
        for t in g[kind]:
            want = wanted.get(t["name"])
            if want is None:
                continue
            shape = t["shape"]
            if t["dtype"] != want.dtype:
                problems.append(f"at {where}.{kind}: {t['name']} is {t['dtype']}, the runtime contract says "
                                f"{want.dtype}")
            if len(shape) != len(want.shape):
                problems.append(f"at {where}.{kind}: {t['name']} has rank {len(shape)} ({shape}), the runtime "
                                f"contract says rank {len(want.shape)} ({list(want.shape)})")
                continue
            for axis, (got, need) in enumerate(zip(shape, want.shape, strict=True)):
                # Spatial sizes of the branch graphs are reported with crop_size below; coef's width likewise.
                reported = (gname in BRANCH_GRAPHS and axis >= 2) or (t["name"] == COEF and axis == 1)
                if isinstance(got, int) and isinstance(need, int) and got != need and not reported:
                    problems.append(f"at {where}.{kind}: {t['name']} axis {axis} is {got}, the runtime contract "
                                    f"says {need} ({list(want.shape)})")
    return problems


def _io_problems(gname: str, g: dict[str, Any], where: str, pipeline: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for kind, required, exact in (("inputs", GRAPH_INPUTS[gname], True), ("outputs", GRAPH_OUTPUTS[gname], False)):
        names = [t["name"] for t in g[kind]]
        if len(set(names)) != len(names):
            problems.append(f"at {where}.{kind}: duplicate tensor names {names}")
        missing = [n for n in required if n not in names]
        extra = [n for n in names if n not in required] if exact else []
        if missing or extra:
            problems.append(f"at {where}.{kind}: the {gname} graph must have {kind} {list(required)}"
                            f"{'' if exact else ' (others allowed)'}; missing {missing}, unexpected {extra}")
    inputs = {t["name"]: t["shape"] for t in g["inputs"]}
    # Fixed dimensions that contradict the pipeline would only fail at run time, far from the cause.
    if gname == RESTORE_STEP and COEF in inputs:
        k = inputs[COEF][-1] if inputs[COEF] else None
        if isinstance(k, int) and k != len(pipeline["coef_names"]):
            problems.append(f"at {where}.inputs: {COEF} has {k} columns, pipeline.coef_names has "
                            f"{len(pipeline['coef_names'])}")
    if gname in BRANCH_GRAPHS:
        crop = pipeline["crop_size"]
        for name, shape in inputs.items():
            fixed = [d for d in shape[-2:] if isinstance(d, int)]
            if len(shape) >= 2 and any(d != crop for d in fixed):
                problems.append(f"at {where}.inputs: {name} has spatial size {shape[-2:]}, "
                                f"but pipeline.crop_size is {crop}")
    return problems


def _profile_problems(g: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    shapes = {t["name"]: t["shape"] for t in g["inputs"]}
    prof = g["profiles"]
    named = set(prof["min"]) | set(prof["opt"]) | set(prof["max"])
    for name in sorted(named - set(shapes)):
        problems.append(f"at {where}.profiles: {name!r} is not an input of the graph (inputs: {sorted(shapes)})")
    for name in sorted(set(shapes) & named):
        got = {level: prof[level].get(name) for level in ("min", "opt", "max")}
        absent = [level for level, dims in got.items() if dims is None]
        if absent:
            problems.append(f"at {where}.profiles: input {name!r} lacks {'/'.join(absent)} shapes")
            continue
        shape = shapes[name]
        if any(len(dims) != len(shape) for dims in got.values()):
            problems.append(f"at {where}.profiles: input {name!r} has rank {len(shape)} ({shape}), "
                            f"profile shapes {got}")
            continue
        for axis, dim in enumerate(shape):
            lo, opt, hi = (got[level][axis] for level in ("min", "opt", "max"))
            if isinstance(dim, int) and not lo == opt == hi == dim:
                problems.append(f"at {where}.profiles: input {name!r} axis {axis} is fixed at {dim}, "
                                f"profile says {lo}/{opt}/{hi}")
            elif not lo <= opt <= hi:
                problems.append(f"at {where}.profiles: input {name!r} axis {axis}: min {lo} <= opt {opt} <= max {hi} "
                                f"does not hold")
    # TensorRT needs a profile for every input with a dynamic dimension.
    for name, shape in shapes.items():
        if name not in named and any(isinstance(d, str) for d in shape):
            problems.append(f"at {where}.profiles: input {name!r} has dynamic shape {shape} but no min/opt/max shapes")
    return problems


def check_header(doc: Any, *, source: str | os.PathLike[str] | None = None) -> None:
    """Refuse a document that is not a bundle manifest of this schema version, before any detailed validation, so
    that a manifest from another toolkit release gets a message about versions rather than a list of schema errors."""
    src = Path(source) if source is not None else None
    where = f"{src}" if src is not None else "the manifest"
    if not isinstance(doc, dict):
        raise BundleError(f"{where} is not a JSON object (got {type(doc).__name__}): {REBUILD}", path=src)
    if doc.get("schema") != SCHEMA_NAME:
        raise BundleError(f"{where} is not a diffv2iqa-trt bundle manifest (\"schema\" is {doc.get('schema')!r}, "
                          f"expected {SCHEMA_NAME!r}): point to a bundle directory written by "
                          f"`diffv2iqa-trt build`, or {REBUILD}", path=src)
    version = doc.get("schema_version")
    if isinstance(version, float) and version in (*RETIRED_VERSIONS, SCHEMA_VERSION):
        raise BundleError(f"{where}: \"schema_version\" is {version!r}, not an integer "
                          f"{_WHOLE_NUMBER_HINT}; {REBUILD}", path=src)
    if version in RETIRED_VERSIONS and not isinstance(version, bool):
        raise BundleError(f"{where}: bundle schema version {version}: {RETIRED_VERSIONS[version]}; rebuild it with "
                          f"this toolkit: `diffv2iqa-trt build` (then `build --from-bundle` for precision variants "
                          f"and engines)", path=src)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise BundleError(f"{where}: bundle schema version {version!r}, this toolkit reads version {SCHEMA_VERSION}: "
                          f"rebuild the bundle with this toolkit's `diffv2iqa-trt build` or use the toolkit release "
                          f"that wrote it", path=src)


def validate_manifest(doc: Any, *, source: str | os.PathLike[str] | None = None, hint: str = REBUILD,
                      hashes: bool = True) -> None:
    """Raise BundleError unless `doc` (parsed JSON) is a valid manifest of this schema version.

    Checks the schema name and version, the document's size (MAX_MANIFEST_VALUES values, MAX_MANIFEST_DEPTH deep),
    then the JSON Schema, then the cross-field rules: gamma/coef have `steps` finite float32 rows of COEF_WIDTH
    columns, the two capture steps are distinct and lie in the schedule, steps, crop size (a multiple of the size
    multiple, itself a power of two), crop grid and noise bank stay within the MAX_* bounds, fusion weights are
    finite, every variant, engine and checkpoint file is in files, profiles name real inputs and bound every dynamic
    one, and graph I/O follows the runtime contract (names, dtypes, ranks, fixed dimensions, branch crops of
    crop_size), every engine was built from its graph's variant of the same precision (file and sha256), and the
    noise test vectors describe the pipeline's bank (shape [3, crop_size, crop_size], steps + 1 row hashes, first8
    keys that are row numbers). Where the schema says integer, a float (12.0, 1e3) is refused, as the C++ reader does.
    `source` names the file in messages; `hint` is the advice appended to them; `hashes=False` skips comparing
    hashes (for a writer whose files are not hashed yet).
    """
    src = Path(source) if source is not None else None
    where = f"{src}" if src is not None else "the manifest"
    check_header(doc, source=source)
    if (too_big := _size_problem(doc)) is not None:
        raise BundleError(f"{where} is not a valid bundle manifest ({hint}): {too_big}", path=src, problems=[too_big])
    problems = _schema_problems(doc)
    if not problems:
        problems = _semantic_problems(doc, hashes)
    if problems:
        shown = problems[:_MAX_ERRORS]
        more = f"\n  … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise BundleError(f"{where} is not a valid bundle manifest ({hint}):\n  " + "\n  ".join(shown) + more,
                          path=src, problems=problems)

"""The bundle format: manifest schema and semantic checks, atomic writes, refusals at load."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from diffv2iqa_trt.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    load_bundle,
    manifest_schema,
    sha256_file,
    validate_manifest,
    write_bundle,
)
from diffv2iqa_trt.bundle import store as store_module
from diffv2iqa_trt.bundle.manifest import Manifest
from diffv2iqa_trt.bundle.schema import _relpath_problem
from diffv2iqa_trt.bundle.summary import bundle_summary
from diffv2iqa_trt.config import ModelConfig, tiny_config
from diffv2iqa_trt.contract import COEF_NAMES
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.runtime.noise import GENERATOR, row_test_vectors
from diffv2iqa_trt.runtime.resize import RESIZE

STEPS = 12
CROP = 64
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "bundle" / "manifest.schema.json"


def _tensor(name: str, shape: list[int | str], dtype: str = "float32") -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def _profiles(shapes: dict[str, tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
    return {level: {name: s[i] for name, s in shapes.items()} for i, level in enumerate(("min", "opt", "max"))}


def _graph(name: str, precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    img: list[int | str] = ["B", 3, "H", "W"]
    if name == "restore_step":
        inputs = [_tensor("x", img), _tensor("y", img), _tensor("gamma", ["B"]), _tensor("coef", ["B", 5]),
                  _tensor("z", [1, 3, "H", "W"])]
        outputs = [_tensor("y_next", img)]
        lo, opt, hi = [1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 256, 256]
        profiles = _profiles({"x": (lo, opt, hi), "y": (lo, opt, hi), "gamma": ([1], [4], [8]),
                              "coef": ([1, 5], [4, 5], [8, 5]),
                              "z": ([1, 3, 64, 64], [1, 3, 64, 64], [1, 3, 256, 256])})
    else:
        crop: list[int | str] = ["B", 3, CROP, CROP]
        inputs = [_tensor(n, crop) for n in ("x", "y0", "y_t1", "y_t2")]
        outputs = [_tensor("score", ["B"])]
        profiles = _profiles({n: ([1, 3, CROP, CROP], [8, 3, CROP, CROP], [32, 3, CROP, CROP])
                              for n in ("x", "y0", "y_t1", "y_t2")})
    return {
        "inputs": inputs,
        "outputs": outputs,
        "profiles": profiles,
        "variants": {p: {"file": f"{name}.{p}.onnx", "opset": 17} for p in precisions},
        "engines": {},
    }


def make_manifest() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "model": {"name": "tiny", "config": tiny_config().to_dict(), "trained": False,
                  "description": "tiny preset, random weights (seed 0)", "checkpoint_sha256": None},
        "pipeline": {
            "steps": STEPS, "capture_t1": 2, "capture_t2": 4,
            "gamma": rng.uniform(0.0, 1.0, STEPS).astype(np.float32),  # numpy on purpose: write_bundle converts
            "coef": rng.normal(size=(STEPS, 5)).tolist(),
            "coef_names": list(COEF_NAMES),
            "noise": {"generator": GENERATOR, "seed": 0, "test_vectors": row_test_vectors(0, STEPS, CROP, CROP)},
            "resize": RESIZE,
            "crop_size": CROP, "size_multiple": 16, "crops": "center", "mode": "crops",
            "fusion": {"vcg_weight": 0.5, "vda_weight": 0.5},
            "normalisation": {"formula": "(v / 255 - 0.5) / 0.5", "divisor": 255, "mean": 0.5, "std": 0.5},
            "uint8_roundtrip": True,
        },
        "graphs": {"restore_step": _graph("restore_step", ("fp32", "fp16")), "vcg": _graph("vcg"),
                   "vda": _graph("vda", ("fp32", "int8"))},
        "environment": {"python": "3.11", "torch": "2.13.0", "tensorrt": None},
        "lint": None,
        "parity": {"max_abs_score_diff": 1e-6},
    }


def fake_files(manifest: dict[str, Any], where: Path) -> dict[str, Path]:
    """Random bytes stand in for ONNX files: the bundle layer never parses them."""
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    files = {}
    for g in manifest["graphs"].values():
        for v in g["variants"].values():
            path = where / v["file"]
            path.write_bytes(rng.bytes(int(rng.integers(100, 2000))))
            files[v["file"]] = path
    return files


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture()
def built(tmp_path: Path) -> Bundle:
    manifest = make_manifest()
    out = write_bundle(tmp_path / "bundle", manifest, fake_files(manifest, tmp_path / "src"))
    return load_bundle(out)


# ---------------------------------------------------------------------------------------------------------- round trip


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    manifest = make_manifest()
    original = copy.deepcopy(manifest)
    files = fake_files(manifest, tmp_path / "src")
    out = write_bundle(tmp_path / "bundle", manifest, files)
    assert out == tmp_path / "bundle"
    assert manifest.keys() == original.keys() and "files" not in manifest  # the caller's dict is untouched

    b = load_bundle(out)
    assert b.root == out and b.model_name == "tiny" and not b.trained
    assert b.manifest.schema_version == SCHEMA_VERSION and b.manifest.toolkit_version == "0.1.0"
    assert b.manifest.pipeline.gamma == pytest.approx(original["pipeline"]["gamma"].tolist())
    assert ModelConfig.from_dict(dict(b.manifest.model.config)) == tiny_config()  # JSON lists rebuild the tuples
    assert sorted(b.manifest.files) == sorted(files)
    for name, src in files.items():
        assert b.manifest.files[name].to_dict() == {"sha256": sha256_file(src), "bytes": src.stat().st_size}
        assert (out / name).read_bytes() == src.read_bytes()
        assert src.exists()  # copied, not moved
    assert b.precisions("restore_step") == ("fp32", "fp16")
    assert b.precisions("vda") == ("fp32", "int8")
    assert b.onnx_path("vda", "int8") == out / "vda.int8.onnx"
    assert b.onnx_path("vcg") == out / "vcg.fp32.onnx"
    assert b.graph("vcg").output_names == ("score",)
    assert load_bundle(out / MANIFEST_NAME).manifest == b.manifest  # the manifest path works too
    assert leftovers(tmp_path) == []


def test_manifest_validates_against_shipped_schema(built: Bundle) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads((built.root / MANIFEST_NAME).read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert manifest_schema() == schema  # the packaged copy is the file in the source tree


def test_typed_manifest_round_trips_the_written_json(built: Bundle) -> None:
    doc = json.loads((built.root / MANIFEST_NAME).read_text())
    typed = Manifest.from_dict(doc)
    assert typed.to_dict() == doc  # nothing dropped or renamed by the typed view
    assert typed.graphs["restore_step"].profiles.max["x"] == (8, 3, 256, 256)
    assert typed.pipeline.coef_names == COEF_NAMES and len(typed.pipeline.coef) == STEPS


def test_summary_is_human_oriented(built: Bundle) -> None:
    s = bundle_summary(built)
    assert s["model"] == "tiny" and any("UNTRAINED" in w for w in s["warnings"])
    assert s["pipeline"]["fusion"] == "0.5 * vcg + 0.5 * vda"
    assert s["graphs"]["restore_step"]["inputs"][0] == "x: float32[B, 3, H, W]"
    assert s["graphs"]["vda"]["onnx"] == {"fp32": "vda.fp32.onnx", "int8": "vda.int8.onnx"}
    assert s["files"]["count"] == 5 and s["files"]["bytes"] == sum(f.bytes for f in built.manifest.files.values())
    json.dumps(s)  # printable as JSON by `inspect --json`


def test_helpers_refuse_unknown_names(built: Bundle) -> None:
    with pytest.raises(ConfigError, match="unknown graph 'unet'"):
        built.graph("unet")
    with pytest.raises(BundleError, match="no fp16 ONNX variant .* has fp32"):
        built.onnx_path("vcg", "fp16")
    with pytest.raises(BundleError, match="no fp16 TensorRT engine"):
        built.engine_path("vcg", "fp16")
    with pytest.raises(BundleError, match="not a file of the bundle"):
        built.file_path("other.onnx")


def engine_entry(manifest: dict[str, Any], files: dict[str, Path], graph: str, precision: str) -> dict[str, Any]:
    """An engine entry as engine/bundle_engines.py writes it (with made-up build facts: no engine is built here)."""
    variant = manifest["graphs"][graph]["variants"][precision]["file"]
    return {"file": f"engines/{graph}.{precision}.plan", "tensorrt": "10.13.0.35", "gpu": "NVIDIA H100", "sm": "9.0",
            "precision": precision, "source_onnx": variant, "source_sha256": sha256_file(files[variant]),
            "version_compatible": False, "flags": {"strongly_typed": True, "opt_level": 3},
            "device_memory_bytes": 123, "profile": {}, "build_seconds": 1.5, "census": {}, "cuda": "12.8"}


def test_engines_checkpoint_and_extra_files(tmp_path: Path) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    manifest["graphs"]["restore_step"]["engines"] = {"fp16": engine_entry(manifest, files, "restore_step", "fp16")}
    (tmp_path / "src" / "e.plan").write_bytes(b"engine")
    files["engines/restore_step.fp16.plan"] = tmp_path / "src" / "e.plan"
    manifest["model"] |= {"checkpoint": "model.safetensors", "init_seed": None}
    (tmp_path / "src" / "m.safetensors").write_bytes(b"weights")
    files["model.safetensors"] = tmp_path / "src" / "m.safetensors"
    b = load_bundle(write_bundle(tmp_path / "b", manifest, files))
    assert b.manifest.model.checkpoint is not None
    assert b.file_path(b.manifest.model.checkpoint).read_bytes() == b"weights"
    assert b.engine_path("restore_step", "fp16") == b.root / "engines" / "restore_step.fp16.plan"
    entry = b.engine("restore_step", "fp16")
    assert entry.extra["cuda"] == "12.8" and entry.sm == "9.0"
    assert entry.sha256 == hashlib.sha256(b"engine").hexdigest()  # stamped from the file by write_bundle
    assert entry.extra == {"cuda": "12.8"} and entry.device_memory_bytes == 123 and entry.flags["opt_level"] == 3
    assert "H100" in str(bundle_summary(b)["graphs"]["restore_step"]["engines"]["fp16"])
    (b.root / "notes.txt").write_text("unexpected files are fine")
    load_bundle(b.root)


def test_refuses_stale_or_orphan_engines(tmp_path: Path) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    (tmp_path / "src" / "e.plan").write_bytes(b"engine")
    files["engines/restore_step.fp16.plan"] = tmp_path / "src" / "e.plan"
    stale = engine_entry(manifest, files, "restore_step", "fp16") | {"source_sha256": "ab" * 32}
    manifest["graphs"]["restore_step"]["engines"] = {"fp16": stale}
    with pytest.raises(BundleError, match=r"engines\.fp16\.source_sha256: .*the engine is stale"):
        write_bundle(tmp_path / "stale", manifest, files)
    orphan = engine_entry(manifest, files, "restore_step", "fp16") | {"precision": "int8"}
    manifest["graphs"]["restore_step"]["engines"] = {"int8": orphan}
    with pytest.raises(BundleError, match=r"engines\.int8: there is no int8 ONNX variant"):
        write_bundle(tmp_path / "orphan", manifest, files)
    assert not (tmp_path / "stale").exists() and not (tmp_path / "orphan").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"profile": {"x": {"min": [1, 3, 64, 64], "max": [16, 3, 64, 64]}}},
     r"engines\.fp16\.profile\.x: needs min, opt and max shapes of rank 4"),
    ({"profile": {"x": {"min": [1], "opt": [8], "max": [16]}}}, r"profile\.x: needs min, opt and max shapes of rank 4"),
    ({"profile": {"x": {"min": [1, 3, 64, 64.0], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}},
     r"profile\.x: needs .* whole numbers"),
    ({"profile": {"w": {"min": [1], "opt": [1], "max": [1]}}}, r"profile: 'w' is not an input of the graph"),
    ({"lean_runtime": "inside"}, r"engines\.fp16\.lean_runtime: 'inside' is not one of \[None, 'embedded'"),
])
def test_refuses_engine_entries_the_typed_entry_cannot_read(tmp_path: Path, change: dict[str, Any],
                                                            message: str) -> None:
    """The profile and lean_runtime fields decide how an engine is run: the schema says only "object" for the
    profile, so the cross-field rules refuse shapes the typed EngineEntry (and the TensorRT launcher) cannot read."""
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    (tmp_path / "src" / "e.plan").write_bytes(b"engine")
    files["engines/restore_step.fp16.plan"] = tmp_path / "src" / "e.plan"
    manifest["graphs"]["restore_step"]["engines"] = {"fp16": engine_entry(manifest, files, "restore_step", "fp16")
                                                     | change}
    with pytest.raises(BundleError, match=message):
        write_bundle(tmp_path / "bad", manifest, files)


# ------------------------------------------------------------------------------------------------------ load refusals


def test_refuses_altered_file(built: Bundle) -> None:
    path = built.root / "vcg.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="vcg.fp32.onnx has sha256 .* altered") as e:
        load_bundle(built.root)
    assert e.value.path == path
    load_bundle(built.root, verify_hashes=False)  # same size: only the hash sees it


def test_refuses_truncated_file(built: Bundle) -> None:
    path = built.root / "restore_step.fp16.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"restore_step\.fp16\.onnx is \d+ bytes, the manifest says \d+: "
                                              "the file is truncated"):
            load_bundle(built.root, verify_hashes=verify)


def test_refuses_missing_file(built: Bundle) -> None:
    (built.root / "vda.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"vda\.int8\.onnx is missing") as e:
        load_bundle(built.root)
    assert e.value.path == built.root / "vda.int8.onnx"
    assert "diffv2iqa-trt build" in str(e.value)


def test_refuses_missing_dir_and_manifest(tmp_path: Path, built: Bundle) -> None:
    with pytest.raises(BundleError, match="no bundle at .*nowhere: the directory does not exist"):
        load_bundle(tmp_path / "nowhere")
    (built.root / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing: .* not a complete bundle") as e:
        load_bundle(built.root)
    assert e.value.path == built.root / MANIFEST_NAME


@pytest.mark.parametrize("text, why", [
    ('{"schema": "diffv2iqa-trt-bundle",', "line 1, column"),
    ("", "line 1, column 1"),
    ('{"schema": "a", "schema": "b"}', "duplicate key 'schema'"),
    ('{"x": NaN}', "NaN is not valid JSON"),
])
def test_refuses_unparseable_manifest(built: Bundle, text: str, why: str) -> None:
    (built.root / MANIFEST_NAME).write_text(text)
    with pytest.raises(BundleError, match=rf"manifest\.json is not valid JSON \(.*{re.escape(why)}") as e:
        load_bundle(built.root)
    assert e.value.path == built.root / MANIFEST_NAME


def _edit_manifest(root: Path, edit: Any) -> None:
    path = root / MANIFEST_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("version", [1, 2, 5])
def test_refuses_other_schema_version(built: Bundle, version: int) -> None:
    # 1: a bundle of an old release (its normalisation scale/offset were 1 ulp off the runtime's); 5: the future.
    _edit_manifest(built.root, lambda d: d.update(schema_version=version, new_field="from elsewhere"))
    with pytest.raises(BundleError) as e:
        load_bundle(built.root)
    msg = str(e.value)
    assert str(built.root / MANIFEST_NAME) in msg
    assert (f"bundle schema version {version}, this toolkit reads version {SCHEMA_VERSION}: rebuild the bundle with "
            "this toolkit's `diffv2iqa-trt build` or use the toolkit release that wrote it") in msg


def test_refuses_version_3_with_the_reason_and_the_rebuild(built: Bundle) -> None:
    _edit_manifest(built.root, lambda d: d.update(schema_version=3))
    with pytest.raises(BundleError) as e:
        load_bundle(built.root)
    msg = str(e.value)
    assert "bundle schema version 3: its scores come from the retired NumPy noise bank and Pillow's resize" in msg
    assert "rebuild it with this toolkit: `diffv2iqa-trt build`" in msg


def test_refuses_other_schema_name(built: Bundle) -> None:
    _edit_manifest(built.root, lambda d: d.update(schema="something-else"))
    with pytest.raises(BundleError, match=r"manifest\.json is not a diffv2iqa-trt bundle manifest"):
        load_bundle(built.root)
    (built.root / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(BundleError, match=r"manifest\.json is not a JSON object"):
        load_bundle(built.root)


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value(doc[last]) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit, where", [
    (_set("pipeline.crops", "random"), "$.pipeline.crops"),
    (_set("pipeline.noise.seed", -1), "$.pipeline.noise.seed"),
    (_set("pipeline.mode", "fast"), "$.pipeline.mode"),
    (_set("pipeline.gamma", lambda g: g[:-1]), "$.pipeline.gamma: 11 rows, but steps is 12"),
    (_set("pipeline.coef", lambda c: c + [c[0]]), "$.pipeline.coef: 13 rows"),
    (_set("pipeline.capture_t2", STEPS), "$.pipeline.capture_t2: step 12 is outside the 12-step schedule"),
    (_set("pipeline.capture_t1", 0), "$.pipeline.capture_t1"),
    (_set("pipeline.coef_names", lambda n: n[:4]), "$.pipeline.coef_names"),
    (_set("created", "yesterday"), "$.created"),
    (_set("model.checkpoint_sha256", "abc"), "$.model.checkpoint_sha256"),
    (_set("graphs.vcg.variants.fp32.file", "elsewhere.onnx"), "'elsewhere.onnx' is not listed in $.files"),
    (_set("graphs.vcg.variants", {"fp64": {"file": "vcg.fp32.onnx", "opset": 17}}), "$.graphs.vcg.variants"),
    (_set("graphs.vda.profiles.min.w", [1]), "'w' is not an input of the graph"),
    (_set("graphs.vda.profiles.opt", {}), "input 'x' lacks opt shapes"),
    (_set("graphs.vda.profiles.max.x", [4, 3, CROP, CROP]), "min 1 <= opt 8 <= max 4 does not hold"),
    (_set("graphs.vda.profiles.max.x", [32, 3, 128, CROP]), "axis 2 is fixed at 64, profile says 64/64/128"),
    (_set("graphs.restore_step.inputs", lambda i: i[:-1]), "missing ['z']"),
    (_set("graphs.vcg.outputs", [{"name": "quality", "dtype": "float32", "shape": ["B"]}]), "missing ['score']"),
    (_set("graphs", lambda g: {k: v for k, v in g.items() if k != "vda"}), "'vda' is a required property"),
    (_set("files", lambda f: f | {"../escape.onnx": next(iter(f.values()))}), "$.files"),
    (_set("environment", {"gpu": 3}), "$.environment.gpu"),
    (_set("model.checkpoint", "model.safetensors"), "$.model.checkpoint: 'model.safetensors' is not listed"),
    (_set("model.init_seed", -3), "$.model.init_seed"),
    (_set("pipeline.extra", 1), "Additional properties are not allowed ('extra'"),
    (_set("pipeline.coef_names", lambda n: list(reversed(n))), "is not the restore_step contract's"),
    (_set("pipeline.normalisation.std", 0.25), "differ from the only supported 255.0/0.5/0.5"),
    (_set("pipeline.normalisation", {"formula": "x", "scale": 2 / 255, "offset": -1.0}), "$.pipeline.normalisation"),
])
def test_refuses_invalid_manifest(built: Bundle, edit: Any, where: str) -> None:
    _edit_manifest(built.root, edit)
    with pytest.raises(BundleError) as e:
        load_bundle(built.root)
    msg = str(e.value)
    assert msg.startswith(f"{built.root / MANIFEST_NAME} is not a valid bundle manifest (rebuild the bundle with "
                          "`diffv2iqa-trt build`)")
    assert where in msg, msg
    assert e.value.problems


def test_validate_manifest_in_memory(built: Bundle) -> None:
    validate_manifest(built.manifest.to_dict())
    doc = built.manifest.to_dict()
    doc["pipeline"]["gamma"] = [float(x) for x in range(100)]
    with pytest.raises(BundleError, match="the manifest is not a valid bundle manifest") as e:
        validate_manifest(doc)
    assert e.value.path is None


def test_relpath_rules_match_schema() -> None:
    pattern = manifest_schema()["$defs"]["relpath"]["pattern"]
    names = ["a.onnx", "sub/a.onnx", ".hidden", "..a", "a..", "/abs", "../a", "a/../b", "a/./b", "./a", "a\\b",
             "a//b", "a/", "..", "manifest.json"]
    for name in names:
        schema_ok = re.search(pattern, name) is not None
        # The schema cannot say "not manifest.json at top level"; Python checks it as well.
        assert schema_ok == (_relpath_problem(name) is None or name == "manifest.json"), name


# ------------------------------------------------------------------------------------------------------------- writes


def test_refuses_existing_out_dir_unless_overwrite(tmp_path: Path, built: Bundle) -> None:
    manifest = make_manifest()
    manifest["model"]["description"] = "second build"
    files = fake_files(manifest, tmp_path / "src2")
    with pytest.raises(BundleError, match="bundle already exists; choose another output directory or allow "
                                          "overwriting") as e:
        write_bundle(built.root, manifest, files)
    assert e.value.path == built.root
    assert load_bundle(built.root).manifest.model.description != "second build"

    write_bundle(built.root, manifest, files, overwrite=True)
    assert load_bundle(built.root).manifest.model.description == "second build"
    assert leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_non_bundle(tmp_path: Path) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="is not a bundle .* refusing to replace it"):
        write_bundle(precious, manifest, files, overwrite=True)
    assert (precious / "thesis.tex").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        write_bundle(tmp_path / "afile", manifest, files, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    load_bundle(write_bundle(empty, manifest, files, overwrite=True))


def test_relative_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    monkeypatch.chdir(tmp_path / "src")
    assert write_bundle("../rel", manifest, files) == tmp_path / "rel"
    assert load_bundle("../rel").root == Path("../rel")
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(".", manifest, files)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    out = tmp_path / "bundle"

    with pytest.raises(BundleError, match=r"source file .*nope\.onnx \(for 'vcg\.fp32\.onnx'\) does not exist"):
        write_bundle(out, manifest, files | {"vcg.fp32.onnx": tmp_path / "nope.onnx"})
    bad = make_manifest()
    bad["pipeline"]["crops"] = "random"
    with pytest.raises(BundleError, match=r"(?s)bundle/manifest\.json is not a valid bundle manifest \(fix the "
                                          r"manifest given to write_bundle.*\$\.pipeline\.crops"):
        write_bundle(out, bad, files)
    with pytest.raises(BundleError, match=r"'vda\.int8\.onnx' is not listed in \$\.files"):
        write_bundle(out, manifest, {k: v for k, v in files.items() if k != "vda.int8.onnx"})
    with pytest.raises(BundleError, match="bad file name"):
        write_bundle(out, manifest, files | {"../up.onnx": files["vcg.fp32.onnx"]})
    with pytest.raises(BundleError, match="cannot be written as JSON"):
        write_bundle(out, manifest | {"parity": {"x": float("nan")}}, files)
    assert not out.exists() and leftovers(tmp_path) == []


def test_failure_mid_copy_cleans_up_and_keeps_old_bundle(tmp_path: Path, built: Bundle,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src2")
    real = store_module._copy_hashing
    calls = []

    def flaky(src: Path, dst: Path) -> str:
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store_module, "_copy_hashing", flaky)
    before = (built.root / MANIFEST_NAME).read_bytes()
    for out, overwrite in ((tmp_path / "fresh", False), (built.root, True)):
        calls.clear()
        with pytest.raises(OSError, match="No space left"):
            write_bundle(out, manifest, files, overwrite=overwrite)
    assert not (tmp_path / "fresh").exists()
    assert (built.root / MANIFEST_NAME).read_bytes() == before
    load_bundle(built.root)
    assert leftovers(tmp_path) == []


def test_move_and_move_back_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    contents = {name: p.read_bytes() for name, p in files.items()}

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(store_module, "_install", fail)
    with pytest.raises(OSError, match="rename failed"):
        write_bundle(tmp_path / "b", manifest, files, move=True)
    assert {name: p.read_bytes() for name, p in files.items()} == contents  # moved back
    monkeypatch.undo()

    b = load_bundle(write_bundle(tmp_path / "b", manifest, files, move=True))
    assert not any(p.exists() for p in files.values())
    assert {name: (b.root / name).read_bytes() for name in files} == contents
    assert leftovers(tmp_path) == []


def test_bundle_package_is_torch_free() -> None:
    code = "import sys, diffv2iqa_trt.bundle; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    from diffv2iqa_trt.atomic import atomic_path

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_path(tmp_path / "atomic.txt") as tmp:
        tmp.write_text("x")
    assert os.stat(tmp_path / "atomic.txt").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

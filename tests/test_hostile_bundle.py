"""A hostile bundle never escapes the bundle directory, exhausts the machine or ends in a traceback (issue 10).

Closed world (links, devices, FIFOs, external data the manifest does not list), bounded manifest reads, semantic
checks of schema-valid but inconsistent manifests, graph I/O checked against the ONNX files, crash-safe overwrites,
and a property test that feeds randomly corrupted manifests to load_bundle and to `diffv2iqa-trt inspect`.
The graphs here are tiny hand-made ONNX models that keep the runtime contract, so ONNX Runtime really runs them.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hostile_edits import point_external_data_at
from onnx import TensorProto, external_data_helper, helper, numpy_helper
from test_bundle import CROP, fake_files, leftovers, make_manifest
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import MANIFEST_NAME, Bundle, BundleError, load_bundle, read_manifest, write_bundle
from diffv2iqa_trt.bundle import schema as schema_module
from diffv2iqa_trt.bundle import store as store_module
from diffv2iqa_trt.bundle.store import BundleRecoveredWarning
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.contract import BRANCH_INPUTS
from diffv2iqa_trt.errors import BackendError
from diffv2iqa_trt.runtime.backends import create_executor
from diffv2iqa_trt.runtime.backends.onnxruntime_backend import OnnxRuntimeExecutor
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline

runner = CliRunner()
IMAGE = np.full((80, 80, 3), 120, np.uint8)
HEX16 = r"[0-9a-f]{16}"


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """Run call in a daemon thread; fail (instead of hanging the suite) if it takes longer than `seconds`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------------------------------------- tiny real graphs

F32 = TensorProto.FLOAT


def _model(name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any],
           initializers: list[Any] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=8)


def restore_model(extra: np.ndarray | None = None) -> onnx.ModelProto:
    """y_next = y + z (+ extra): keeps the restore_step contract (extra of a fixed size breaks other sizes)."""
    img: list[int | str] = ["B", 3, "H", "W"]
    inputs = [helper.make_tensor_value_info(n, F32, s) for n, s in
              (("x", img), ("y", img), ("gamma", ["B"]), ("coef", ["B", 5]), ("z", [1, 3, "H", "W"]))]
    nodes = [helper.make_node("Add", ["y", "z"], ["y_next" if extra is None else "s"])]
    inits = []
    if extra is not None:
        nodes.append(helper.make_node("Add", ["s", "extra"], ["y_next"]))
        inits.append(numpy_helper.from_array(extra.astype(np.float32), "extra"))
    return _model("restore_step", nodes, inputs, [helper.make_tensor_value_info("y_next", F32, img)], inits)


def branch_model(name: str, crop: int = CROP, *, axes: tuple[int, ...] = (1, 2, 3), weight: bool = False,
                 declared: list[int | str] | None = None) -> onnx.ModelProto:
    """score = mean(x over axes) (* w): with the default axes it keeps the branch contract (batch,)."""
    inputs = [helper.make_tensor_value_info(n, F32, ["B", 3, crop, crop]) for n in BRANCH_INPUTS]
    nodes = [helper.make_node("ReduceMean", ["x"], ["m" if weight else "score"], axes=list(axes), keepdims=0)]
    inits = []
    if weight:
        nodes.append(helper.make_node("Mul", ["m", "w"], ["score"]))
        inits.append(numpy_helper.from_array(np.array([2.0], np.float32), "w"))
    out = helper.make_tensor_value_info("score", F32, declared if declared is not None else ["B"])
    return _model(name, nodes, inputs, [out], inits)


def graph_files(manifest: dict[str, Any], where: Path, **models: onnx.ModelProto) -> dict[str, Path]:
    """Every variant file of the manifest as a real ONNX model (all precisions of a graph share one model)."""
    where.mkdir(parents=True, exist_ok=True)
    defaults = {"restore_step": restore_model(), "vcg": branch_model("vcg"), "vda": branch_model("vda")}
    files = {}
    for gname, g in manifest["graphs"].items():
        model = models.get(gname, defaults[gname])
        for v in g["variants"].values():
            path = where / v["file"]
            onnx.save(model, str(path))
            files[v["file"]] = path
    return files


@pytest.fixture()
def real(tmp_path: Path) -> Bundle:
    """A bundle of tiny real graphs that ONNX Runtime scores with."""
    manifest = make_manifest()
    return load_bundle(write_bundle(tmp_path / "real", manifest, graph_files(manifest, tmp_path / "g")))


def test_tiny_graphs_score(real: Bundle) -> None:
    scores = bundle_pipeline(real, "onnxruntime").score([IMAGE])
    assert len(scores) == 1 and np.isfinite(scores[0].score)


# ------------------------------------------------------------------------------------ 1. reading outside the bundle


@pytest.fixture()
def built(tmp_path: Path) -> Bundle:
    manifest = make_manifest()
    return load_bundle(write_bundle(tmp_path / "bundle", manifest, fake_files(manifest, tmp_path / "src")))


def _no_disclosure(message: str, secret: Path) -> None:
    """A refusal tells nothing about a file outside the bundle: no size, no hash, not its name."""
    assert str(secret.stat().st_size) not in message
    assert secret.name not in message
    assert "sha256" not in message
    assert not re.search(HEX16, message), message


def test_symlinked_graph_is_refused_without_disclosing_the_target(tmp_path: Path, built: Bundle) -> None:
    # Before: a link to an identical copy outside loaded and ran; a link to another file reported its size.
    graph = built.root / "vcg.fp32.onnx"
    twin = tmp_path / "outside-twin.onnx"
    twin.write_bytes(graph.read_bytes())
    secret = tmp_path / "secret-key.pem"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----" + bytes(range(256)) * 7)
    for target in (twin, secret):
        graph.unlink()
        graph.symlink_to(target)
        for verify in (True, False):
            with pytest.raises(BundleError, match=r"vcg\.fp32\.onnx is a symbolic link: a bundle holds its own "
                                                  r"files") as e:
                load_bundle(built.root, verify_hashes=verify)
            assert e.value.path == graph
            _no_disclosure(str(e.value), secret)
    # A file swapped for a link after loading is refused when it is used.
    graph.unlink()
    graph.symlink_to(twin)
    with pytest.raises(BundleError, match="is a symbolic link"):
        built.onnx_path("vcg")


def test_symlinked_directory_and_manifest_are_refused(tmp_path: Path) -> None:
    manifest = make_manifest()
    files = fake_files(manifest, tmp_path / "src")
    manifest["graphs"]["vcg"]["variants"]["fp32"]["file"] = "sub/vcg.fp32.onnx"
    files["sub/vcg.fp32.onnx"] = files.pop("vcg.fp32.onnx")
    root = write_bundle(tmp_path / "b", manifest, files)
    (root / "sub").rename(tmp_path / "elsewhere")
    (root / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match=r"sub/vcg\.fp32\.onnx lies under 'sub', a symbolic link"):
        load_bundle(root)
    (root / "sub").unlink()
    (tmp_path / "elsewhere").rename(root / "sub")
    load_bundle(root)

    moved = tmp_path / "manifest-elsewhere.json"
    (root / MANIFEST_NAME).rename(moved)
    (root / MANIFEST_NAME).symlink_to(moved)
    for path in (root, root / MANIFEST_NAME):
        with pytest.raises(BundleError, match=r"manifest\.json is a symbolic link") as e:
            load_bundle(path)
        assert e.value.path == root / MANIFEST_NAME
    # The bundle directory itself may be a link (e.g. /models/current -> /models/v3).
    (root / MANIFEST_NAME).unlink()
    moved.rename(root / MANIFEST_NAME)
    (tmp_path / "current").symlink_to(root)
    assert load_bundle(tmp_path / "current").manifest.model.name == "tiny"


def test_fifo_and_directory_entries_are_refused_without_waiting(built: Bundle) -> None:
    graph = built.root / "vda.int8.onnx"
    graph.unlink()
    os.mkfifo(graph)
    with pytest.raises(BundleError, match=r"vda\.int8\.onnx is a FIFO, not a regular file"):
        within(10, lambda: load_bundle(built.root))
    graph.unlink()
    graph.mkdir()
    with pytest.raises(BundleError, match=r"vda\.int8\.onnx is a directory, not a regular file"):
        load_bundle(built.root)


def _external(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save `model` with every initializer in the external file `location` (relative to the model's directory)."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)


def _bundle_with_external_vcg(tmp_path: Path, location: str, *, listed: bool) -> Bundle:
    manifest = make_manifest()
    files = graph_files(manifest, tmp_path / "g")
    _external(branch_model("vcg", weight=True), tmp_path / "g" / "vcg.fp32.onnx", "vcg.data")
    if listed:
        files["vcg.data"] = tmp_path / "g" / "vcg.data"
    root = write_bundle(tmp_path / "b", manifest, files)
    if not listed:
        shutil.copy(tmp_path / "g" / "vcg.data", root / "vcg.data")  # present, but neither listed nor hashed
    if location != "vcg.data":
        point_external_data_at(root / "vcg.fp32.onnx", location)
        manifest_doc = json.loads((root / MANIFEST_NAME).read_text())
        size = (root / "vcg.fp32.onnx").stat().st_size
        digest = store_module.sha256_file(root / "vcg.fp32.onnx")
        manifest_doc["files"]["vcg.fp32.onnx"] = {"sha256": digest, "bytes": size}
        manifest_doc["graphs"]["vcg"]["variants"]["fp32"]["sha256"] = digest
        (root / MANIFEST_NAME).write_text(json.dumps(manifest_doc))
    return load_bundle(root)


def test_external_data_must_be_listed(tmp_path: Path) -> None:
    ok = _bundle_with_external_vcg(tmp_path / "ok", "vcg.data", listed=True)
    assert ok.check_onnx_references("vcg") == ("vcg.data",)
    assert ok.check_onnx_references("vda") == ()
    assert np.isfinite(bundle_pipeline(ok, "onnxruntime").score([IMAGE])[0].score)

    # Before: ONNX Runtime read vcg.data although the manifest neither lists nor hashes it.
    unlisted = _bundle_with_external_vcg(tmp_path / "unlisted", "vcg.data", listed=False)
    with pytest.raises(BundleError, match=r"vcg\.fp32\.onnx \(the fp32 vcg graph\) loads external data from "
                                          r"'vcg\.data', which is not a file listed in .*manifest\.json"):
        unlisted.check_onnx_references("vcg")
    with pytest.raises(BundleError, match="loads external data from 'vcg.data'"):
        create_executor("onnxruntime", unlisted)

    outside = tmp_path / "outside.data"
    shutil.copy(tmp_path / "ok" / "g" / "vcg.data", outside)
    for i, location in enumerate(("../outside.data", str(outside), "sub/../vcg.data")):
        b = _bundle_with_external_vcg(tmp_path / f"loc{i}", location, listed=True)
        with pytest.raises(BundleError, match=f"loads external data from {re.escape(repr(location))}, which is not "
                                              f"a file listed"):
            b.check_onnx_references("vcg")

    # Listed, but a link to a file outside: refused like any link.
    linked = _bundle_with_external_vcg(tmp_path / "linked", "vcg.data", listed=True)
    (linked.root / "vcg.data").unlink()
    (linked.root / "vcg.data").symlink_to(outside)
    with pytest.raises(BundleError, match=r"vcg\.data is a symbolic link"):
        linked.check_onnx_references("vcg")


def test_external_data_in_a_subgraph_is_found(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.array([1.0], np.float32), "w_sub")
    external_data_helper.set_external_data(w, location="hidden.bin")
    w.ClearField("raw_data")
    branch = helper.make_graph([helper.make_node("Identity", ["w_sub"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F32, [1])], initializer=[w])
    inputs = [helper.make_tensor_value_info(n, F32, ["B", 3, CROP, CROP]) for n in BRANCH_INPUTS]
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "c")),
             helper.make_node("If", ["c"], ["k"], then_branch=branch, else_branch=branch),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["score"])]
    model = _model("vda", nodes, inputs, [helper.make_tensor_value_info("score", F32, ["B"])])
    manifest = make_manifest()
    b = load_bundle(write_bundle(tmp_path / "b", manifest, graph_files(manifest, tmp_path / "g", vda=model)))
    with pytest.raises(BundleError, match="loads external data from 'hidden.bin'"):
        b.check_onnx_references("vda", "int8")


def test_a_graph_file_that_is_not_onnx_is_a_bundle_error(built: Bundle) -> None:
    with pytest.raises(BundleError, match=r"vcg\.fp32\.onnx \(the fp32 vcg graph\) is not a readable ONNX model"):
        built.check_onnx_references("vcg")
    with pytest.raises(BundleError, match=r"ONNX Runtime cannot load the vcg graph"):
        OnnxRuntimeExecutor({"vcg": built.root / "vcg.fp32.onnx"}, {"vcg": list(BRANCH_INPUTS)}, {"vcg": "score"})


# --------------------------------------------------------------------------------------------- 2. unbounded reads


def test_manifest_fifo_link_to_device_and_deep_nesting(built: Bundle) -> None:
    path = built.root / MANIFEST_NAME
    path.unlink()
    os.mkfifo(path)  # before: open() waited forever for a writer
    with pytest.raises(BundleError, match=r"manifest\.json is a FIFO, not a regular file"):
        within(10, lambda: load_bundle(built.root))
    path.unlink()
    path.symlink_to("/dev/zero")  # before: read until the kernel killed the process
    with pytest.raises(BundleError, match=r"manifest\.json is a symbolic link"):
        within(10, lambda: load_bundle(built.root))
    with pytest.raises(BundleError, match=r"/dev/zero is a device, not a regular file"):
        within(10, lambda: read_manifest("/dev/zero"))
    path.unlink()
    path.write_text("[" * 100_000)  # before: RecursionError traceback
    with pytest.raises(BundleError, match=r"manifest\.json is not a bundle manifest: its JSON is nested too deeply"):
        load_bundle(built.root)


def test_manifest_size_is_capped(built: Bundle) -> None:
    path = built.root / MANIFEST_NAME
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(path, "r+b") as f:  # valid JSON followed by 5 MB of spaces: a reader must not take it all in
        f.seek(0, os.SEEK_END)
        f.write(b" " * (5 << 20))
    with pytest.raises(BundleError, match=rf"manifest\.json is \d+ bytes, more than a bundle manifest may have "
                                          rf"\({schema_module.MAX_MANIFEST_BYTES}\)"):
        load_bundle(built.root)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB on Linux


@pytest.mark.parametrize("where, value, why", [
    ("parity", {"free-form": json.loads("[" * 40 + "]" * 40)}, f"more than {schema_module.MAX_MANIFEST_DEPTH} deep"),
    ("lint", {"rows": [0] * (schema_module.MAX_MANIFEST_VALUES + 1)}, "more than 200000 JSON values"),
])
def test_manifest_value_count_and_depth_are_capped(built: Bundle, where: str, value: Any, why: str) -> None:
    doc = json.loads((built.root / MANIFEST_NAME).read_text())
    doc[where] = value
    (built.root / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=rf"manifest\.json is not a valid bundle manifest .*: it .*{why}"):
        within(10, lambda: load_bundle(built.root))


# ----------------------------------------------------------------------------- 3. valid-looking, inconsistent manifests


def _edit(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = root / MANIFEST_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _pipeline(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["pipeline"].update(changes)


def _vectors(steps: int, crop: int) -> dict[str, Any]:
    """Noise test vectors of the right shape and row count (the hashes are placeholders: loaders do not recompute
    them), so that an edit of steps or crop_size breaks only the rule its test is about."""
    return {"shape": [3, crop, crop], "first8_bits": {}, "row_sha256": ["0" * 64] * (steps + 1)}


def _symbolic_branches(crop: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    """crop_size `crop` with branch graphs described as taking any spatial size (so the old rules accepted it)."""
    def edit(doc: dict[str, Any]) -> None:
        doc["pipeline"].update(crop_size=crop, **changes)
        doc["pipeline"]["noise"]["test_vectors"] = _vectors(doc["pipeline"]["steps"], crop)
        for g in ("vcg", "vda"):
            for t in doc["graphs"][g]["inputs"]:
                t["shape"] = ["B", 3, "S", "S"]
            for level in doc["graphs"][g]["profiles"].values():
                for name in level:
                    level[name] = [level[name][0], 3, crop, crop]
    return edit


def _steps(n: int, crop: int = CROP) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["pipeline"].update(steps=n, gamma=[0.5] * n, coef=[[0.5] * 5] * n, crop_size=crop,
                                              noise={**doc["pipeline"]["noise"], "test_vectors": _vectors(n, crop)})


def _tensor(graph: str, index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["graphs"][graph]["inputs"][index].update(changes)


@pytest.mark.parametrize("edit, where", [
    (_pipeline(size_multiple=7), "$.pipeline.size_multiple: 7 is not a power of two up to 256"),
    (_pipeline(size_multiple=512), "$.pipeline.size_multiple: 512 is not a power of two"),
    (_pipeline(size_multiple=32, crop_size=CROP + 16), "$.pipeline.crop_size: 80 is not a multiple of size_multiple"),
    (_symbolic_branches(65536), "$.pipeline.crop_size: 65536 is larger than the supported 4096"),
    (_steps(20_000), "$.pipeline.steps: 20000 steps, at most 10000"),
    (_steps(1000, 1024), "1000 steps at crop size 1024 need a 11.7 GiB noise bank"),
    (_pipeline(crops="grid:1000"), "$.pipeline.crops: grid:1000 has more than the supported 64 x 64 crops"),
    (_pipeline(crops="grid:" + "9" * 5000), "$.pipeline.crops: grid:999"),
    (_pipeline(capture_t1=3, capture_t2=3), "$.pipeline.capture_t2: the two snapshots must come from distinct steps"),
    (lambda d: d["pipeline"]["gamma"].__setitem__(3, 1e39), "$.pipeline.gamma[3]: not a finite float32 value"),
    (lambda d: d["pipeline"]["gamma"].__setitem__(0, 10**400), "$.pipeline.gamma[0]: not a finite float32 value"),
    (lambda d: d["pipeline"]["coef"][5].__setitem__(1, -1e300), "$.pipeline.coef[5]: not all finite float32"),
    (_pipeline(fusion={"vcg_weight": 10**400, "vda_weight": 0.5}), "$.pipeline.fusion.vcg_weight: not a finite"),
    (_tensor("vcg", 0, dtype="float16"), "$.graphs.vcg.inputs: x is float16, the runtime contract says float32"),
    (_tensor("vda", 1, shape=["B", 3, CROP]), "y0 has rank 3 (['B', 3, 64]), the runtime contract says rank 4"),
    (_tensor("restore_step", 4, shape=[2, 3, "H", "W"]), "z axis 0 is 2, the runtime contract says 1"),
    (_tensor("restore_step", 0, shape=["B", 4, "H", "W"]), "x axis 1 is 4, the runtime contract says 3"),
])
def test_inconsistent_manifests_are_refused_at_load(built: Bundle, edit: Callable[[dict[str, Any]], None],
                                                    where: str) -> None:
    _edit(built.root, edit)
    with pytest.raises(BundleError, match=r"manifest\.json is not a valid bundle manifest") as e:
        within(10, lambda: load_bundle(built.root))
    assert where in str(e.value), str(e.value)


def test_infinity_written_as_a_huge_literal_is_refused(built: Bundle) -> None:
    path = built.root / MANIFEST_NAME
    head, tail = path.read_text().rsplit('"vcg_weight": 0.5', 1)  # the pipeline's, not the model config's
    path.write_text(head + '"vcg_weight": 1e999' + tail)
    # Refused while parsing, as the C++ reader refuses it (docs/bundle.md, "JSON"), before the schema's finite check.
    with pytest.raises(BundleError, match=r"not valid JSON \(the number 1e999 is outside the double range\)"):
        load_bundle(built.root)


def _rebuilt(src: Bundle, out: Path, edit: Callable[[dict[str, Any]], None] | None = None,
             swap: dict[str, Path] | None = None) -> Bundle:
    """A copy of `src` through write_bundle: hashes match, whatever the graphs are."""
    doc = {k: v for k, v in src.manifest.to_dict().items() if k != "files"}
    if edit is not None:
        edit(doc)
    files = {name: src.file_path(name) for name in src.manifest.files} | (swap or {})
    return load_bundle(write_bundle(out, doc, files))


def test_graph_io_is_checked_against_the_onnx_file(tmp_path: Path, real: Bundle) -> None:
    # Before: the restore_step file under the vcg name failed inside ONNX Runtime at run time (its ValueError).
    swapped = _rebuilt(real, tmp_path / "swapped", swap={"vcg.fp32.onnx": real.onnx_path("restore_step")})
    with pytest.raises(BundleError) as e:
        create_executor("onnxruntime", swapped)
    msg = str(e.value)
    assert "vcg.fp32.onnx: the vcg graph does not match its description in the bundle's manifest" in msg
    assert "input 'y0': the manifest describes float32[B, 3, 64, 64], the ONNX file has no such input" in msg

    # Before: crop_size 32 with 64x64 graphs passed the schema and failed in ONNX Runtime (InvalidArgument).
    small = _rebuilt(real, tmp_path / "small", edit=_symbolic_branches(32))
    with pytest.raises(BundleError, match=r"input 'x': the manifest describes float32\[B, 3, S, S\], the ONNX file "
                                          r"has float32\[B, 3, 64, 64\]"):
        bundle_pipeline(small, "onnxruntime")

    wide = tmp_path / "wide.onnx"
    onnx.save(branch_model("vda", axes=(2, 3), declared=["B", 3]), str(wide))
    declared = _rebuilt(real, tmp_path / "declared", swap={"vda.fp32.onnx": wide})
    with pytest.raises(BundleError, match=r"output 'score': the manifest describes float32\[B\], the ONNX file has "
                                          r"float32\[B, 3\]"):
        create_executor("onnxruntime", declared)


def test_wrong_output_shape_never_yields_scores(tmp_path: Path, real: Bundle) -> None:
    # Declares (B,) but computes (B, 3): before, the pipeline averaged it into a score.
    liar = tmp_path / "liar.onnx"
    onnx.save(branch_model("vda", axes=(2, 3)), str(liar))
    bad = _rebuilt(real, tmp_path / "bad", swap={"vda.fp32.onnx": liar})
    pipe = bundle_pipeline(bad, "onnxruntime")
    with pytest.raises(BackendError, match=r"the vda graph of .*vda\.fp32\.onnx returned score of shape \[1, 3\], "
                                           r"the runtime contract needs \[1\]"):
        pipe.score([IMAGE])


def test_onnxruntime_failures_at_run_time_are_backend_errors(real: Bundle) -> None:
    ex = create_executor("onnxruntime", real)
    good = np.zeros((2, 3, CROP, CROP), np.float32)
    assert ex.download(ex.vcg(good, good, good, good)).shape == (2,)
    flat = np.zeros((2, 3, CROP), np.float32)  # before: ONNX Runtime's InvalidArgument, neither ValueError nor ours
    with pytest.raises(BackendError, match=r"ONNX Runtime failed running the vcg graph of .*vcg\.fp32\.onnx "
                                           r"\(InvalidArgument: "):
        ex.vcg(flat, flat, flat, flat)


# ----------------------------------------------------------------------------------------- 4. interrupted overwrites


def _second_build(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    manifest = make_manifest()
    manifest["model"]["description"] = "second build"
    return manifest, fake_files(manifest, tmp_path / "src2")


def _rename_failing(monkeypatch: pytest.MonkeyPatch, failure: Any) -> None:
    """Patch the store's os.rename: call n (1-based) raises `failure(n)` when that returns an exception."""
    real_rename = os.rename
    calls = [0]

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        if (exc := failure(calls[0])) is not None:
            raise exc
        real_rename(src, dst)

    monkeypatch.setattr(store_module.os, "rename", rename)


def test_overwrite_interrupted_between_renames_is_recovered(tmp_path: Path, built: Bundle,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, files = _second_build(tmp_path)
    # The process "dies" after the first rename: no later rename happens either.
    _rename_failing(monkeypatch, lambda n: KeyboardInterrupt("killed") if n > 1 else None)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(built.root, manifest, files, overwrite=True)
    monkeypatch.undo()
    # Before: no bundle at all, the old one hidden in .bundle.old-XXXX for good.
    assert not built.root.exists() and [n for n in leftovers(tmp_path) if ".old-" in n]
    assert not [n for n in leftovers(tmp_path) if ".tmp-" in n]  # a normal failure removes its staging dir

    with pytest.warns(BundleRecoveredWarning, match=r"bundle was missing after an interrupted overwrite: the "
                                                    r"previous bundle was restored from \.bundle\.old-"):
        again = load_bundle(built.root)
    assert again.manifest.model.description == built.manifest.model.description
    assert leftovers(tmp_path) == []
    write_bundle(built.root, manifest, files, overwrite=True)
    assert load_bundle(built.root).manifest.model.description == "second build"
    assert leftovers(tmp_path) == []


def test_failed_second_rename_puts_the_old_bundle_back(tmp_path: Path, built: Bundle,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, files = _second_build(tmp_path)
    _rename_failing(monkeypatch, lambda n: OSError(5, "Input/output error") if n == 2 else None)
    with pytest.raises(OSError, match="Input/output error"):
        write_bundle(built.root, manifest, files, overwrite=True)
    monkeypatch.undo()
    assert load_bundle(built.root).manifest.model.description != "second build"
    assert leftovers(tmp_path) == []


def test_kill_9_between_renames_then_next_write_recovers_and_cleans_up(tmp_path: Path, built: Bundle) -> None:
    """A real SIGKILL: the writer's process dies right after its first rename, staging dir and all."""
    manifest, files = _second_build(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps({"manifest": manifest | {"pipeline": {
        **manifest["pipeline"], "gamma": manifest["pipeline"]["gamma"].tolist()}},
        "files": {k: str(v) for k, v in files.items()}}))
    code = textwrap.dedent(f"""
        import json, os, signal
        from diffv2iqa_trt.bundle import store
        job = json.load(open({str(tmp_path / "job.json")!r}))
        real = os.rename
        def rename(src, dst):
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        store.os.rename = rename
        store.write_bundle({str(built.root)!r}, job["manifest"], job["files"], overwrite=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = leftovers(tmp_path)
    assert not built.root.exists() and len(left) == 2, left  # .bundle.old-… and .bundle.tmp-…

    with pytest.warns(BundleRecoveredWarning):
        write_bundle(built.root, manifest, files, overwrite=True)
    assert load_bundle(built.root).manifest.model.description == "second build"
    assert leftovers(tmp_path) == []


def test_stale_staging_dirs_are_removed_live_ones_kept(tmp_path: Path, built: Bundle,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = store_module._HOST_TAG
    stale = tmp_path / f".bundle.tmp-{host}-{dead_pid}-abcd1234"
    live = tmp_path / f".bundle.tmp-{host}-{os.getppid()}-efgh5678"  # a running process: maybe a writer
    legacy = tmp_path / ".bundle.tmp-k2j4h5g6"  # a name of the previous release: age decides
    unrelated = tmp_path / ".bundle.tmp-not.ours"
    for d in (stale, live, legacy, unrelated):
        d.mkdir()
        (d / "restore_step.fp32.onnx").write_bytes(b"x" * 1000)
    manifest, files = _second_build(tmp_path)
    write_bundle(built.root, manifest, files, overwrite=True)
    assert not stale.exists() and live.exists() and legacy.exists() and unrelated.exists()
    monkeypatch.setattr(store_module, "STAGING_GRACE_S", -1.0)
    write_bundle(built.root, manifest, files, overwrite=True)
    assert not live.exists() and not legacy.exists() and unrelated.exists()


def test_ambiguous_leftovers_are_not_guessed(tmp_path: Path, built: Bundle) -> None:
    first = tmp_path / ".bundle.old-0123abcd"
    second = tmp_path / ".bundle.old-4567ef01"
    shutil.copytree(built.root, first)
    built.root.rename(second)
    with pytest.raises(BundleError, match=r"no bundle at .*bundle: .* interrupted overwrites left 2 earlier "
                                          r"bundle\(s\) next to it \(\.bundle\.old-0123abcd, \.bundle\.old-4567ef01\): "
                                          r"rename the one to keep to bundle"):
        load_bundle(built.root)
    assert first.exists() and second.exists()


def test_recovery_waits_for_a_live_writer(tmp_path: Path, built: Bundle) -> None:
    # Another live process on this host between its two renames: its old dir is not taken from under it.
    old = tmp_path / f".bundle.old-{store_module._HOST_TAG}-{os.getppid()}-0a0b0c0d"
    built.root.rename(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BundleError, match="no bundle at"):
            load_bundle(built.root)
    assert old.exists()


# ---------------------------------------------------------------------------------------- property: random damage

CASES = 200
CASE_SECONDS = 5.0  # per case, load_bundle and the CLI together (typical: 0.05 s; the 2 MB cases ~1 s)
LOAD_PEAK_BYTES = 64 << 20  # Python allocations of one load_bundle (tracemalloc peak; measured: 29 MiB at most)
RSS_GROWTH_KIB = 256 << 10  # growth of the process's high-water mark over all cases, CLI included


def _paths(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value in a parsed JSON document, iteratively."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            out.append((node, key))
            stack.append(value)
    return out


def _mutate(text: str, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(9))
    data = text.encode()
    pos = int(rng.integers(len(data)))
    if kind == 0:  # byte flips
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        return bytes(buf)
    if kind == 1:  # truncation
        return data[:pos]
    if kind == 2:  # garbage or a deep nest inserted anywhere
        junks = [b"[" * 50_000, b"{\"a\":" * 3000, b"\x00\xff\xfe", b"NaN", b"1e999", b"-" * 100]
        return data[:pos] + junks[int(rng.integers(len(junks)))] + data[pos:]
    doc = json.loads(text)
    paths = _paths(doc)
    container, key = paths[int(rng.integers(len(paths)))]
    if kind == 3 and isinstance(container, dict):  # key deletion
        del container[key]
    elif kind == 4:  # type swap
        container[key] = [None, True, "s", 0, -1, 1.5, [], {}, [[]], {"k": None}][int(rng.integers(10))]
    elif kind == 5:  # huge and extreme numbers
        container[key] = [10**30, -(10**30), 10**4000, 1e308, -1e308, 2**64, 5e-324, 0][int(rng.integers(8))]
    elif kind == 6:  # deep nesting of a value
        value: Any = 0
        for _ in range(int(rng.integers(30, 900))):
            value = [value]
        container[key] = value
    elif kind == 7:  # a long string or a long list
        container[key] = "x" * 200_000 if rng.integers(2) else list(range(300_000))
    else:  # a number nudged: steps, sizes, file sizes
        value = container[key]
        container[key] = value + int(rng.integers(-3, 4)) if isinstance(value, int) and not isinstance(
            value, bool) else value
    try:
        return json.dumps(doc).encode()
    except ValueError:  # int too large to print (> 4300 digits): keep it in the text
        return data[:pos] + b"9" * 5000 + data[pos:]


def test_random_manifest_damage_is_always_a_bundle_error(built: Bundle) -> None:
    path = built.root / MANIFEST_NAME
    text = path.read_text()
    rng = np.random.default_rng(20240610)
    outcomes = {"loaded": 0, "refused": 0}
    slowest, peak = 0.0, 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for case in range(CASES):
        damaged = _mutate(text, rng)
        path.write_bytes(damaged)
        start = time.perf_counter()
        tracemalloc.start()  # around load_bundle only: tracing the CLI's console output would triple the run time
        try:
            load_bundle(built.root)
            outcomes["loaded"] += 1
            refused = False
        except BundleError as exc:
            outcomes["refused"] += 1
            refused = True
            msg = str(exc)
            assert str(built.root) in msg and (MANIFEST_NAME in msg or "is damaged" in msg), (case, msg[:300])
        finally:
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        res = runner.invoke(app, ["inspect", str(built.root)])
        elapsed = time.perf_counter() - start
        slowest = max(slowest, elapsed)
        output = res.output
        assert "Traceback" not in output, (case, damaged[:200], output[-2000:])
        assert res.exception is None or isinstance(res.exception, SystemExit), (case, repr(res.exception))
        assert res.exit_code == (2 if refused else 0), (case, output[-2000:])
        if refused:
            assert str(built.root) in output and "error:" in output, output[-500:]
        assert elapsed < CASE_SECONDS, (case, elapsed, damaged[:200])
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    print(f"\n{CASES} damaged manifests: {outcomes}, slowest case {slowest:.2f} s, peak Python allocations of a load "
          f"{peak / 2**20:.1f} MiB, growth of the max RSS {rss_growth / 1024:.1f} MiB")
    assert peak < LOAD_PEAK_BYTES and rss_growth < RSS_GROWTH_KIB
    assert outcomes["refused"] > CASES // 2  # the mutations do damage

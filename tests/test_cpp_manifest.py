"""The C++ bundle reader (cpp/include/diffv2iqa/{json,sha256,manifest,onnx_refs}.hpp, cpp/src/{manifest,onnx_refs}.cpp)
against the Python loader: cpp/tests/verify_bundle.cpp is compiled with g++ and run on the session's tiny bundle, on
damaged copies and on the shared hostile files of tests/data/hostile/ (see its README.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hostile_edits import apply_edits, point_external_data_at

from diffv2iqa_trt.bundle import load_bundle
from diffv2iqa_trt.bundle.store import _external_locations
from diffv2iqa_trt.errors import BundleError

REPO = Path(__file__).resolve().parents[1]
CPP = REPO / "cpp"
GXX = shutil.which("g++")
HOSTILE = REPO / "tests" / "data" / "hostile"


@pytest.fixture(scope="module")
def verify_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GXX is None:
        pytest.skip("g++ is not installed: the C++ bundle reader cannot be built here")
    exe = tmp_path_factory.mktemp("cpp") / "verify_bundle"
    cmd = [GXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(CPP / "include"),
           str(CPP / "tests" / "verify_bundle.cpp"), str(CPP / "src" / "manifest.cpp"),
           str(CPP / "src" / "onnx_refs.cpp"), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return exe


def _run(exe: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_summary_equals_the_python_loader(verify_bundle: Path, auto_built: tuple[Any, str]) -> None:
    bundle = auto_built[0]
    result = _run(verify_bundle, bundle.root)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    p = bundle.manifest.pipeline
    assert got["schema"] == "diffv2iqa-trt-bundle" and got["schema_version"] == 4
    assert got["steps"] == p.steps and got["coef_rows"] == len(p.coef) == p.steps
    assert (got["crop_size"], got["size_multiple"]) == (p.crop_size, p.size_multiple)
    assert (got["capture_t1"], got["capture_t2"]) == (p.capture_t1, p.capture_t2)
    assert (got["crops"], got["mode"], got["uint8_roundtrip"]) == (p.crops, p.mode, p.uint8_roundtrip)
    assert got["noise"] == {"generator": p.noise.generator, "seed": p.noise.seed,
                            "test_vectors": dict(p.noise.test_vectors)}
    assert len(got["noise"]["test_vectors"]["row_sha256"]) == p.steps + 1
    assert got["resize"] == p.resize
    golden = bundle.manifest.golden
    assert got["golden"] == ([image["file"] for image in golden["images"]] if golden else [])
    assert got["fusion"] == {"vcg_weight": p.fusion.vcg_weight, "vda_weight": p.fusion.vda_weight}
    assert got["normalisation"] == {"divisor": p.normalisation.divisor, "mean": p.normalisation.mean,
                                    "std": p.normalisation.std}
    assert got["gamma_head"] == [f"{g:.9g}" for g in p.gamma[:3]]
    assert got["graphs"] == {name: g.variants["fp32"].file for name, g in bundle.manifest.graphs.items()}
    assert got["files"] == {name: {"sha256": e.sha256, "bytes": e.bytes} for name, e in bundle.manifest.files.items()}
    assert got["external_data"] == {}  # the toolkit's graphs keep their weights inside
    # ...and the C++ digests are the files' real ones, not the manifest's text echoed back.
    for name, entry in got["files"].items():
        assert entry["sha256"] == hashlib.sha256((bundle.root / name).read_bytes()).hexdigest()


def _truncate(root: Path) -> str:
    path = root / "vcg.fp32.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "vcg.fp32.onnx is"  # "... is N bytes, the manifest says M: the file is truncated or was replaced"


def _flip(root: Path) -> str:
    path = root / "restore_step.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "restore_step.fp32.onnx has sha256"


def _remove(root: Path) -> str:
    (root / "vda.fp32.onnx").unlink()
    return "vda.fp32.onnx is missing"


def _old_version(root: Path) -> str:
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    doc["schema_version"] = 2
    (root / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return "bundle schema version 2"


def _version_3(root: Path) -> str:
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    doc["schema_version"] = 3
    (root / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return "bundle schema version 3"


def _other_resize(root: Path) -> str:
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    doc["pipeline"]["resize"] = "pillow-bicubic"
    (root / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return "$.pipeline.resize: 'pillow-bicubic' is not the resize this reader implements"


def _other_generator(root: Path) -> str:
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    doc["pipeline"]["noise"]["generator"] = "numpy-philox-ziggurat"
    (root / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return "$.pipeline.noise.generator: 'numpy-philox-ziggurat' is not the generator this reader implements"


def _duplicate_key(root: Path) -> str:
    path = root / "manifest.json"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("{")
    path.write_text('{"schema": "diffv2iqa-trt-bundle",' + text[1:], encoding="utf-8")
    return 'duplicate key "schema"'


def _renamed_input(root: Path) -> str:
    """Issue 23: the reader took the I/O names from the manifest and then bound the contract's names regardless."""
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    doc["graphs"]["vcg"]["inputs"][1]["name"] = "y_0"
    (root / "manifest.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return "$.graphs.vcg.inputs: names [x, y_0, y_t1, y_t2], the contract's are [x, y0, y_t1, y_t2]"


DAMAGE: dict[str, tuple[Callable[[Path], str], str]] = {
    "truncated": (_truncate, "truncated"),
    "flipped-byte": (_flip, "altered"),
    "missing": (_remove, "missing"),
    "schema-version-2": (_old_version, "rebuild"),
    "schema-version-3": (_version_3, "NumPy's noise generator and Pillow's resize"),
    "other-resize": (_other_resize, "rebuild"),
    "other-generator": (_other_generator, "rebuild"),
    "duplicate-key": (_duplicate_key, "not valid JSON"),
    "renamed-input": (_renamed_input, "rebuild the bundle"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_copies_are_refused(case: str, verify_bundle: Path, auto_built: tuple[Any, str],
                                    tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(auto_built[0].root, copy)
    damage, problem = DAMAGE[case]
    where = damage(copy)
    result = _run(verify_bundle, copy)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert where in result.stderr and problem in result.stderr, result.stderr
    with pytest.raises(BundleError):  # the Python loader refuses the same copy
        load_bundle(copy)


def test_sha256_vectors_equal_hashlib(verify_bundle: Path, tmp_path: Path) -> None:
    messages = {"empty": b"", "abc": b"abc", "million-a": b"a" * 1_000_000,
                "two-chunks": bytes(range(256)) * 4100 + b"x"}  # > 1 MiB: crosses the streaming chunk boundary
    for name, data in messages.items():
        (tmp_path / name).write_bytes(data)
    result = _run(verify_bundle, "--sha256", *(tmp_path / name for name in messages))
    assert result.returncode == 0, result.stderr
    got = dict(reversed(line.split("  ", 1)) for line in result.stdout.splitlines())
    assert got == {str(tmp_path / name): hashlib.sha256(data).hexdigest() for name, data in messages.items()}
    assert got[str(tmp_path / "empty")] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert got[str(tmp_path / "abc")] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert got[str(tmp_path / "million-a")] == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


JSON_CASES: list[tuple[str, bytes, str | None]] = [
    # (name, document, None if accepted else a fragment of the error)
    ("nested-32", b"[" * 32 + b"]" * 32, None),
    ("nested-33", b"[" * 33 + b"]" * 33, "nested more than 32 deep"),
    ("nan", b"[1, NaN]", "NaN and Infinity"),
    ("infinity", b"-Infinity", "NaN and Infinity"),
    ("huge", b"1e999", "out of the double range"),
    ("trailing", b'{"a": 1} x', "at byte 9: unexpected data"),
    ("duplicate", b'{"a": 1, "b": {"c": 2, "c": 3}}', 'at byte 23: duplicate key "c"'),
    ("lone-surrogate", b'"\\ud800"', "unpaired high surrogate"),
    ("control-char", b'"a\tb"', "control character"),
    ("leading-zero", b"012", "leading zero"),
    ("not-utf8", b'"\xff"', "not UTF-8"),
    ("too-large", b" " * (4 << 20) + b"1", "larger than 4194304 bytes"),
    # issue 22, case 9: the rules of docs/bundle.md ("JSON") for what the two readers once read differently
    ("nul-escape", b'{"file": "a.onnx\\u0000x"}', "at byte 16: U+0000 (NUL) in a string"),
    ("lone-low-surrogate", b'["\\udc00"]', "unpaired low surrogate"),
    ("exponent-past-double", b'{"model": {"config": {"scale": 1e400}}}', "number 1e400 is out of the double range"),
    ("underflow-is-zero", b"1e-400", None),
]

# The same documents as manifests the Python reader is given (schema name and version valid).
JSON_RULES = [(b'{"schema": "diffv2iqa-trt-bundle", "schema_version": 4, "x": ' + value + b"}", name) for value, name in
              [(b'"\\ud800"', "lone surrogate"), (b'"a\\u0000b"', "NUL"), (b"1e400", "1e400")]]


def test_json_reader_is_strict(verify_bundle: Path, tmp_path: Path) -> None:
    for name, doc, error in JSON_CASES:
        path = tmp_path / f"{name}.json"
        path.write_bytes(doc)
        result = _run(verify_bundle, "--json", path)
        if error is None:
            assert result.returncode == 0, (name, result.stderr)
        else:
            assert result.returncode == 2 and error in result.stderr, (name, result.stderr)
    # \uXXXX escapes, a surrogate pair among them, become UTF-8; integers stay exact.
    text = "é\U0001F600\n\"/"
    (tmp_path / "s.json").write_text(json.dumps(text, ensure_ascii=True), encoding="ascii")
    result = subprocess.run([str(verify_bundle), "--json", str(tmp_path / "s.json")], capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout == b"a string\n" + text.encode(), result
    # int64 where it fits; uint64 (noise seeds reach 2**64-1) for non-negative integers up to 2**64-1.
    for text, as_int64, as_uint64 in [
            ("-9223372036854775808", "-9223372036854775808", "-"),
            ("9223372036854775807", "9223372036854775807", "9223372036854775807"),
            ("9223372036854775808", "-", "9223372036854775808"),
            ("18446744073709551615", "-", "18446744073709551615"),
            ("18446744073709551616", "-", "-"), ("-1", "-1", "-"), ("1.0", "-", "-")]:
        (tmp_path / "n.json").write_text(text, encoding="ascii")
        result = _run(verify_bundle, "--json", tmp_path / "n.json")
        assert result.returncode == 0 and result.stdout.split()[-2:] == [as_int64, as_uint64], (text, result)


# --- issue 22, case 7: the noise test vectors must be the crop-size bank's rows ---------------------------------------

EDITS = json.loads((HOSTILE / "manifest_edits.json").read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", EDITS, ids=[c["name"] for c in EDITS])
def test_hostile_noise_test_vectors_are_refused_at_load(case: dict[str, Any], verify_bundle: Path,
                                                        auto_built: tuple[Any, str], tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(auto_built[0].root, copy)
    doc = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    apply_edits(doc, case["edits"])
    (copy / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    result = _run(verify_bundle, copy)
    if case["refused_at"] is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2 and result.stdout == "", (result.stdout, result.stderr[-2000:])
    assert f"at {case['refused_at']}" in result.stderr and "rebuild the bundle" in result.stderr, result.stderr


def test_test_vector_messages_name_the_expected_values(verify_bundle: Path, auto_built: tuple[Any, str],
                                                       tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(auto_built[0].root, copy)
    doc = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    steps, crop = doc["pipeline"]["steps"], doc["pipeline"]["crop_size"]
    for edit, message in [
            ({"op": "set", "path": ["pipeline", "noise", "test_vectors", "shape"], "value": [3, 4096, 4096]},
             f"[3, 4096, 4096] is not the shape of a noise row at crop size, [3, {crop}, {crop}]"),
            ({"op": "resize", "path": ["pipeline", "noise", "test_vectors", "row_sha256"], "length": "steps"},
             f"{steps} digests, but the noise bank of {steps} steps has {steps + 1} rows (0..{steps})"),
            ({"op": "copy", "from": ["pipeline", "noise", "test_vectors", "first8_bits", "0"],
              "to": ["pipeline", "noise", "test_vectors", "first8_bits", str(steps + 1)]},
             f"row {steps + 1} does not exist: the bank has rows 0..{steps}")]:
        edited = json.loads(json.dumps(doc))
        apply_edits(edited, [edit])
        (copy / "manifest.json").write_text(json.dumps(edited), encoding="utf-8")
        result = _run(verify_bundle, copy)
        assert result.returncode == 2 and message in result.stderr, result.stderr


# --- issue 22, case 6: ONNX external data must be listed bundle files ------------------------------------------------

ONNX_INDEX = json.loads((HOSTILE / "onnx_external" / "index.json").read_text(encoding="utf-8"))


def _refs(exe: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return _run(exe, "--onnx-refs", path)


def test_onnx_walker_finds_every_reference_of_the_shared_files(verify_bundle: Path) -> None:
    """Every place an ONNX file can hold a tensor (tests/data/hostile/onnx_external), against the index and, where
    it finds them all, the Python loader's walker."""
    for name, entry in ONNX_INDEX.items():
        path = HOSTILE / "onnx_external" / name
        result = _refs(verify_bundle, path)
        if "error" in entry:
            assert result.returncode == 2 and entry["error"] in result.stderr, (name, result.stderr)
            with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError: the Python loader refuses it too
                onnx.load(str(path), load_external_data=False)
            continue
        assert result.returncode == 0, (name, result.stderr)
        got = [json.loads(line) for line in result.stdout.splitlines()]
        assert got == entry["locations"], name
        if entry["python_walker_finds_all"]:
            python = _external_locations(onnx.load(str(path), load_external_data=False))
            assert sorted(python, key=str) == sorted(got, key=str), name


def _relist(root: Path, doc: dict[str, Any], name: str) -> None:
    """Record bundle file `name`'s size and sha256 in the manifest (and in the variant entry that names it)."""
    data = (root / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    doc["files"][name] = {"sha256": digest, "bytes": len(data)}
    for graph in doc["graphs"].values():
        for variant in graph["variants"].values():
            if variant["file"] == name:
                variant["sha256"] = digest


def external_vcg(source: Path, root: Path, *, location: str = "vcg.data", listed: bool = True,
                 data_scale: float = 1.0) -> Path:
    """A copy of bundle `source` whose vcg.fp32.onnx keeps its initializers of 1 kB or more (its weights; ONNX Runtime
    needs the small shape constants inline) in the external file vcg.data, the graph
    naming it as `location`, the data file listed and hashed in the manifest or not. With `data_scale`, vcg.data is
    then replaced by the same layout holding every float weight times data_scale (what an unlisted, unhashed file
    lets anyone do)."""
    shutil.copytree(source, root)
    model = onnx.load(str(root / "vcg.fp32.onnx"))
    onnx.save_model(model, str(root / "vcg.fp32.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="vcg.data", size_threshold=1024)
    if data_scale != 1.0:
        data = bytearray((root / "vcg.data").read_bytes())
        for t in onnx.load(str(root / "vcg.fp32.onnx"), load_external_data=False).graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT and t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                start, length = int(info.get("offset", 0)), int(info["length"])
                values = np.frombuffer(bytes(data[start:start + length]), "<f4") * np.float32(data_scale)
                data[start:start + length] = values.astype("<f4").tobytes()
        (root / "vcg.data").write_bytes(bytes(data))
    if location != "vcg.data":
        point_external_data_at(root / "vcg.fp32.onnx", location)
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    _relist(root, doc, "vcg.fp32.onnx")
    if listed:
        _relist(root, doc, "vcg.data")
    (root / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


def test_external_data_must_be_a_listed_file(verify_bundle: Path, auto_built: tuple[Any, str],
                                             tmp_path: Path) -> None:
    source = auto_built[0].root
    # Listed and hashed: accepted, and the summary names it as the Python loader does.
    listed = external_vcg(source, tmp_path / "listed")
    result = _run(verify_bundle, listed)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["external_data"] == {"vcg.fp32.onnx": ["vcg.data"]}
    assert load_bundle(listed).check_onnx_references("vcg") == ("vcg.data",)
    # Before: an unlisted data file beside the graph was read unchecked (verify_bundle exited 0).
    unlisted = external_vcg(source, tmp_path / "unlisted", listed=False, data_scale=3.0)
    result = _run(verify_bundle, unlisted)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert (f"{unlisted}/vcg.fp32.onnx (the fp32 vcg graph) loads external data from 'vcg.data', which is not a "
            f"file listed in {unlisted}/manifest.json") in result.stderr, result.stderr
    with pytest.raises(BundleError, match="loads external data from 'vcg.data'"):
        load_bundle(unlisted).check_onnx_references("vcg")
    # Listed, but named by a path that leaves the graph's folder, or ONNX Runtime's memory-address tag.
    outside = tmp_path / "outside.data"
    shutil.copy(listed / "vcg.data", outside)
    for k, location in enumerate(["../outside.data", str(outside), "sub/../vcg.data", "*/_ORT_MEM_ADDR_/*"]):
        root = external_vcg(source, tmp_path / f"loc{k}", location=location)
        result = _run(verify_bundle, root)
        assert result.returncode == 2, (location, result.stdout)
        assert f"loads external data from '{location}'" in result.stderr, result.stderr
        if location.startswith("*"):
            assert "ONNX Runtime's tag for data at a memory address" in result.stderr


@pytest.mark.parametrize("name", [n for n, e in ONNX_INDEX.items() if "error" in e or None in e["bundle_names"]])
def test_shared_hostile_graphs_are_refused_in_a_bundle(name: str, verify_bundle: Path, auto_built: tuple[Any, str],
                                                       tmp_path: Path) -> None:
    """Each shared hostile ONNX file as a bundle's vda graph (listed and hashed): refused at load."""
    root = tmp_path / "bundle"
    shutil.copytree(auto_built[0].root, root)
    shutil.copy(HOSTILE / "onnx_external" / name, root / "vda.fp32.onnx")
    doc = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    _relist(root, doc, "vda.fp32.onnx")
    (root / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    result = _run(verify_bundle, root)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    entry = ONNX_INDEX[name]
    if "error" in entry:
        assert "vda.fp32.onnx (the fp32 vda graph) is not a readable ONNX model" in result.stderr, result.stderr
    else:
        location = entry["locations"][0]
        shown = "an external tensor without a location" if location is None else f"'{location}'"
        assert f"vda.fp32.onnx (the fp32 vda graph) loads external data from {shown}" in result.stderr, result.stderr


@pytest.mark.parametrize("doc,name", JSON_RULES, ids=[n for _, n in JSON_RULES])
def test_python_reader_refuses_what_the_cpp_reader_refuses(doc: bytes, name: str, tmp_path: Path) -> None:
    """Issue 22, case 9: a lone \\ud800, \\u0000 in a string and 1e400 are refused by both readers (docs/bundle.md,
    "JSON"). The C++ reader does (test_json_reader_is_strict); the Python reader (bundle/store.py read_manifest)
    too."""
    from diffv2iqa_trt.bundle.store import read_manifest

    (tmp_path / "manifest.json").write_bytes(doc)
    with pytest.raises(BundleError):
        read_manifest(tmp_path / "manifest.json")

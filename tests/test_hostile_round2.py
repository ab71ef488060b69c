"""Hostile input, round two (tracker issue 22): whole numbers written as floats in a manifest (case 1), noise test
vectors that do not describe the pipeline's bank (case 7), the timing cache's lock and mode (case 5), and control
characters in the CSV output (case 11b). Each is refused with a message that names the problem and the fix (exit 2
from the CLI, no traceback), or, for the lock, leaves the file a link points to untouched."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_edits import apply_edits
from PIL import Image
from test_bundle import fake_files, make_manifest
from test_hostile_bundle import within
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import MANIFEST_NAME, Bundle, BundleError, load_bundle, validate_manifest, write_bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.engine.timing_cache import TimingCacheFile
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.runtime.pipeline import ImageScore
from diffv2iqa_trt.runtime.scoring import FileResult, results_csv

runner = CliRunner()
WHOLE = "(whole numbers are written without a decimal point or exponent, e.g. 12, not 12.0)"


@pytest.fixture()
def built(tmp_path: Path) -> Bundle:
    manifest = make_manifest()
    return load_bundle(write_bundle(tmp_path / "bundle", manifest, fake_files(manifest, tmp_path / "src")))


def _edit(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = root / MANIFEST_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=1))


def _refused(root: Path, *phrases: str) -> str:
    """load_bundle, `inspect` and `score --bundle` all refuse the bundle with the phrases in their message."""
    with pytest.raises(BundleError) as e:
        within(10, lambda: load_bundle(root))
    message = str(e.value)
    for phrase in phrases:
        assert phrase in message, message
    for args in (["inspect", str(root)], ["score", "--bundle", str(root), str(root / "none.png")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert "Traceback" not in res.output and "error:" in res.output and phrases[0] in res.output, res.output
    return message


# ------------------------------------------------------------------------ case 1: whole numbers written as floats


def _as_float(*path: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key] if not callable(key) else key(node)
        node[path[-1]] = float(node[path[-1]])
    return edit


def _first_file(files: dict[str, Any]) -> dict[str, Any]:
    return files[sorted(files)[0]]


@pytest.mark.parametrize("path, shown", [
    (("pipeline", "steps"), "$.pipeline.steps: 12.0 is not of type 'integer'"),
    (("pipeline", "crop_size"), "$.pipeline.crop_size: 64.0 is not of type 'integer'"),
    (("pipeline", "size_multiple"), "$.pipeline.size_multiple: 16.0 is not of type 'integer'"),
    (("pipeline", "capture_t1"), "$.pipeline.capture_t1: 2.0 is not of type 'integer'"),
    (("pipeline", "noise", "seed"), "$.pipeline.noise.seed: 0.0 is not of type 'integer'"),
    (("pipeline", "noise", "test_vectors", "shape", 1), "$.pipeline.noise.test_vectors.shape[1]: 64.0 is not of type"),
    (("files", _first_file, "bytes"), ".bytes: "),
    (("graphs", "vcg", "inputs", 0, "shape", 1), "$.graphs.vcg.inputs[0].shape[1]: 3.0 is not valid under any"),
    (("graphs", "vda", "profiles", "max", "x", 0), "$.graphs.vda.profiles.max.x[0]: 32.0 is not of type 'integer'"),
    (("graphs", "restore_step", "variants", "fp32", "opset"), "variants.fp32.opset: 17.0 is not of type 'integer'"),
])
def test_whole_numbers_written_as_floats_are_refused_at_load(built: Bundle, path: tuple[Any, ...],
                                                             shown: str) -> None:
    """Before: JSON Schema counts 12.0 as an integer, so steps 12.0 and crop_size 64.0 ended `score` and `inspect`
    in a TypeError traceback, and capture_t1 2.0 or a float file size were accepted silently."""
    _edit(built.root, _as_float(*path))
    _refused(built.root, shown, WHOLE, "rebuild the bundle with `diffv2iqa-trt build`")


def test_an_exponent_is_no_integer_either_and_writers_are_held_to_the_rule(built: Bundle, tmp_path: Path) -> None:
    path = built.root / MANIFEST_NAME
    text = path.read_text()
    head, tail = text.rsplit('"steps": 12,', 1)  # the pipeline's, not the model config's (which comes first)
    path.write_text(head + '"steps": 1.2e1,' + tail)
    _refused(built.root, "$.pipeline.steps: 12.0 is not of type 'integer'", WHOLE)
    # schema_version 4.0 is refused by the header check, before any other rule
    path.write_text(text.replace('"schema_version": 4', '"schema_version": 4.0'))
    _refused(built.root, '"schema_version" is 4.0, not an integer', WHOLE)
    # A writer cannot produce one either (numpy float64 is a Python float once converted).
    manifest = make_manifest()
    manifest["pipeline"]["crop_size"] = np.float64(64)
    with pytest.raises(BundleError, match=r"\$\.pipeline\.crop_size: 64\.0 is not of type 'integer'"):
        write_bundle(tmp_path / "new", manifest, fake_files(manifest, tmp_path / "src2"))
    assert not (tmp_path / "new").exists()


def test_integers_and_floats_where_the_schema_says_number_still_load(built: Bundle) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["pipeline"]["fusion"]["vcg_weight"] = 1  # a number: 1 and 1.0 are both fine
        doc["pipeline"]["normalisation"]["divisor"] = 255.0
    _edit(built.root, edit)
    loaded = load_bundle(built.root)
    assert loaded.manifest.pipeline.fusion.vcg_weight == 1.0 and loaded.manifest.pipeline.normalisation.divisor == 255


# ------------------------------------------------------------------------ case 7: the noise test vectors' shape


def _vectors(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["pipeline"]["noise"]["test_vectors"].update(changes)


def _long_schedule(steps: int) -> Callable[[dict[str, Any]], None]:
    """steps and the tables made longer, the test vectors left at the 12-step bank's 13 rows."""
    return lambda doc: doc["pipeline"].update(steps=steps, gamma=[0.5] * steps, coef=[[0.5] * 5] * steps)


@pytest.mark.parametrize("edit, shown", [
    (_vectors(shape=[3, 4096, 4096]), "$.pipeline.noise.test_vectors.shape: [3, 4096, 4096] is not the shape of a "
                                      "noise row at the pipeline's crop size, [3, 64, 64]"),
    (_vectors(shape=[4096, 4096, 4096]), "test_vectors.shape: [4096, 4096, 4096] is not the shape of a noise row"),
    (_vectors(shape=[3, 64, 65]), "test_vectors.shape: [3, 64, 65] is not the shape"),
    (_long_schedule(10_000), "$.pipeline.noise.test_vectors.row_sha256: 13 row hashes, the noise bank of 10000 steps "
                             "has 10001 rows (0 to steps)"),
    (lambda doc: doc["pipeline"]["noise"]["test_vectors"]["row_sha256"].append("0" * 64),
     "test_vectors.row_sha256: 14 row hashes, the noise bank of 12 steps has 13 rows"),
    (_vectors(first8_bits={"13": ["0x00000000"] * 8}), "first8_bits: key '13' is not a row number of the bank "
                                                       "(0 to 12"),
    (_vectors(first8_bits={"007": ["0x00000000"] * 8}), "first8_bits: key '007' is not a row number"),
])
def test_noise_test_vectors_must_describe_the_pipelines_bank(built: Bundle, edit: Callable[[dict[str, Any]], None],
                                                              shown: str) -> None:
    """Before: any shape of at most 3 positive integers and any number of rows passed, so `diffv2iqa-score
    --check-golden` generated a [3, 4096, 4096] bank (44 s instead of 2.5 s), 10,000 steps of it, or a [4096]^3
    row (bad_alloc), while `verify_bundle` and `inspect` accepted the manifest."""
    _edit(built.root, edit)
    _refused(built.root, shown)


SHARED_EDITS = Path(__file__).parent / "data" / "hostile" / "manifest_edits.json"


def test_the_shared_hostile_manifests_are_refused_where_the_cpp_reader_refuses_them(built: Bundle) -> None:
    """The Python loader and the C++ reader follow one rule: each case of the shared file is refused at the JSON path
    it names (or, for the one case no reader can refuse at load, loads)."""
    if not SHARED_EDITS.is_file():
        pytest.skip(f"{SHARED_EDITS} is not in this checkout (the C++ reader's shared hostile inputs)")
    original = (built.root / MANIFEST_NAME).read_text()
    cases = json.loads(SHARED_EDITS.read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 9
    for case in cases:
        doc = json.loads(original)
        apply_edits(doc, case["edits"])
        (built.root / MANIFEST_NAME).write_text(json.dumps(doc))
        if case["refused_at"] is None:
            load_bundle(built.root)
            continue
        with pytest.raises(BundleError) as e:
            load_bundle(built.root)
        assert f"\n  at {case['refused_at']}: " in str(e.value), (case["name"], str(e.value))


def test_a_built_bundles_test_vectors_are_what_the_rules_ask(built: Bundle) -> None:
    tv = built.manifest.pipeline.noise.test_vectors
    p = built.manifest.pipeline
    assert tv["shape"] == [3, p.crop_size, p.crop_size] and len(tv["row_sha256"]) == p.steps + 1
    assert set(tv["first8_bits"]) == {"0", str(p.steps)}
    validate_manifest(json.loads((built.root / MANIFEST_NAME).read_text()))


# ------------------------------------------------------------------------ case 5: the timing cache's lock and mode


def _concat(old: bytes, new: bytes) -> bytes:
    return old + new


@pytest.fixture()
def umask_022() -> Any:
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """Before: the lock was opened with open(..., "w"): a link named <cache>.lock made the build create the file it
    points to, or truncate it (here: a file outside the cache folder)."""
    cache_dir, outside = tmp_path / "timing", tmp_path / "elsewhere"
    cache_dir.mkdir()
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep me")
    before = precious.stat()
    cache = TimingCacheFile(cache_dir / "t.cache")
    cache.lock_path.symlink_to(precious)
    with pytest.raises(ConfigError, match=r"t\.cache\.lock is a symbolic link, not a lock file; it was not followed: "
                                          r"remove it .* or choose another --timing-cache"):
        cache.merge(b"new entries", _concat)
    after = precious.stat()
    assert precious.read_text() == "keep me" and (after.st_size, after.st_mtime_ns) == (before.st_size,
                                                                                          before.st_mtime_ns)
    assert not cache.path.exists()
    # A dangling link: the file it names is not created.
    cache.lock_path.unlink()
    cache.lock_path.symlink_to(outside / "created.txt")
    with pytest.raises(ConfigError, match="symbolic link"):
        cache.merge(b"new entries", _concat)
    assert not (outside / "created.txt").exists() and not cache.path.exists()
    # add_engines calls check() before the first engine is built: the same refusal, nothing created.
    with pytest.raises(ConfigError, match="symbolic link"):
        cache.check()
    assert not (outside / "created.txt").exists() and not cache.path.exists()


def test_a_lock_that_is_a_fifo_or_directory_is_refused_without_waiting(tmp_path: Path) -> None:
    cache = TimingCacheFile(tmp_path / "t.cache")
    os.mkfifo(cache.lock_path)
    with pytest.raises(ConfigError, match=r"t\.cache\.lock is a FIFO, not a lock file"):
        within(10, lambda: cache.merge(b"x", _concat))
    cache.lock_path.unlink()
    cache.lock_path.mkdir()
    with pytest.raises(ConfigError, match=r"t\.cache\.lock"):
        cache.merge(b"x", _concat)
    assert not cache.path.exists()


def test_an_existing_lock_file_is_not_truncated(tmp_path: Path) -> None:
    cache = TimingCacheFile(tmp_path / "t.cache")
    cache.lock_path.write_text("pid 123")
    assert cache.merge(b"abc", _concat) == 3 and cache.merge(b"de", _concat) == 5
    assert cache.read() == b"abcde" and cache.lock_path.read_text() == "pid 123"


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o664])
def test_merging_keeps_the_caches_mode(tmp_path: Path, umask_022: Any, mode: int) -> None:
    """Before: every merge left the cache 0600 (mkstemp's mode), so a shared 0644 cache became unreadable to the
    other users of the machine."""
    cache = TimingCacheFile(tmp_path / "t.cache")
    cache.path.write_bytes(b"old")
    cache.path.chmod(mode)
    cache.merge(b"+new", _concat)
    assert cache.read() == b"old+new" and stat.S_IMODE(cache.path.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.cache", "t.cache.lock"]  # no temporary file left


def test_a_new_cache_gets_the_umask_mode(tmp_path: Path, umask_022: Any) -> None:
    cache = TimingCacheFile(tmp_path / "sub" / "t.cache")
    cache.merge(b"first", _concat)
    assert cache.read() == b"first" and stat.S_IMODE(cache.path.stat().st_mode) == 0o644
    assert stat.S_IMODE(cache.lock_path.stat().st_mode) == 0o644


# ------------------------------------------------------------------------ case 11b: control characters in the CSV


ESCAPE_NAME = "c\x1b[31mred\x07\u202e.png"


def test_csv_output_escapes_control_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `score --format csv` printed the ESC of a file name raw, so the name coloured the terminal."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((72, 80, 3), 120, np.uint8)).save(ESCAPE_NAME)
    Path("bad\x1b]0;title\x07.png").write_bytes(b"not an image")
    res = runner.invoke(app, ["score", ".", "--preset", "tiny", "--steps", "5", "--format", "csv"])
    assert res.exit_code == 1, res.output
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\u202e" not in res.stdout, repr(res.stdout)
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert set(rows) == {"c\\x1b[31mred\\x07\\u202e.png", "bad\\x1b]0;title\\x07.png"}, rows
    assert np.isfinite(float(rows["c\\x1b[31mred\\x07\\u202e.png"]["score"]))
    assert rows["bad\\x1b]0;title\\x07.png"]["error"].startswith("not an image")
    # (The table escaped them before: test_hostile_inputs.test_control_characters_are_shown_escaped.)


def test_csv_cells_hold_no_control_character_from_any_field() -> None:
    score = ImageScore(score=0.5, vcg=0.25, vda=0.75, crops=1)
    results = [FileResult(Path("a\tb\nc.png"), score), FileResult(Path("d\x9b2J.png"), None, "bad\x1b[2J\r\nline")]
    text = results_csv(results, "model\x1b[5m")
    assert text.count("\n") == 3  # a header and one line per row: no line break inside a cell
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["path"] for r in rows] == ["a\\tb\\nc.png", "d\\x9b2J.png"]
    assert rows[1]["error"] == "bad\\x1b[2J\\r\\nline" and {r["model"] for r in rows} == {"model\\x1b[5m"}
    assert float(rows[0]["score"]) == 0.5 and rows[1]["score"] == ""

"""Hostile images, file names and options (tracker issue 10): each is that image's error or a message with exit 2,
never a traceback, never unbounded memory, and the output stays what it claims to be (JSON is JSON, names print
verbatim)."""

import csv
import io
import json
import os
import random
import resource
import stat
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt import cli
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.errors import ImageDecodeError
from diffv2iqa_trt.runtime import images as images_module
from diffv2iqa_trt.runtime.images import DEFAULT_MAX_PIXELS, load_image

runner = CliRunner()
TINY = ["--preset", "tiny"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from a second thread here, and a shared 2-core machine makes spinning threads
    wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- crafted files ---------------------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring width x height (8-bit gray) with a few KB of compressed zero rows: a large
    declared size in a small file, as a decompression bomb has."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the JSON output")

    doc: dict = json.loads(text, parse_constant=refuse)
    return doc


def _good(tmp: Path, name: str, which: str = "astronaut", size: tuple[int, int] = (80, 72)) -> Path:
    from skimage import data

    path = tmp / name
    Image.fromarray(getattr(data, which)()).resize(size).save(path)
    return path


def bad_folder(tmp: Path) -> dict[str, str]:
    """One of every bad image next to good photographs; returns {bad file name: a phrase its error must hold}."""
    tmp.mkdir(exist_ok=True)
    _good(tmp, "good_astronaut.png")
    _good(tmp, "good_coffee.jpg", "coffee", (90, 64))
    (tmp / "bomb.png").write_bytes(bomb_png())
    Image.fromarray(np.zeros((1, 60_000, 3), np.uint8)).save(tmp / "thin.png", optimize=True)
    Image.fromarray(np.zeros((1, 1_000_000), np.uint8)).save(tmp / "thin_1m.png", optimize=True)
    Image.fromarray(np.zeros((8, 4_000, 3), np.uint8)).save(tmp / "strip.png", optimize=True)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp / "tiny.png")
    (tmp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    whole = (tmp / "good_astronaut.png").read_bytes()
    (tmp / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "x.png").mkdir()  # a directory with an image name: searched like any directory (it is empty)
    os.mkfifo(tmp / "pipe.png")  # would block a reader forever
    return {"bomb.png": "above the limit of 100.0 megapixels", "thin.png": "too small", "thin_1m.png": "too small",
            "strip.png": "too thin", "tiny.png": "too small", "corrupt.jpg": "corrupt or truncated",
            "truncated.png": "corrupt or truncated", "empty.png": "empty", "pipe.png": "not a regular file"}


# --- finding 3: one bad image stops all ------------------------------------------------------------------------------

def test_bomb_is_refused_from_the_header_before_decoding(tmp_path):
    """Before: Image.open raised PIL.Image.DecompressionBombError out of load_image (a traceback, nothing scored)."""
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match=r"2,500\.0 megapixels, above the limit of 100\.0 megapixels") as e:
            load_image(tmp_path / "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "--max-pixels" in e.value.reason and "bomb.png" in str(e.value)
    assert peak < 20e6  # nothing the size of the image was allocated


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape as an exception either
def test_pillow_warning_range_and_our_cap(tmp_path):
    """Between Pillow's warning limit (89.5 MP) and twice it, Pillow only warns: our cap decides, from the header."""
    (tmp_path / "big.png").write_bytes(bomb_png(10_000, 9_500))  # 95 MP: Pillow warns, our default cap allows
    with pytest.raises(ImageDecodeError, match=r"95\.0 megapixels, above the limit of 50\.0 megapixels"):
        load_image(tmp_path / "big.png", max_pixels=50_000_000)
    with pytest.raises(ImageDecodeError, match="above the limit of 0.1 megapixels"):
        load_image(tmp_path / "big.png", max_pixels=100_000)


def test_bomb_among_good_images_is_one_row(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    _good(tmp_path, "good.png")
    res = runner.invoke(app, ["score", str(tmp_path), *TINY, "--format", "json"])
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    rows = {Path(r["path"]).name: r for r in _strict_json(res.stdout)["results"]}
    assert np.isfinite(rows["good.png"]["score"]) and rows["bomb.png"]["score"] is None
    assert "megapixels" in rows["bomb.png"]["error"] and "bomb.png" in res.stderr and "Traceback" not in res.output


def test_max_pixels_option(tmp_path):
    _good(tmp_path, "good.png")  # 80 x 72 = 5760 pixels
    res = runner.invoke(app, ["score", str(tmp_path / "good.png"), *TINY, "--max-pixels", "5000"])
    assert res.exit_code == 1 and "above the limit of 0.0 megapixels" in res.stderr and "at least 5760" in res.stderr
    assert runner.invoke(app, ["score", str(tmp_path / "good.png"), *TINY, "--max-pixels", "5760"]).exit_code == 0
    bad = runner.invoke(app, ["score", str(tmp_path / "good.png"), *TINY, "--max-pixels", "0"])
    assert bad.exit_code == 2 and "--max-pixels" in bad.output


def test_cli_default_cap_is_the_library_default():
    assert cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


def test_raising_the_cap_raises_pillows_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    images_module.allow_pillow_pixels(100_000_000)  # below twice Pillow's limit: untouched
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    images_module.allow_pillow_pixels(400_000_000)
    assert Image.MAX_IMAGE_PIXELS == 400_000_000
    images_module.allow_pillow_pixels(1_000)  # never lowered
    assert Image.MAX_IMAGE_PIXELS == 400_000_000


# --- finding 4: memory from tiny files -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["crops", "faithful"])
def test_thin_images_are_refused_without_allocating(tmp_path, mode):
    """Before: an 87-byte 1x60000 PNG was upscaled to 64x3840000 (~2.5 GB in crops mode; 23 GB peak RSS in faithful
    mode on the reviewer's machine, MemoryError on smaller ones); 1x1000000 asked for more than 12 GB."""
    Image.fromarray(np.zeros((1, 60_000, 3), np.uint8)).save(tmp_path / "thin.png", optimize=True)
    Image.fromarray(np.zeros((1, 1_000_000), np.uint8)).save(tmp_path / "thin_1m.png", optimize=True)
    Image.fromarray(np.zeros((8, 4_000, 3), np.uint8)).save(tmp_path / "strip.png", optimize=True)
    assert (tmp_path / "thin.png").stat().st_size < 1000
    tracemalloc.start()
    try:
        res = runner.invoke(app, ["score", str(tmp_path), *TINY, "--mode", mode, "--format", "json"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.exit_code == 1, res.output
    rows = {Path(r["path"]).name: r for r in _strict_json(res.stdout)["results"]}
    assert "too small" in rows["thin.png"]["error"] and "too small" in rows["thin_1m.png"]["error"]
    assert "too thin" in rows["strip.png"]["error"] and "resize224" in rows["strip.png"]["error"]
    assert peak < 200e6, peak  # the decoded strips are 180 kB, 1 MB and 96 kB; no upscaled copy was made


def test_thin_image_is_scored_with_resize224(tmp_path):
    """The refusal says what to do, and it works: resize224 squashes the image, so no upscale bound applies."""
    Image.fromarray(np.full((8, 4_000, 3), 128, np.uint8)).save(tmp_path / "strip.png")
    res = runner.invoke(app, ["score", str(tmp_path / "strip.png"), *TINY, "--crops", "resize224"])
    assert res.exit_code == 0, res.output


def test_faithful_mode_refuses_huge_images_but_crops_mode_scores_them(tmp_path):
    Image.fromarray(np.full((2100, 2100, 3), 90, np.uint8)).save(tmp_path / "big.png")
    res = runner.invoke(app, ["score", str(tmp_path / "big.png"), *TINY, "--mode", "faithful"])
    assert res.exit_code == 1 and "too large for faithful mode" in res.stderr and "--mode crops" in res.stderr
    assert runner.invoke(app, ["score", str(tmp_path / "big.png"), *TINY]).exit_code == 0


# --- finding 7: invalid JSON from a NaN score ------------------------------------------------------------------------

@pytest.fixture()
def nan_for_white_crops(monkeypatch):
    """The torch reference's VDA returns NaN for crops that are all white (x == 1), its real value otherwise."""
    import torch

    from diffv2iqa_trt.reference.torch_executor import TorchExecutor

    real = TorchExecutor.vda

    def vda(self, x, y0, yt1, yt2):
        out = real(self, x, y0, yt1, yt2)
        white = (x > 0.999).flatten(1).all(1)
        return torch.where(white, torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(TorchExecutor, "vda", vda)


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_nan_score_is_that_images_error(tmp_path, nan_for_white_crops, fmt):
    """Before: `--format json` printed `"score": NaN` (not JSON) and the exit code was 0."""
    _good(tmp_path, "photo.png")
    Image.fromarray(np.full((70, 70, 3), 255, np.uint8)).save(tmp_path / "white.png")
    res = runner.invoke(app, ["score", str(tmp_path), *TINY, "--format", fmt])
    assert res.exit_code == 1, res.output
    assert "white.png: the model produced a non-finite score (nan)" in res.stderr
    assert "1 of 2 file(s) could not be scored" in res.stderr
    if fmt == "json":
        rows = {Path(r["path"]).name: r for r in _strict_json(res.stdout)["results"]}
        assert rows["white.png"]["score"] is None and rows["white.png"]["vda"] is None
        assert "non-finite" in rows["white.png"]["error"] and np.isfinite(rows["photo.png"]["score"])
    elif fmt == "csv":
        rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(res.stdout))}
        white = rows["white.png"]
        assert white["score"] == white["vda"] == "" and "non-finite" in white["error"]
        assert all(v.lower() not in ("nan", "inf", "-inf") for r in rows.values() for v in r.values())


def test_result_rows_hold_no_nan():
    from diffv2iqa_trt.runtime.pipeline import ImageScore
    from diffv2iqa_trt.runtime.scoring import FileResult, results_json

    rows = [FileResult(Path("a.png"), ImageScore(score=0.5, vcg=float("nan"), vda=float("inf"), crops=1))]
    json.dumps(results_json(rows, {}), allow_nan=False)  # raises ValueError on any NaN or infinity


def test_json_output_never_holds_nan():
    cli._print_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})


# --- finding 10: bad option values -----------------------------------------------------------------------------------

@pytest.fixture()
def no_model(monkeypatch):
    """Option checks must come first: loading a model (or anything after) fails the test."""
    from diffv2iqa_trt.reference import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "noise seed -1 is out of range"),  # before: a message, but only after loading the model
    (["--seed", str(2**64)], "use an integer in [0, 2**64)"),
    (["--seed", "1e23"], "Invalid value for '--seed'"),  # typer refuses a float: exit 2 with its message
    (["--steps", "100000000"], "--steps must be an integer between 1 and 10000"),  # before: ArrayMemoryError
    (["--steps", "0"], "--steps must be an integer between 1 and 10000"),
    (["--crops", "grid:100000000"], "N must be between 1 and 64"),  # before: 7 GB, then MemoryError
    # One crop-policy parser now (config.grid_size): an N of 5000 digits is "too many crops", like ScoringConfig says.
    (["--crops", "grid:" + "9" * 5000], "asks for too many crops"),
    (["--crops", "grid:0"], "N must be between 1 and 64"),
    (["--mode", "[red]fast"], "unknown mode '[red]fast'"),
    (["--batch-size", "100000000"], "Invalid value for '--batch-size'"),
    (["--threads", "100000000"], "Invalid value for '--threads'"),
])
def test_bad_score_options_are_messages(tmp_path, no_model, args, message):
    _good(tmp_path, "good.png")
    res = runner.invoke(app, ["score", str(tmp_path / "good.png"), *TINY, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("args", [["--steps", "0"], ["--crop-size", "0"], ["--steps", "100000"]])
def test_info_refuses_instead_of_defaulting(args):
    """Before: `info --steps 0` and `--crop-size 0` silently printed the defaults' figures with exit 0."""
    res = runner.invoke(app, ["info", *args])
    assert res.exit_code == 2 and ("Invalid value" in res.output or "--steps must be" in res.output), res.output


def _unwritable_targets(tmp_path: Path) -> list[Path]:
    """Folders that cannot be written: below a regular file (always), and a read-only folder where permission bits
    count (not as root, who writes anyway)."""
    (tmp_path / "a_file").write_text("x")
    targets = [tmp_path / "a_file" / "sub"]
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / "probe").write_text("x")
        (ro / "probe").unlink()
    except OSError:
        targets.append(ro)  # not root: the permission bits hold
    return targets


@pytest.fixture()
def no_run(monkeypatch):
    from diffv2iqa_trt import bundle
    from diffv2iqa_trt.benchmarks import bench, parity

    def refuse(*args, **kwargs):
        raise AssertionError("the run started before --out was checked")

    for module, name in ((bundle, "load_bundle"), (parity, "run_parity"), (bench, "run_bench")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("command", ["parity", "bench"])
def test_unwritable_out_is_refused_before_the_run(tmp_path, no_run, command):
    """Before: `parity --out` on a read-only folder failed with an OSError traceback after the whole run, exit 1
    (the code of a failed gate)."""
    for target in _unwritable_targets(tmp_path):
        args = [command, "--bundle", str(tmp_path / "bundle"), "--out", str(target)]
        if command == "parity":
            args += ["--images", str(tmp_path)]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "cannot write the report to --out" in res.stderr and "Traceback" not in res.output
    (tmp_path / "read_only").chmod(0o700)


def test_out_check_leaves_no_trace(tmp_path, monkeypatch):
    from diffv2iqa_trt import bundle
    from diffv2iqa_trt.errors import BundleError

    def missing(*args, **kwargs):
        raise BundleError("no bundle here")

    monkeypatch.setattr(bundle, "load_bundle", missing)
    res = runner.invoke(app, ["parity", "--bundle", "b", "--images", str(tmp_path), "--out",
                              str(tmp_path / "new" / "report")])
    assert res.exit_code == 2 and "no bundle here" in res.stderr
    assert not (tmp_path / "new").exists()  # the probe and the folders made for it are gone


@pytest.mark.parametrize("sizes", ["0", "1,0", "x", "100000000"])
def test_bench_batch_sizes_refused(tmp_path, no_run, sizes):
    res = runner.invoke(app, ["bench", "--bundle", "b", "--batch-sizes", sizes, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--batch-sizes" in res.stderr, res.output


# --- finding 11: names printed as markup -----------------------------------------------------------------------------

MARKUP_NAMES = ["[red]x.png", "[link=http:/e.com]y.png", ":smile:.png", "[bold]bad.jpg"]


def test_file_names_print_verbatim(tmp_path, monkeypatch):
    """Before the partial fix, "[red]x.png" printed as "x.png" and a [link=...] name became a hyperlink; emoji codes
    (":smile:") were still replaced in tables and even in the JSON output."""
    monkeypatch.chdir(tmp_path)  # short relative names: the table does not fold them
    Path("[link=http:").mkdir()
    for name in MARKUP_NAMES[:3]:
        _good(Path("."), name)
    Path(MARKUP_NAMES[3]).write_bytes(b"junk")
    res = runner.invoke(app, ["score", ".", *TINY])
    assert res.exit_code == 1, res.output
    for name in MARKUP_NAMES[:3]:
        assert name in res.stdout, name
    assert f"{MARKUP_NAMES[3]}: not an image" in res.stderr  # the error line
    doc = _strict_json(runner.invoke(app, ["score", ".", *TINY, "--format", "json"]).stdout)
    assert {r["path"] for r in doc["results"]} == set(MARKUP_NAMES)


def test_control_characters_are_shown_escaped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _good(Path("."), "c\x1b[31mred\x07.png")
    res = runner.invoke(app, ["score", ".", *TINY])
    assert res.exit_code == 0 and "\x1b" not in res.stdout and "c\\x1b[31mred\\x07.png" in res.stdout


def test_summary_lint_and_reports_print_verbatim(capsys):
    cli._print_summary({"[red]model": {"label": "[link=http://e.com]evil[/link]", "note": "\x1b]8;;http://e\x1b\\"}})
    text = capsys.readouterr().out
    assert "[red]model" in text and "[link=http://e.com]evil[/link]" in text and "\x1b" not in text

    class Row:
        status, subject, detail = "unsupported", "[red]Op", "[link=http://e.com]x"

    class Report:
        ok, rows = False, [Row()]

    cli._print_lint({"[bold]graph": {10: Report()}})
    text = capsys.readouterr().out
    assert "[bold]graph" in text and "[red]Op" in text and "[link=http://e.com]x" in text


@pytest.fixture()
def hostile_bundle(auto_built, tmp_path):
    """A copy of the tiny bundle whose manifest names its model "[red]m" and whose fp32 score gate (max |Δ| <= -1)
    no variant passes: parity and bench then write real reports that carry markup and a real failure."""
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(auto_built[0].root, root)
    doc = json.loads((root / "manifest.json").read_text())
    doc["model"]["name"] = "[red]m"
    doc["parity"]["gates"]["fp32"]["max_abs"] = -1.0
    (root / "manifest.json").write_text(json.dumps(doc))
    return root


def test_parity_table_prints_verbatim(tmp_path, hostile_bundle):
    """A real parity run (torch reference against the onnxruntime fp32 variant on two photographs) into a folder
    named like markup: the failure and the written paths print as they are."""
    images = [_good(tmp_path, "a.png"), _good(tmp_path, "b.png", "chelsea")]
    out = tmp_path / "[red]o"
    res = runner.invoke(app, ["parity", "--bundle", str(hostile_bundle), "--images", str(images[0]), "--images",
                              str(images[1]), "--out", str(out)])
    assert res.exit_code == 1, res.output  # the gate fails
    for text in ("Parity against torch fp32, 2 images", "onnxruntime-fp32", "FAIL max |Δ|", "> gate -1",
                 f"wrote {out / 'parity.json'}, {out / 'parity.md'}"):
        assert text in res.stdout, text


def test_bench_table_prints_verbatim(tmp_path, hostile_bundle):
    out = tmp_path / "[red]o"
    res = runner.invoke(app, ["bench", "--bundle", str(hostile_bundle), "--backends", "onnxruntime", "--images",
                              str(_good(tmp_path, "i.png")), "--batch-sizes", "1", "--warmup", "0", "--min-iters", "1",
                              "--min-seconds", "0", "--offline-images", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for text in ("Single-stream latency, model [red]m", "onnxruntime-cpu", f"wrote {out / 'bench_[red]m.json'}"):
        assert text in res.stdout, text


# --- names that are not UTF-8 ----------------------------------------------------------------------------------------

def test_non_utf8_names_in_every_format(tmp_path):
    cwd = os.getcwd()
    raw = os.fsencode(tmp_path) + b"/a\xff.png"
    Image.fromarray(np.full((70, 70, 3), 100, np.uint8)).save(os.fsdecode(raw))
    (Path(os.fsdecode(os.fsencode(tmp_path) + b"/b\xfe.jpg"))).write_bytes(b"junk")
    js = runner.invoke(app, ["score", str(tmp_path), *TINY, "--format", "json"])
    assert js.exit_code == 1, js.output
    rows = {r["path"].rsplit("/", 1)[1]: r for r in _strict_json(js.stdout)["results"]}
    assert set(rows) == {"a\\xff.png", "b\\xfe.jpg"}  # Python's backslashreplace: the text is valid Unicode
    assert bytes.fromhex(rows["a\\xff.png"]["path_bytes_hex"]) == raw  # the exact bytes, for tools that need them
    assert np.isfinite(rows["a\\xff.png"]["score"])
    csv_out = runner.invoke(app, ["score", str(tmp_path), *TINY, "--format", "csv"])
    assert csv_out.exit_code == 1 and "a\\xff.png" in csv_out.stdout
    os.chdir(tmp_path)  # short relative names: the table does not fold them
    try:
        table = runner.invoke(app, ["score", ".", *TINY])
    finally:
        os.chdir(cwd)
    assert table.exit_code == 1 and "a\\xff.png" in table.stdout and "b\\xfe.jpg" in table.stderr


# --- everything at once ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["crops", "faithful"])
def test_folder_of_every_bad_image(tmp_path, mode):
    expected = bad_folder(tmp_path / "imgs")
    res = runner.invoke(app, ["score", str(tmp_path / "imgs"), *TINY, "--mode", mode, "--format", "json"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    rows = {Path(r["path"]).name: r for r in _strict_json(res.stdout)["results"]}
    assert set(rows) == set(expected) | {"good_astronaut.png", "good_coffee.jpg"}
    for name in ("good_astronaut.png", "good_coffee.jpg"):
        assert rows[name]["error"] is None and np.isfinite(rows[name]["score"]), rows[name]
    for name, phrase in expected.items():
        assert rows[name]["score"] is None and phrase in rows[name]["error"], (name, rows[name])
        assert f"{name}: " in res.stderr
    assert f"{len(expected)} of {len(rows)} file(s) could not be scored" in res.stderr


# --- property: randomly corrupted files ------------------------------------------------------------------------------

def _seeds() -> dict[str, bytes]:
    """Small valid files of several formats (the mutation sources)."""
    from skimage import data

    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((40, 32)))
    out = {}
    for name, kw in (("png", {}), ("jpeg", {"quality": 80}), ("bmp", {}), ("gif", {}), ("tiff", {}),
                     ("webp", {"quality": 60})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=name.upper(), **kw)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG", transparency=0)
    out["png-palette"] = buf.getvalue()
    return out


def _huge_size(fmt: str, data: bytes, rng: random.Random) -> bytes:
    """The header's width and height set to large values (valid checksums kept, so the decoder believes them)."""
    b = bytearray(data)
    w, h = rng.choice([(65535, 65535), (1, 65535), (65535, 1), (3000, 3000), (0, 7), (2**31 - 1, 2), (40, 100000)])
    if fmt.startswith("png"):
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    elif fmt == "jpeg":
        at = next(i for i in range(2, len(b) - 9) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2))
        b[at + 5:at + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
    elif fmt == "bmp":
        top_down = rng.random() < 0.5  # a negative height means rows stored top to bottom
        b[18:26] = struct.pack("<ii", min(w, 2**31 - 1), -min(h, 2**31 - 1) if top_down else min(h, 2**31 - 1))
    elif fmt == "gif":
        b[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
    else:  # tiff, webp: overwrite 4 bytes in the first 64 with large values
        at = rng.randrange(4, min(64, len(b) - 4))
        b[at:at + 4] = struct.pack("<I", rng.choice([w, h, 0xFFFFFFFF]) & 0xFFFFFFFF)
    return bytes(b)


def _mutate(fmt: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flip", "truncate", "size", "size", "splice"])
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[: rng.randrange(1, len(b))]
    elif kind == "size":
        b = bytearray(_huge_size(fmt, data, rng))
    else:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return kind, bytes(b)


MUTATIONS = 100
RSS_GROWTH_BOUND = 512 * 2**20  # bytes of peak resident memory the whole scoring run may add
DECODE_PEAK_BOUND = 64 * 2**20  # bytes traced while decoding all mutated files (with --max-pixels 4000000)


def test_randomly_corrupted_files(tmp_path):
    """100 seeded mutations (bit flips, truncations, huge header sizes with valid checksums, spliced bytes) of small
    PNG / JPEG / BMP / GIF / TIFF / WebP files: decoding gives an image or an ImageDecodeError, and `score` over all
    of them ends with exit 0 or 1, valid JSON, every failed file named, and bounded memory."""
    rng = random.Random(20240610)
    seeds = _seeds()
    folder = tmp_path / "mutants"
    folder.mkdir()
    for i in range(MUTATIONS):
        fmt = rng.choice(sorted(seeds))
        kind, data = _mutate(fmt, seeds[fmt], rng)
        suffix = {"jpeg": "jpg", "png-palette": "png"}.get(fmt, fmt)
        (folder / f"m{i:03d}_{kind}.{suffix}").write_bytes(data)

    cap = 4_000_000
    tracemalloc.start()
    try:
        decoded = 0
        for f in sorted(folder.iterdir()):
            try:
                rgb = load_image(f, max_pixels=cap)
            except ImageDecodeError as exc:
                assert exc.path == str(f) and exc.reason
            else:
                assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                assert rgb.shape[0] * rgb.shape[1] <= cap
                decoded += 1
        decode_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decode_peak < DECODE_PEAK_BOUND, decode_peak

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = runner.invoke(app, ["score", str(folder), *TINY, "--max-pixels", str(cap), "--format", "json"])
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert res.exit_code in (0, 1), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    rows = _strict_json(res.stdout)["results"]
    assert len(rows) == MUTATIONS
    failed = [r for r in rows if r["error"] is not None]
    for r in failed:
        assert r["score"] is None and f"{Path(r['path']).name}: " in res.stderr
    for r in rows:
        assert r["error"] is not None or np.isfinite(r["score"])
    assert res.exit_code == (1 if failed else 0)
    assert rss_growth < RSS_GROWTH_BOUND, rss_growth
    # The mutations must exercise both outcomes, or the test proves little.
    assert 10 <= len(failed) <= MUTATIONS - 10 and decoded >= 10, (len(failed), decoded)
    print(f"{MUTATIONS} mutants: {len(failed)} refused, {MUTATIONS - len(failed)} scored; decode peak "
          f"{decode_peak / 2**20:.1f} MiB; RSS growth {rss_growth / 2**20:.1f} MiB")


def test_fifo_and_unreadable_files(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(tmp_path / "p.png")
    with pytest.raises(ImageDecodeError, match="cannot read the file"):
        load_image(tmp_path / ("n" * 300 + ".png"))  # name too long: an OSError other than "not found"
    _good(tmp_path, "locked.png").chmod(0)
    try:
        if os.access(tmp_path / "locked.png", os.R_OK):
            pytest.skip("running as root: permission bits do not stop reads")
        with pytest.raises(ImageDecodeError, match="cannot read the file"):
            load_image(tmp_path / "locked.png")
    finally:
        (tmp_path / "locked.png").chmod(stat.S_IRUSR | stat.S_IWUSR)

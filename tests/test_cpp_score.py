"""The C++ scorer (cpp/: library, diffv2iqa-score, contract_probe) against the Python runtime.

Built once per session with CMake into a temporary folder, against ONNX Runtime headers from Debian's libonnxruntime-dev
(scripts/ort_headers.sh) and the library of the venv's onnxruntime wheel, so both sides run the same ONNX Runtime.
Skipped only where no C++ compiler or CMake exists; a failed header download fails the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_cpp_manifest import EDITS, apply_edits, external_vcg

from diffv2iqa_trt.data.photos import photo
from diffv2iqa_trt.golden import read_ppm, write_ppm
from diffv2iqa_trt.runtime.crops import prepare
from diffv2iqa_trt.runtime.images import load_image
from diffv2iqa_trt.runtime.noise import noise_bank
from diffv2iqa_trt.runtime.resize import resize_rgb

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "diffv2iqa-trt"
TOLERANCE = 1e-6


@pytest.fixture(scope="session")
def cpp_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CMake build folder holding diffv2iqa-score and contract_probe."""
    cxx, cmake = shutil.which("g++") or shutil.which("c++"), shutil.which("cmake")
    if cxx is None or cmake is None:
        pytest.skip("no C++ compiler or no CMake on this machine: the C++ scorer cannot be built here")
    headers = subprocess.run(["bash", str(REPO / "scripts" / "ort_headers.sh"), str(REPO / "build" / "ort-headers")],
                             capture_output=True, text=True, timeout=300)
    if headers.returncode != 0:
        pytest.fail("scripts/ort_headers.sh could not get ONNX Runtime's headers (Debian's libonnxruntime-dev; needs "
                    f"the Debian archive once):\n{headers.stderr}")
    # A fresh folder per session: the checkout may be shared by concurrent test runs (~30 s to build on 2 cores).
    # DIFFV2IQA_CPP_BUILD names a folder to reuse instead (incremental builds while iterating on the C++ code).
    reuse = os.environ.get("DIFFV2IQA_CPP_BUILD")
    build = Path(reuse) if reuse else tmp_path_factory.mktemp("cpp-build")
    configure = subprocess.run([cmake, "-S", str(REPO / "cpp"), "-B", str(build),
                                f"-DDIFFV2IQA_ORT_INCLUDE={headers.stdout.strip()}",
                                f"-DDIFFV2IQA_PYTHON={sys.executable}"], capture_output=True, text=True, timeout=120)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return build


def _run(exe: Path, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Any, str]) -> Any:
    b = auto_built[0]
    assert b.manifest.schema_version == 4 and b.manifest.golden is not None
    return b


# --- (c) the resize, bit for bit ------------------------------------------------------------------------------------

RESIZES = [((37, 53), (64, 96)), ((200, 150), (48, 31)), ((5, 7), (80, 112)), ((64, 64), (64, 33)),
           ((30, 30), (90, 30)), ((123, 77), (123, 200)), ((17, 300), (3, 21))]


def test_resize_equals_python_bit_for_bit(cpp_tools: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    src = tmp_path / "src.ppm"
    out = tmp_path / "out.ppm"
    for k, ((h, w), (nh, nw)) in enumerate(RESIZES):
        # Random pixels stress the clamping; a smooth photograph the rounding of mid-range values.
        rgb = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if k % 2 else
               np.ascontiguousarray(photo("astronaut")[100:100 + h, 150:150 + w]))
        write_ppm(src, rgb)
        result = _run(cpp_tools / "contract_probe", "resize", src, nh, nw, out)
        assert result.returncode == 0, result.stderr
        got, want = read_ppm(out), resize_rgb(rgb, nh, nw)
        assert got.shape == want.shape == (nh, nw, 3)
        assert np.array_equal(got, want), (k, int(np.abs(got.astype(int) - want).max()))


# --- the upscale rule, crop boxes and modes --------------------------------------------------------------------------

PREPARE_CASES = [((101, 157), "five", "crops"), ((101, 157), "grid:3", "faithful"), ((45, 90), "grid:3", "crops"),
                 ((45, 90), "five", "faithful"), ((70, 200), "grid:1", "crops"), ((70, 200), "resize224", "faithful"),
                 ((13, 21), "center", "faithful"), ((160, 64), "grid:4", "crops")]


def test_prepare_equals_python(cpp_tools: Path, tmp_path: Path) -> None:
    for k, ((h, w), policy, mode) in enumerate(PREPARE_CASES):
        rgb = np.ascontiguousarray(photo("coffee")[: h * 2 : 2, : w * 2 : 2])
        src, out = tmp_path / f"in{k}.ppm", tmp_path / f"out{k}"
        out.mkdir()
        write_ppm(src, rgb)
        result = _run(cpp_tools / "contract_probe", "prepare", src, policy, mode, 64, 16, out)
        assert result.returncode == 0, result.stderr
        units = prepare(rgb, policy, mode, 64, 16)
        lines = result.stdout.splitlines()
        assert len(lines) == len(units), (k, lines)
        for line, unit in zip(lines, units, strict=True):
            index, height, width, *boxes = line.split()
            assert (int(height), int(width)) == unit.pixels.shape[:2], (k, line)
            assert [tuple(map(int, b.split(","))) for b in boxes] == list(unit.boxes), (k, line)
            assert np.array_equal(read_ppm(out / f"unit-{index}.ppm"), unit.pixels), (k, line)
    # An image the rules refuse: the C++ message is the Python one.
    write_ppm(tmp_path / "thin.ppm", np.zeros((3, 100, 3), np.uint8))
    result = _run(cpp_tools / "contract_probe", "prepare", tmp_path / "thin.ppm", "center", "crops", 64, 16, tmp_path)
    assert result.returncode == 1 and "image of 100x3 pixels is too small" in result.stderr, result.stderr


# --- PNG decoding as the Python decoder does -------------------------------------------------------------------------

def _png(path: Path, raw: np.ndarray, color_type: int, depth: int, palette: bytes = b"", trns: bytes = b"") -> None:
    """A PNG written by hand (filter 0 on every row), for the formats Pillow cannot write (16-bit colour)."""
    h, w = raw.shape[:2]
    if depth == 16:
        body = raw.astype(">u2").reshape(h, -1).view(np.uint8)
    elif depth < 8:
        body = np.packbits(np.unpackbits(raw.reshape(h, w, 1).astype(np.uint8), axis=2)[:, :, 8 - depth:]
                           .reshape(h, -1), axis=1)
    else:
        body = raw.reshape(h, -1)
    data = b"".join(b"\0" + row.tobytes() for row in body)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    head = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + (chunk(b"PLTE", palette) if palette else b"")
                     + (chunk(b"tRNS", trns) if trns else b"") + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))


def test_png_decoding_equals_the_python_decoder(cpp_tools: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    h, w = 19, 23
    u8 = lambda *shape: rng.integers(0, 256, (h, w, *shape), dtype=np.uint8)  # noqa: E731
    u16 = lambda *shape: rng.integers(0, 65536, (h, w, *shape), dtype=np.uint16)  # noqa: E731
    # Every alpha value over every colour value hits Pillow's integer compositing formula.
    a, v = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    sweep = np.stack([v, 255 - v, (v * 7) % 256, a], axis=2).astype(np.uint8)
    palette = rng.integers(0, 256, 256 * 3, dtype=np.uint8).tobytes()
    cases = {
        "rgb8": (u8(3), 2, 8, b"", b""),
        "rgba8-sweep": (sweep, 6, 8, b"", b""),
        "gray8": (u8(), 0, 8, b"", b""),
        "gray1": (rng.integers(0, 2, (h, w), dtype=np.uint8), 0, 1, b"", b""),
        "gray2": (rng.integers(0, 4, (h, w), dtype=np.uint8), 0, 2, b"", b""),
        "gray4": (rng.integers(0, 16, (h, w), dtype=np.uint8), 0, 4, b"", b""),
        "gray16": (u16(), 0, 16, b"", b""),
        "gray-alpha8": (u8(2), 4, 8, b"", b""),
        "gray-alpha16": (u16(2), 4, 16, b"", b""),
        "rgb16": (u16(3), 2, 16, b"", b""),
        "rgba16": (u16(4), 6, 16, b"", b""),
        "palette": (u8(), 3, 8, palette, b""),
        "palette-trns": (u8(), 3, 8, palette, rng.integers(0, 256, 200, dtype=np.uint8).tobytes()),
        "gray-colour-key": (u8(), 0, 8, b"", struct.pack(">H", 7)),  # ignored by Pillow, and so here
        "rgb-colour-key": (u8(3), 2, 8, b"", struct.pack(">HHH", 1, 2, 3)),
    }
    for name, (raw, color_type, depth, plte, trns) in cases.items():
        path, out = tmp_path / f"{name}.png", tmp_path / f"{name}.ppm"
        _png(path, raw, color_type, depth, plte, trns)
        result = _run(cpp_tools / "contract_probe", "decode", path, out)
        assert result.returncode == 0, (name, result.stderr)
        got, want = read_ppm(out), load_image(path)
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), (name, int(np.abs(got.astype(int) - want).max()))
    # An EXIF orientation the Python decoder would apply is refused, not silently ignored.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(u8(3)).save(tmp_path / "rotated.png", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.png").shape == (w, h, 3)  # Python rotates it
    result = _run(cpp_tools / "contract_probe", "decode", tmp_path / "rotated.png", tmp_path / "rotated.ppm")
    assert result.returncode == 1 and "EXIF orientation (6)" in result.stderr, result.stderr
    # What the photographs below go through: Pillow's own 8-bit RGB writer.
    Image.fromarray(u8(3)).save(tmp_path / "pillow.png")
    result = _run(cpp_tools / "contract_probe", "decode", tmp_path / "pillow.png", tmp_path / "pillow.ppm")
    assert result.returncode == 0 and np.array_equal(read_ppm(tmp_path / "pillow.ppm"),
                                                     load_image(tmp_path / "pillow.png"))


# --- (a) golden scores and (d) the noise test vectors ----------------------------------------------------------------

def test_check_golden_and_noise_vectors(cpp_tools: Path, bundle: Any) -> None:
    result = _run(cpp_tools / "diffv2iqa-score", "--bundle", bundle.root, "--check-golden")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    golden = bundle.manifest.golden
    assert report["ok"] is True and report["max_abs_diff"] <= TOLERANCE
    assert len(report["golden"]) == sum(len(image["scores"]) for image in golden["images"]) >= 4
    assert {case["mode"] for case in report["golden"]} == {"crops", "faithful"}
    for case in report["golden"]:
        assert abs(case["score"] - case["expected_score"]) <= TOLERANCE, case
    print(f"golden: max abs diff {report['max_abs_diff']!r} over {len(report['golden'])} recorded scores")
    # (d): every row's sha256 and the first values of rows 0 and T, recomputed by philox.hpp, are the manifest's ...
    vectors = bundle.manifest.pipeline.noise.test_vectors
    noise = report["noise"]
    steps = bundle.manifest.pipeline.steps
    assert noise["ok"] is True and noise["rows"] == noise["rows_matching"] == steps + 1
    assert noise["row_sha256"] == vectors["row_sha256"] and len(vectors["row_sha256"]) == steps + 1
    assert noise["first8_bits"] == vectors["first8_bits"] and set(vectors["first8_bits"]) == {"0", str(steps)}
    # ... which are the Python bank's.
    bank = noise_bank(bundle.manifest.pipeline.noise.seed, steps, *vectors["shape"][1:])
    assert [f"0x{int(b):08x}" for b in bank[steps].reshape(-1)[:8].view(np.uint32)] == noise["first8_bits"][str(steps)]


def test_check_golden_fails_on_a_wrong_recorded_score(cpp_tools: Path, bundle: Any, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    doc = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    doc["golden"]["images"][0]["scores"][0]["score"] += 2e-6
    (copy / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    result = _run(cpp_tools / "diffv2iqa-score", "--bundle", copy, "--check-golden")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and 1e-6 < report["max_abs_diff"] < 3e-6
    assert "golden check FAILED" in result.stderr


# --- (b) real photographs against the Python CLI --------------------------------------------------------------------

# (name, height, width): different aspects, one below the 64-pixel crop (upscaled), one PPM.
PHOTOS = [("astronaut", 112, 112), ("chelsea", 100, 151), ("coffee", 144, 97), ("camera", 80, 128),
          ("rocket", 48, 90), ("immunohistochemistry", 117, 101)]
# resize224 squashes the image to one crop in either mode: checked once, in crops mode.
POLICIES = {"crops": ["center", "five", "grid:3", "resize224"], "faithful": ["center", "five", "grid:3"]}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = []
    for k, (name, h, w) in enumerate(PHOTOS):
        rgb = photo(name)
        rgb = resize_rgb(rgb if rgb.ndim == 3 else np.stack([rgb] * 3, axis=2), h, w)
        path = folder / f"{name}-{w}x{h}.{'ppm' if k == 1 else 'png'}"
        if path.suffix == ".ppm":
            write_ppm(path, rgb)
        else:
            Image.fromarray(rgb).save(path)
        files.append(path)
    return files


@pytest.mark.parametrize("mode", ["crops", "faithful"])
def test_photographs_equal_the_python_cli(mode: str, cpp_tools: Path, bundle: Any, photo_files: list[Path]) -> None:
    worst = 0.0
    for policy in POLICIES[mode]:
        # One ONNX Runtime thread on both sides: the same numbers as any count here (the golden check covers the
        # default), and no spinning workers fighting over a shared CI machine's cores.
        args = ["--bundle", bundle.root, "--mode", mode, "--crops", policy, "--threads", "1"]
        ours = _run(cpp_tools / "diffv2iqa-score", *args, *photo_files)
        assert ours.returncode == 0, ours.stderr
        theirs = _run(CLI, "score", "--backend", "onnxruntime", "--format", "json", *args, *photo_files)
        assert theirs.returncode == 0, theirs.stderr
        got, want = json.loads(ours.stdout)["results"], json.loads(theirs.stdout)["results"]
        assert [r["path"] for r in got] == [r["path"] for r in want] == [str(p) for p in photo_files]
        for g, r in zip(got, want, strict=True):
            assert g["error"] is None and r["error"] is None, (g, r)
            assert g["crops"] == r["crops"] == {"center": 1, "five": 5, "grid:3": 9, "resize224": 1}[policy]
            for key in ("score", "vcg", "vda"):
                diff = abs(g[key] - r[key])
                assert diff <= TOLERANCE, (policy, g["path"], key, g[key], r[key])
                worst = max(worst, diff)
    print(f"{mode}: max abs diff vs the Python CLI {worst!r} ({len(photo_files)} photographs x {POLICIES[mode]})")


def test_the_largest_seed_equals_the_python_cli(cpp_tools: Path, bundle: Any, photo_files: list[Path]) -> None:
    """A seed above 2**63 (both 32-bit key words set) reaches the generator intact on both sides."""
    args = ["--bundle", bundle.root, "--mode", "faithful", "--crops", "center", "--seed", str(2**64 - 1),
            "--threads", "1", photo_files[4]]
    ours = _run(cpp_tools / "diffv2iqa-score", *args)
    theirs = _run(CLI, "score", "--backend", "onnxruntime", "--format", "json", *args)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    got, want = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert got["seed"] == 2**64 - 1
    default = json.loads(_run(cpp_tools / "diffv2iqa-score", *args[:6], "--threads", "1", photo_files[4]).stdout)
    assert got["results"][0]["score"] != default["results"][0]["score"]  # the seed matters
    for key in ("score", "vcg", "vda"):
        assert abs(got["results"][0][key] - want["results"][0][key]) <= TOLERANCE, key


# --- errors ----------------------------------------------------------------------------------------------------------

def test_bad_files_are_error_rows_and_bad_usage_is_refused(cpp_tools: Path, bundle: Any, photo_files: list[Path],
                                                           tmp_path: Path) -> None:
    tool = cpp_tools / "diffv2iqa-score"
    not_png = tmp_path / "text.png"
    not_png.write_text("hello", encoding="utf-8")
    tiny = tmp_path / "tiny.ppm"
    write_ppm(tiny, np.zeros((2, 2, 3), np.uint8))
    result = _run(tool, "--bundle", bundle.root, photo_files[0], not_png, tmp_path / "missing.png", tiny)
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert rows[0]["error"] is None and isinstance(rows[0]["score"], float)
    assert "not a PNG or binary PPM" in rows[1]["error"] and rows[1]["score"] is None
    assert rows[2]["error"] == "file not found"
    assert "too small" in rows[3]["error"]
    for args, message in [(["--bundle", bundle.root, "--frobnicate", photo_files[0]], "unknown option '--frobnicate'"),
                          (["--bundle", bundle.root, "--crops", "grid:0", photo_files[0]], "not a crop policy"),
                          (["--bundle", bundle.root, "--seed", "18446744073709551616", photo_files[0]], "--seed"),
                          ([photo_files[0]], "--bundle DIR is required"),
                          (["--bundle", tmp_path / "nowhere", photo_files[0]], "no bundle at")]:
        result = _run(tool, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    # A damaged bundle is refused with load_bundle's message.
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    (copy / "vda.fp32.onnx").write_bytes(b"")
    result = _run(tool, "--bundle", copy, photo_files[0])
    assert result.returncode == 2 and "vda.fp32.onnx is 0 bytes" in result.stderr, result.stderr


# --- issue 22: hostile input ------------------------------------------------------------------------------------------

# Runs argv[3:] under RLIMIT_AS = argv[1] bytes with a timeout of argv[2] s, then prints its peak RSS on stderr. The
# command is forked from this small interpreter, not from pytest: a child's ru_maxrss counts the pages it shares with
# the process it was forked from, and pytest's (torch loaded) are ~500 MB.
_MEASURE = """
import os, resource, signal, sys
limit, timeout = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[3], sys.argv[3:])
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(timeout)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\n@peak_rss %d\\n" % (usage.ru_maxrss * 1024))
sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def _run_measured(args: list[Any], address_space: int, timeout: int = 120) -> tuple[int, str, str, int]:
    """Run with RLIMIT_AS = address_space bytes: (exit status, stdout, stderr, the command's own peak RSS in bytes)."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(address_space), str(timeout), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout + 30)
    err, _, peak = result.stderr.rpartition("\n@peak_rss ")
    return result.returncode, result.stdout, err, int(peak)


def test_huge_sparse_files_are_error_rows_in_bounded_memory(cpp_tools: Path, bundle: Any, photo_files: list[Path],
                                                            tmp_path: Path) -> None:
    """Issue 22, case 2: files were read whole, so a 20 GB sparse file cost 20 GB (std::bad_alloc under a memory
    limit: exit 2, no output, the good images unscored). Now they are streamed: memory is bounded by the decoded
    pixels, not the file size."""
    size = 20 << 30
    zeros, tail, ppm = tmp_path / "x.png", tmp_path / "tail.png", tmp_path / "big.ppm"
    shutil.copy(photo_files[0], tail)  # a valid PNG followed by 20 GB of zeros after its IEND
    ppm.write_bytes(b"P6\n100 100\n255\n")  # a 100x100 header over 20 GB
    try:
        for path in (zeros, tail, ppm):
            with open(path, "ab") as f:
                f.truncate(size)
    except OSError as exc:
        pytest.skip(f"this filesystem cannot hold a 20 GB sparse file ({exc})")
    status, out, err, peak = _run_measured(
        [cpp_tools / "diffv2iqa-score", "--bundle", bundle.root, "--threads", "1", photo_files[0], zeros, tail, ppm],
        address_space=3 << 30)
    assert status == 1 and out, (status, err)
    rows = json.loads(out)["results"]
    assert [r["path"] for r in rows] == [str(p) for p in (photo_files[0], zeros, tail, ppm)]
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert rows[2]["score"] == rows[0]["score"]  # the trailing zeros are never read
    assert rows[1]["score"] is None and "not a PNG or binary PPM" in rows[1]["error"]
    assert rows[3]["error"] == f"PPM of 100x100 pixels has {size - 15} bytes of pixels, expected 30000"
    assert peak < 300 << 20, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"20 GB sparse inputs: peak RSS {peak / 2**20:.0f} MiB")


def test_unlisted_external_data_is_refused_before_scoring(cpp_tools: Path, bundle: Any, photo_files: list[Path],
                                                          tmp_path: Path) -> None:
    """Issue 22, case 6: a graph reading an unlisted data file was scored (its weights anything); now refused."""
    tool = cpp_tools / "diffv2iqa-score"
    args = ["--threads", "1", "--crops", "center", photo_files[0]]
    want = json.loads(_run(tool, "--bundle", bundle.root, *args).stdout)["results"][0]
    listed = external_vcg(bundle.root, tmp_path / "listed")
    got = json.loads(_run(tool, "--bundle", listed, *args).stdout)["results"][0]
    assert (got["score"], got["vcg"]) == (want["score"], want["vcg"])  # external data itself is fine
    unlisted = external_vcg(bundle.root, tmp_path / "unlisted", listed=False, data_scale=3.0)
    result = _run(tool, "--bundle", unlisted, *args)
    assert result.returncode == 2 and result.stdout == "", result.stdout  # before: scored, vcg from other weights
    assert "vcg.fp32.onnx (the fp32 vcg graph) loads external data from 'vcg.data', which is not a file listed" \
        in result.stderr, result.stderr


def test_check_golden_refuses_test_vectors_scoring_never_uses(cpp_tools: Path, bundle: Any, tmp_path: Path) -> None:
    """Issue 22, case 7: --check-golden computed noise rows of whatever shape the manifest gave ([3, 4096, 4096]: 44 s
    on the tiny bundle; [4096]*3: bad_alloc) and scored the golden inputs at any step count before saying the vectors
    differ (1000 copied steps: 75 s on the tiny bundle, 10000: hours on the paper model)."""
    cases = {c["name"]: c for c in EDITS}
    for name, budget in [("test-vector-shape-4096", 10.0), ("test-vector-shape-cube", 10.0),
                         ("steps-1000-copied-tables", 10.0)]:
        copy = tmp_path / name
        shutil.copytree(bundle.root, copy)
        doc = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
        apply_edits(doc, cases[name]["edits"])
        (copy / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
        start = time.monotonic()
        status, out, err, _ = _run_measured([cpp_tools / "diffv2iqa-score", "--bundle", copy, "--check-golden",
                                             "--threads", "1"], address_space=8 << 30, timeout=int(budget * 2))
        seconds = time.monotonic() - start
        assert seconds < budget, (name, seconds, err)
        if cases[name]["refused_at"] is not None:
            assert status == 2 and out == "" and f"at {cases[name]['refused_at']}" in err, (name, status, err)
        else:  # the bundle loads; the noise rows differ, so no golden input is scored
            report = json.loads(out)
            assert status == 1 and report["ok"] is False and report["golden"] == [], (name, err)
            assert report["noise"]["rows"] == 1001 and report["noise"]["ok"] is False
            assert "the noise test vectors DIFFER" in err and "not scored" in err, err
        print(f"{name}: exit {status} in {seconds:.1f} s")


# --- issue 22, case 9: the shared hostile images, one rule each, both decoders ----------------------------------------

def test_hostile_images_follow_the_shared_rules(cpp_tools: Path, tmp_path: Path) -> None:
    """tests/data/hostile/images (and the 200 MB cases made here): both decoders accept or refuse each file alike, and
    the accepted ones decode to the same bytes. Before: eXIf without a TIFF byte order ("Exif\\0\\0" + TIFF) scored
    unrotated here and rotated by Pillow, an eXIf after the image data ignored here, over-long or short tRNS chunks
    discarded here (Pillow used or refused them), a comment right after the magic number accepted here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_images", REPO / "tests/data/hostile/make_images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = REPO / "tests" / "data" / "hostile" / "images"
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    files = {folder / name: entry for name, entry in index.items()}
    files.update({tmp_path / name: entry for name, entry in module.write_large(tmp_path).items()})
    for path, entry in files.items():
        out = tmp_path / (path.name + ".out.ppm")
        result = _run(cpp_tools / "contract_probe", "decode", path, out, timeout=60)
        try:
            python: np.ndarray | str = load_image(path)
        except Exception as exc:  # noqa: BLE001 - the refusal's message is compared below
            python = str(exc)
        if entry["accept"] and path.name != "exif-after-idat-rotated.png":
            assert result.returncode == 0, (path.name, result.stderr)
            assert isinstance(python, np.ndarray) and np.array_equal(read_ppm(out), python), path.name
        else:  # refused by both; a rotation the Python decoder applies is refused here (cpp/README.md)
            assert result.returncode == 1 and entry["cpp"] in result.stderr, (path.name, result.stderr)
            assert entry["accept"] or (isinstance(python, str) and entry["python"] in python), (path.name, python)

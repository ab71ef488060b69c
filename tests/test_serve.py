"""`diffv2iqa-trt serve` against the real server (Triton through PyTriton) on free loopback ports.

The server runs from the serving virtualenv (NumPy 1.26, PyTriton); these tests run in the development one (NumPy 2)
and talk to it with tritonclient over HTTP and gRPC. Every score is compared, bit for bit, with the in-process
Scorer's on the same bundle, backend and image.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_server import ServeProcess, free_ports, port_free, serve_python

from diffv2iqa_trt.benchmarks.serving_load import png_bomb
from diffv2iqa_trt.errors import DependencyError
from diffv2iqa_trt.serving.environment import (
    Interpreter,
    check_serving_environment,
    serving_problems,
    use_own_libpython,
)

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_PIXELS = 1_000_000  # the module server's pixel limit: the test photos are below it, a 1100x1000 image above
MAX_IMAGE_BYTES = 2_000_000
MAX_BATCH = 8
OUTPUTS = ("score", "vcg", "vda", "crops", "error")
Row = tuple[float, float, float, int, str]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def python() -> str:
    return serve_python()


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Any, str]) -> Path:
    return Path(auto_built[0].root)


def _encode(rgb: np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _ppm(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    return f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(rgb).tobytes()


@pytest.fixture(scope="module")
def images(photos: list[np.ndarray]) -> dict[str, tuple[np.ndarray, bytes]]:
    """name -> (RGB pixels, an encoded file of them), in four formats; the PPM ends in zero bytes (a black last
    pixel), which a transport that treats BYTES as C strings would cut."""
    astronaut, chelsea, coffee, camera = photos
    coffee = coffee.copy()
    coffee[-1, -4:] = 0
    return {"astronaut.png": (astronaut, _encode(astronaut, "PNG")),
            "chelsea.jpg": (chelsea, _encode(chelsea, "JPEG", quality=90)),
            "coffee.ppm": (coffee, _ppm(coffee)),
            "camera-grey.png": (camera, _encode(camera[..., 0], "PNG"))}


@pytest.fixture(scope="module")
def expected(bundle: Path, images: dict[str, tuple[np.ndarray, bytes]],
             tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Row]:
    """(name, "pixels" | "image") -> the in-process result: the pixels as an array, the encoded bytes as a file."""
    import diffv2iqa_trt

    folder = tmp_path_factory.mktemp("encoded")
    out: dict[tuple[str, str], Row] = {}
    with diffv2iqa_trt.load(bundle, backend="onnxruntime") as scorer:
        for name, (rgb, encoded) in images.items():
            (folder / name).write_bytes(encoded)
            for kind, value in (("pixels", rgb), ("image", folder / name)):
                r = scorer.score(value)[0]
                assert r.ok, r.error
                assert r.score is not None and r.vcg is not None and r.vda is not None
                out[name, kind] = (r.score, r.vcg, r.vda, r.crops, "")
    return out


@pytest.fixture(scope="module")
def server(python: str, bundle: Path) -> Iterator[ServeProcess]:
    served = ServeProcess(python, bundle, None, "--max-batch", str(MAX_BATCH), "--max-queue-delay-ms", "20",
                          "--max-pixels", str(MAX_PIXELS), "--max-image-bytes", str(MAX_IMAGE_BYTES))
    try:
        yield served.wait_ready()
    finally:
        served.close()


# ------------------------------------------------------------------------------------------------------- clients


def _inputs(module: Any, kind: str, value: np.ndarray | bytes | list[bytes]) -> list[Any]:
    if kind == "pixels":
        assert isinstance(value, np.ndarray)
        array = value if value.ndim == 4 else value[None]
        inp = module.InferInput("pixels", list(array.shape), module_dtype(array))
        inp.set_data_from_numpy(array)
    else:
        rows = value if isinstance(value, list) else [value]
        array = np.array(rows, dtype=object).reshape(len(rows), 1)
        inp = module.InferInput("image", [len(rows), 1], "BYTES")
        inp.set_data_from_numpy(array)
    return [inp]


def module_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def _rows(result: Any) -> list[Row]:
    arrays = {name: result.as_numpy(name) for name in OUTPUTS}
    n = arrays["score"].shape[0]
    assert all(a.shape == (n, 1) for a in arrays.values()), {k: a.shape for k, a in arrays.items()}
    return [(float(arrays["score"][i, 0]), float(arrays["vcg"][i, 0]), float(arrays["vda"][i, 0]),
             int(arrays["crops"][i, 0]), bytes(arrays["error"][i, 0]).decode()) for i in range(n)]


def http_score(address: str, kind: str, value: np.ndarray | bytes | list[bytes], *,
               parameters: dict[str, Any] | None = None, timeout: float = 60.0) -> list[Row]:
    with tritonhttp.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout) as client:
        return _rows(client.infer("diffv2iqa", _inputs(tritonhttp, kind, value), parameters=parameters))


def grpc_score(address: str, kind: str, value: np.ndarray | bytes | list[bytes]) -> list[Row]:
    with tritongrpc.InferenceServerClient(address) as client:
        return _rows(client.infer("diffv2iqa", _inputs(tritongrpc, kind, value), client_timeout=60.0))


def _unscored(row: Row) -> str:
    """The row's error, checking that nothing else claims a score."""
    score, vcg, vda, crops, error = row
    assert np.isnan(score) and np.isnan(vcg) and np.isnan(vda) and crops == 0, row
    assert error, row
    return error


# ---------------------------------------------------------------------------------------------------- readiness


def test_ready_only_after_warm_up(server: ServeProcess) -> None:
    """From the process start, /v2/health/ready refuses connections until the model is loaded (the server and the
    model turn ready together: never "server ready, no model"), and that comes after the warm-up ran."""
    ready_at, server_ready, model_ready = server.polls[-1]
    assert (server_ready, model_ready) == (200, 200), server.polls
    before = server.polls[:-1]
    assert before and all(isinstance(s, str) and isinstance(m, str) for _, s, m in before), server.polls
    warm = [t for t, line in server.stderr if line.startswith("warm-up of instance 0: scored in")]
    assert warm and warm[0] < ready_at, server.output()
    startup = [line for _, line in server.stdout]
    assert len(startup) == 1 and f"http://127.0.0.1:{server.http_port} (HTTP)" in startup[0] and \
        f"grpc://127.0.0.1:{server.grpc_port} (gRPC)" in startup[0], startup


# ---------------------------------------------------------------------------------------------- bit-for-bit scores


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_equal_in_process(server: ServeProcess, images: dict[str, tuple[np.ndarray, bytes]],
                                 expected: dict[tuple[str, str], Row], protocol: str) -> None:
    """Every photo, as `pixels` and as encoded `image` bytes, scores exactly as the in-process Scorer scores it."""
    call: Callable[..., list[Row]] = (lambda k, v: http_score(server.http_address, k, v)) if protocol == "http" \
        else (lambda k, v: grpc_score(server.grpc_address, k, v))
    for name, (rgb, encoded) in images.items():
        assert call("pixels", rgb) == [expected[name, "pixels"]], name
        assert call("image", encoded) == [expected[name, "image"]], name
    # A request of several rows: each row its own result, in order.
    names = list(images)
    assert call("image", [images[n][1] for n in names]) == [expected[n, "image"] for n in names]
    rgb = images["astronaut.png"][0]
    assert call("pixels", np.stack([rgb, rgb])) == [expected["astronaut.png", "pixels"]] * 2


# ------------------------------------------------------------------------------------------------------ bad input


class _GoodTraffic:
    """Clients sending good requests (alternately `pixels` and encoded `image`) until stopped; every response
    is kept with what it should have been."""

    def __init__(self, address: str, images: dict[str, tuple[np.ndarray, bytes]],
                 expected: dict[tuple[str, str], Row], clients: int = 3) -> None:
        self.stop = threading.Event()
        self.seen: list[tuple[Row, Row]] = []
        self.failures: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, args=(address, images, expected, i), daemon=True)
                         for i in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, address: str, images: dict[str, tuple[np.ndarray, bytes]],
             expected: dict[tuple[str, str], Row], offset: int) -> None:
        names = list(images)
        i = offset
        with tritonhttp.InferenceServerClient(address, network_timeout=60.0) as client:
            while not self.stop.is_set():
                name, kind = names[i % len(names)], ("pixels", "image")[i % 2]
                value = images[name][0] if kind == "pixels" else images[name][1]
                try:
                    got = _rows(client.infer("diffv2iqa", _inputs(tritonhttp, kind, value)))
                except BaseException as exc:  # noqa: BLE001 - recorded, the test fails on it
                    self.failures.append(exc)
                    return
                self.seen.append((got[0], expected[name, kind]))
                i += 1

    def finish(self) -> list[tuple[Row, Row]]:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not self.failures, self.failures
        return self.seen


def test_bad_inputs_amid_good_requests(server: ServeProcess, images: dict[str, tuple[np.ndarray, bytes]],
                                       expected: dict[tuple[str, str], Row]) -> None:
    """Each bad request gets its own error (an `error` string in a 200 response where it reached the model, a
    Triton error status where Triton's own checks refuse it); the good requests around it, batched with it, get
    their exact scores; the server serves afterwards."""
    address = server.http_address
    # 1.1 MP > MAX_PIXELS; smooth, so that its PNG stays below MAX_IMAGE_BYTES
    big = np.broadcast_to((np.arange(1100) % 256).astype(np.uint8)[None, :, None], (1000, 1100, 3)).copy()
    traffic = _GoodTraffic(address, images, expected)
    try:
        time.sleep(0.3)
        errors = {
            "not an image": http_score(address, "image", b"this is plain text, not an image"),
            "empty": http_score(address, "image", b""),
            "bomb": http_score(address, "image", png_bomb()),
            "big encoded": http_score(address, "image", _encode(big, "PNG", compress_level=1)),
            "big pixels": http_score(address, "pixels", big),
            "zero rows": http_score(address, "pixels", np.zeros((1, 0, 300, 3), np.uint8)),
            "oversized bytes": http_score(address, "image", b"\0" * (MAX_IMAGE_BYTES + 1)),
            "crops parameter": http_score(address, "pixels", images["astronaut.png"][0],
                                          parameters={"crops": "five"}),
        }
        with tritonhttp.InferenceServerClient(address) as client:
            both = _inputs(tritonhttp, "pixels", images["astronaut.png"][0]) + \
                _inputs(tritonhttp, "image", images["astronaut.png"][1])
            errors["both inputs"] = _rows(client.infer("diffv2iqa", both))
        refused = {}  # refused by Triton before the model sees them: an error status, no response tensors
        for name, array in (("float pixels", np.zeros((1, 300, 300, 3), np.float32)),
                            ("four channels", np.zeros((1, 300, 300, 4), np.uint8)),
                            ("batch over max", np.zeros((MAX_BATCH + 1, 300, 300, 3), np.uint8))):
            with pytest.raises(InferenceServerException) as info:
                http_score(address, "pixels", array)
            refused[name] = str(info.value)
    finally:
        seen = traffic.finish()

    reasons = {name: [_unscored(row) for row in rows] for name, rows in errors.items()}
    assert all(len(r) == 1 for r in reasons.values()), reasons
    assert "not an image file Pillow can read" in reasons["not an image"][0]
    assert "is empty (0 bytes)" in reasons["empty"][0]
    assert "10,000.0 megapixels" in reasons["bomb"][0] and "above the limit" in reasons["bomb"][0], reasons
    assert "1100x1000" in reasons["big encoded"][0] and "above the limit" in reasons["big encoded"][0]
    assert "1100x1000" in reasons["big pixels"][0] and "above the limit" in reasons["big pixels"][0]
    assert "(1, 0, 300, 3)" not in reasons["zero rows"][0] and "shape (0, 300, 3)" in reasons["zero rows"][0]
    assert f"above the server's limit of {MAX_IMAGE_BYTES:,} bytes" in reasons["oversized bytes"][0]
    assert "per-request crops is not supported" in reasons["crops parameter"][0]
    assert "exactly one of the inputs" in reasons["both inputs"][0]
    assert "FP32" in refused["float pixels"] and "UINT8" in refused["float pixels"], refused
    assert "[1,300,300,4]" in refused["four channels"].replace(" ", ""), refused
    assert f"must be <= {MAX_BATCH}" in refused["batch over max"], refused

    assert len(seen) >= 6, len(seen)  # good requests really ran alongside the bad ones
    wrong = [(got, want) for got, want in seen if got != want]
    assert not wrong, wrong[:3]
    assert http_score(address, "pixels", images["chelsea.jpg"][0]) == [expected["chelsea.jpg", "pixels"]]


# ------------------------------------------------------------------------------------------------------- faults


def test_sigkill_mid_load_then_restart_then_sigterm_drains(python: str, bundle: Path,
                                                           images: dict[str, tuple[np.ndarray, bytes]],
                                                           expected: dict[tuple[str, str], Row]) -> None:
    """SIGKILL with requests in flight: every client gets an error within its timeout (none hangs). A server
    restarted on the same ports serves exactly again; SIGTERM to it while requests are queued and running: each of
    them completes with its exact scores, at least one after the signal, and the process exits 0."""
    served = ServeProcess(python, bundle, None, "--drain-timeout", "1").wait_ready()
    ports = [served.http_port, served.grpc_port, served.metrics_port]
    timeout = 20.0
    outcomes: list[tuple[str, float]] = []
    killed = threading.Event()
    rgb = images["astronaut.png"][0]

    def client() -> None:
        while True:
            start = time.monotonic()
            try:
                http_score(served.http_address, "pixels", np.stack([rgb] * 4), timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                outcomes.append((type(exc).__name__, time.monotonic() - start))
                return
            if killed.is_set():
                outcomes.append(("ok after kill", time.monotonic() - start))

    try:
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        served.signal(signal.SIGKILL)
        killed.set()
        for t in threads:
            t.join(timeout=timeout + 10)
        assert not any(t.is_alive() for t in threads), "a client hung past its timeout"
        assert served.wait(timeout=5) == -signal.SIGKILL
        errors = [o for o in outcomes if o[0] != "ok after kill"]
        assert len(errors) == 4 and all(seconds < timeout for _, seconds in errors), outcomes
    finally:
        served.close()

    deadline = time.monotonic() + 30  # Triton, orphaned, drains for --drain-timeout before it lets the ports go
    while not all(port_free(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    again = ServeProcess(python, bundle, ports, "--max-batch", "4", "--max-queue-delay-ms", "0").wait_ready()
    want = [expected["astronaut.png", "pixels"]] * 4
    done: list[tuple[list[Row] | BaseException, float]] = []

    def drained_client() -> None:
        try:
            got: list[Row] | BaseException = http_score(again.http_address, "pixels", np.stack([rgb] * 4))
        except BaseException as exc:  # noqa: BLE001 - recorded, the test fails on it
            got = exc
        done.append((got, time.monotonic()))

    try:
        assert http_score(again.http_address, "pixels", rgb) == [expected["astronaut.png", "pixels"]]
        threads = [threading.Thread(target=drained_client, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        sent = again.signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        code = again.wait(timeout=60)
    finally:
        again.close()
    assert [got for got, _ in done] == [want] * 6, done
    assert max(at for _, at in done) > sent, "every request had finished before SIGTERM: nothing was drained"
    assert code == 0, again.output()
    assert any(line.startswith("SIGTERM: draining") for _, line in again.stderr), again.output()


# --------------------------------------------------------------------------------- refusals before anything runs


def _serve_cli(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "diffv2iqa_trt.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])


def test_busy_port_and_missing_bundle_are_clear_errors(python: str, bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        http, grpc, metrics = (str(p) for p in free_ports(3))
        taken = _serve_cli(python, "--bundle", str(bundle), "--http-port", http, "--grpc-port", str(port),
                           "--metrics-port", metrics)
    assert taken.returncode == 2, taken.stderr
    assert f"127.0.0.1:{port} (--grpc-port) is in use" in taken.stderr and "pick a free port with --grpc-port" in \
        taken.stderr
    missing = _serve_cli(python, "--bundle", str(tmp_path / "nothing"), "--http-port", http, "--grpc-port", grpc,
                         "--metrics-port", metrics)
    assert missing.returncode == 2 and "no bundle at" in missing.stderr, missing.stderr


def test_serving_problems_name_each_fix() -> None:
    """What `serve` says in an environment that cannot host Triton's Python backend (checked before anything
    starts, in any environment: the development one has NumPy 2 and no PyTriton)."""
    good = Interpreter(executable="/x/bin/python", numpy_version="1.26.4", has_pytriton=True, shared_libpython=True,
                       libdir=Path(sysconfig.get_config_var("LIBDIR")), libpython=sysconfig.get_config_var("LDLIBRARY"))
    if not (good.libdir / str(good.libpython)).exists():  # type: ignore[operator]
        pytest.skip("this Python has no shared libpython to point at")
    assert serving_problems(good) == []
    dev = Interpreter(**{**good.__dict__, "numpy_version": "2.4.6", "has_pytriton": False})
    with pytest.raises(DependencyError) as info:
        check_serving_environment(dev)
    message = str(info.value)
    assert "PyTriton (nvidia-pytriton) is not installed in /x/bin/python" in message
    assert "NumPy 2.4.6 is installed" in message and "serving needs NumPy < 2" in message
    assert "pip install 'diffv2iqa-trt[serve]'" in message
    static = Interpreter(**{**good.__dict__, "shared_libpython": False})
    assert "built without a shared libpython (Py_ENABLE_SHARED=0)" in serving_problems(static)[0]
    assert "--enable-shared" in serving_problems(static)[0]
    moved = Interpreter(**{**good.__dict__, "libdir": Path("/nonexistent")})
    assert "is not in its LIBDIR" in serving_problems(moved)[0]
    env = use_own_libpython(good, {"LD_LIBRARY_PATH": f"/usr/lib:{good.libdir}"})
    assert env["LD_LIBRARY_PATH"] == f"{good.libdir}:/usr/lib"


def test_score_requests_gives_each_row_its_own_result(bundle: Path, images: dict[str, tuple[np.ndarray, bytes]],
                                                      expected: dict[tuple[str, str], Row]) -> None:
    """The infer function's core without a server: requests of several rows, good and bad mixed, one Scorer call,
    each row its own result in order."""
    import diffv2iqa_trt
    from diffv2iqa_trt.serving.requests import RequestLimits, score_requests

    class Request:
        def __init__(self, data: dict[str, np.ndarray], parameters: dict[str, Any] | None = None) -> None:
            self.data, self.parameters = data, parameters

    rgb, png = images["astronaut.png"]
    requests = [Request({"image": np.array([[png], [b"junk"], [images["coffee.ppm"][1]]], dtype=object)}),
                Request({"pixels": np.stack([rgb, rgb])}),
                Request({}),
                Request({"pixels": rgb[None]}, {"mode": "faithful"})]
    calls = []
    with diffv2iqa_trt.load(bundle, backend="onnxruntime") as scorer:
        score = scorer.score
        scorer.score = lambda inputs, **kw: calls.append(len(inputs)) or score(inputs, **kw)  # type: ignore[method-assign]
        responses = score_requests(scorer, requests, RequestLimits())
    assert calls == [5]  # every good row of the batch in one call
    rows = [_rows(_Result(r)) for r in responses]
    assert rows[0][0] == expected["astronaut.png", "image"] and rows[0][2] == expected["coffee.ppm", "image"]
    assert "not an image file" in _unscored(rows[0][1])
    assert rows[1] == [expected["astronaut.png", "pixels"]] * 2
    assert "this one has neither" in _unscored(rows[2][0])
    assert "per-request mode is not supported" in _unscored(rows[3][0])


class _Result:
    """A response dict read like a tritonclient result."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray:
        return self.arrays[name]


# --------------------------------------------------------------------------------------------- README examples

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block(start: str, end: str, language: str) -> str:
    import re

    text = README.read_text()
    section = text[text.index(start) + len(start):text.index(end)]
    code = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert code is not None, f"no ```{language} block between {start} and {end} in README.md"
    return code.group(1)


def _on_test_server(code: str, server: ServeProcess) -> str:
    assert "127.0.0.1:8000" in code or "127.0.0.1:8001" in code
    return code.replace("127.0.0.1:8000", server.http_address).replace("127.0.0.1:8001", server.grpc_address)


def test_readme_client_example_scores_as_in_process(server: ServeProcess, images: dict[str, tuple[np.ndarray, bytes]],
                                                    expected: dict[tuple[str, str], Row], tmp_path: Path) -> None:
    """The README's tritonclient example (HTTP `image`, gRPC `pixels`), run as written against the test server: the
    scores it prints are the in-process ones, bit for bit (Python prints a float's shortest round-trip form)."""
    import contextlib

    code = _readme_block("<!-- serve-client-example:start -->", "<!-- serve-client-example:end -->", "python")
    photo = tmp_path / "photo.png"
    photo.write_bytes(images["astronaut.png"][1])
    code = _on_test_server(code, server).replace('PHOTO = "photo.png"', f"PHOTO = {str(photo)!r}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md (serve client example)", "exec"), {})  # noqa: S102 - the README's own code
    http_line, grpc_line = printed.getvalue().splitlines()
    score, vcg, vda, *_ = expected["astronaut.png", "pixels"]
    assert http_line == f"{expected['astronaut.png', 'image'][0]} "  # score, then the empty error string
    assert grpc_line.split() == [str(score), str(vcg), str(vda)]


def test_readme_curl_example_scores_as_in_process(server: ServeProcess, images: dict[str, tuple[np.ndarray, bytes]],
                                                  expected: dict[tuple[str, str], Row], tmp_path: Path) -> None:
    """The README's curl request (binary `image` input), run by bash in a scratch folder against the test server."""
    import json
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = _readme_block("An encoded image with curl", "Pixels as plain JSON", "bash")
    (tmp_path / "photo.png").write_bytes(images["chelsea.jpg"][1])  # the README names photo.png; any format decodes
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", _on_test_server(script, server)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outputs = {o["name"]: o["data"] for o in json.loads(done.stdout)["outputs"]}
    assert outputs["score"] == [expected["chelsea.jpg", "image"][0]] and outputs["error"] == [""]

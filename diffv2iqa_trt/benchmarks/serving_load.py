"""Load on `diffv2iqa-trt serve`: many concurrent clients, every response checked, latency and throughput recorded,
and the serving overhead against the in-process Scorer on the same bundle, backend and batch size.

    python -m diffv2iqa_trt.benchmarks.serving_load --bundle B --serve-python .venv-serve/bin/python \\
        --requests 500 --clients 16 --out benchmarks/results/serving

1. In-process (no server running): `diffv2iqa_trt.load(B)` scores the request list in chunks of `--max-batch`
   images, half of `--rounds` before the server phase and the rest after it; the median round gives images/s, and
   the scores are the expected ones.
2. The server starts from the serving environment (PyTriton needs NumPy < 2) on free loopback ports, with the same
   `--max-batch`; the harness waits for readiness.
3. `--clients` threads, each with its own tritonclient (HTTP or gRPC), send the requests (encoded PNG bytes of real
   photographs, round robin); every response is compared with the in-process score, exactly. Lost = no response
   before the deadline or a transport error; wrong = a response whose score differs.
4. Triton's own statistics give the batch sizes the dynamic batcher formed; the server's resident memory (its
   process tree) is read before and after; SIGTERM stops it and its exit status is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import report

MODEL = "diffv2iqa"


def photographs(count: int) -> list[bytes]:
    """`count` PNG-encoded real photographs (scikit-image ships them), at a few sizes, so requests differ."""
    from PIL import Image

    from ..data.photos import photo

    base = [photo(name) for name in ("astronaut", "chelsea", "coffee", "camera")]
    sizes = [(96, 96), (128, 96), (160, 120), (200, 150)]
    encoded = []
    for i in range(count):
        img = Image.fromarray(base[i % len(base)]).resize(sizes[(i // len(base)) % len(sizes)])
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking 8-bit RGB PNG of 90 bytes whose header declares width x height pixels (10 gigapixels by
    default): a decoder that trusts the header allocates 30 GB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


# Requests that must come back as their own error, mixed into the load with --bad-every.
BAD_INPUTS = {"not an image": b"this is not an image file", "empty": b"", "decompression bomb": png_bomb()}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server, tritonserver, the Python-backend stubs),
    from /proc (Linux)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(p, 0) for p in tree) / 2**20


@dataclass
class Outcome:
    index: int
    seconds: float
    score: float | None
    error: str | None  # the response's own error string
    transport: str | None  # the request failed (connection, timeout, Triton error status)


def in_process(bundle: Path, images: list[bytes], max_batch: int, rounds: int, threads: int | None
               ) -> tuple[list[float | None], list[float]]:
    """Expected scores of each distinct image, and the seconds of each round over the whole request list."""
    import diffv2iqa_trt as iqa

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(images):
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(data)
            paths.append(path)
        with iqa.load(bundle, threads=threads) as scorer:  # as `serve` opens it: the default backend
            expected = [r.score for r in scorer.score(paths, chunk=max_batch)]
            seconds = []
            for _ in range(rounds):
                start = time.perf_counter()
                scorer.score(paths, chunk=max_batch)
                seconds.append(time.perf_counter() - start)
    return expected, seconds


def start_server(python: str, bundle: Path, ports: list[int], max_batch: int, delay_ms: int, threads: int | None,
                 timeout_s: float) -> subprocess.Popen[bytes]:
    import tritonclient.http as http

    cmd = [python, "-m", "diffv2iqa_trt.cli", "serve", "--bundle", str(bundle), "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(max_batch),
           "--max-queue-delay-ms", str(delay_ms)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"the server exited with {proc.returncode} before it was ready:\n{err[-2000:]}")
        try:
            if client.is_server_ready() and client.is_model_ready(MODEL):
                return proc
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server was not ready within {timeout_s:.0f} s")


def _drain_stderr(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode(errors="replace").rstrip())


def is_bad(index: int, bad_every: int) -> bool:
    return bad_every > 0 and index % bad_every == bad_every - 1


def payload(index: int, images: list[bytes], bad_every: int) -> bytes:
    """The bytes request `index` sends: an image, or with --bad-every N every Nth request one of BAD_INPUTS."""
    if is_bad(index, bad_every):
        bad = list(BAD_INPUTS.values())
        return bad[(index // bad_every) % len(bad)]
    return images[index % len(images)]


def run_load(protocol: str, port: int, images: list[bytes], requests: int, clients: int, timeout_s: float,
             deadline_s: float, bad_every: int = 0) -> tuple[list[Outcome], float]:
    """Send `requests` requests from `clients` threads; (outcomes in request order, wall seconds)."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    local = threading.local()
    stop_at = time.monotonic() + deadline_s

    def client() -> Any:
        if not hasattr(local, "client"):
            if protocol == "grpc":
                local.client = tc.InferenceServerClient(f"127.0.0.1:{port}")
            else:
                local.client = tc.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=timeout_s,
                                                        network_timeout=timeout_s)
        return local.client

    def one(index: int) -> Outcome:
        start = time.perf_counter()
        if time.monotonic() > stop_at:
            return Outcome(index, 0.0, None, None, "not sent: the deadline passed")
        data = np.array([payload(index, images, bad_every)], dtype=np.object_)
        tensor = tc.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(data.reshape(1, 1))
        try:
            kwargs: dict[str, Any] = {"client_timeout": timeout_s} if protocol == "grpc" else {}
            result = client().infer(MODEL, [tensor], **kwargs)
        except Exception as exc:  # noqa: BLE001 - every transport failure is counted, by kind
            return Outcome(index, time.perf_counter() - start, None, None, f"{type(exc).__name__}: {exc}"[:200])
        seconds = time.perf_counter() - start
        error = result.as_numpy("error").reshape(-1)[0]
        error_text = error.decode() if isinstance(error, bytes) else str(error)
        score = float(result.as_numpy("score").reshape(-1)[0])
        return Outcome(index, seconds, None if error_text else score, error_text or None, None)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one, range(requests)))
    return outcomes, time.perf_counter() - start


def batch_histogram(http_port: int) -> dict[int, int]:
    """Executions per batch size, from Triton's statistics of the model."""
    import tritonclient.http as http

    stats = http.InferenceServerClient(f"127.0.0.1:{http_port}").get_inference_statistics(MODEL)
    hist: dict[int, int] = {}
    for model in stats.get("model_stats", []):
        for entry in model.get("batch_stats", []):
            hist[int(entry["batch_size"])] = int(entry["compute_infer"]["count"])
    return dict(sorted(hist.items()))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def markdown(r: dict[str, Any]) -> str:
    load, ref = r["load"], r["in_process"]
    hist = ", ".join(f"{k}: {v}" for k, v in r["batches"].items())
    return "\n".join([
        "# Serving load: `diffv2iqa-trt serve` (PyTriton) against the in-process Scorer", "", "<!--header-->",
        f"CPU: {r['cpu']}; ISA: {' '.join(r['simd']) or 'none listed'}  ",
        f"Bundle: {r['model']} ({r['crops']} crops, {r['steps']} steps), the default backend (onnxruntime, the "
        f"bundle's plan), threads {r['threads'] or 'default'}, max batch {r['max_batch']},"
        f" queue delay {r['max_queue_delay_ms']} ms, protocol {r['protocol']}", "",
        "| figure | value |", "|---|---|",
        f"| requests sent / answered | {load['requests']} / {load['answered']} |",
        f"| lost (transport errors, deadline) | {load['lost']} |",
        f"| wrong (score differs from in-process) | {load['wrong']} |",
        f"| error responses | {load['error_responses']} |",
        f"| bad requests sent / answered with their own error | {load['bad_sent']} / "
        f"{load['bad_answered_with_error']} |",
        f"| clients | {r['clients']} |",
        f"| latency p50 / p99 of scored requests (ms) | {load['p50_ms']:.1f} / {load['p99_ms']:.1f} |",
        f"| served requests/s | {load['images_per_s']:.2f} |",
        f"| in-process Scorer images/s (median of {ref['rounds']}) | {ref['images_per_s']:.2f} |",
        f"| **overhead ratio (served / in-process)** | **{r['overhead_ratio']:.3f}** |",
        f"| dynamic batcher: executions per batch size | {hist} |",
        f"| server RSS before / after load (MiB) | {r['rss_mib'][0]:.0f} / {r['rss_mib'][1]:.0f} |",
        f"| server exit status after SIGTERM | {r['exit_status']} |", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--serve-python", default=os.environ.get("DIFFV2IQA_TRT_SERVE_PYTHON"),
                        help="the serving environment's python (default: $DIFFV2IQA_TRT_SERVE_PYTHON)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=16, help="distinct images the requests cycle through")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="scoring threads, in-process and in the server")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds over the request list")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, seconds")
    parser.add_argument("--deadline", type=float, default=900.0, help="no request is sent after this, seconds")
    parser.add_argument("--bad-every", type=int, default=0,
                        help="every Nth request sends bad bytes (not an image, empty, a decompression bomb) instead")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    if not args.serve_python:
        parser.error("give --serve-python (the serving virtualenv's python; `make install` builds .venv-serve)")

    from ..bundle import load_bundle

    bundle = load_bundle(args.bundle)
    images = photographs(args.images)
    requested = [images[i % len(images)] for i in range(args.requests)]
    # In-process rounds before and after the server phase, so a change of load on this shared machine weighs on
    # both sides of the ratio alike.
    before = (args.rounds + 1) // 2
    print(f"in-process: {before} rounds over {args.requests} images ...", file=sys.stderr)
    expected, rounds = in_process(args.bundle, requested, args.max_batch, before, args.threads)

    ports = free_ports(3)
    print("starting the server ...", file=sys.stderr)
    proc = start_server(args.serve_python, args.bundle, ports, args.max_batch, args.max_queue_delay_ms,
                        args.threads, timeout_s=300)
    server_lines: list[str] = []
    threading.Thread(target=_drain_stderr, args=(proc, server_lines), daemon=True).start()
    try:
        rss_before = tree_rss_mib(proc.pid)
        print(f"load: {args.requests} requests from {args.clients} clients ({args.protocol}) ...", file=sys.stderr)
        port = ports[1] if args.protocol == "grpc" else ports[0]
        outcomes, wall = run_load(args.protocol, port, images, args.requests, args.clients, args.timeout,
                                  args.deadline, args.bad_every)
        rss_after = tree_rss_mib(proc.pid)
        batches = batch_histogram(ports[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status: int | str = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = "killed after 120 s"
    if args.rounds > before:
        print(f"in-process: {args.rounds - before} more rounds ...", file=sys.stderr)
        again, more = in_process(args.bundle, requested, args.max_batch, args.rounds - before, args.threads)
        if again != expected:
            raise SystemExit("the in-process scores changed between rounds: the comparison would mean nothing")
        rounds += more
    ref_ips = args.requests / statistics.median(rounds)
    answered = [o for o in outcomes if o.transport is None]
    bad = [o for o in answered if is_bad(o.index, args.bad_every)]
    good = [o for o in answered if not is_bad(o.index, args.bad_every)]
    # Wrong: a good request whose score differs, or a bad one that was scored instead of answered with its error.
    wrong = [o for o in good if o.score != expected[o.index]] + [o for o in bad if o.error is None]
    latencies = [o.seconds * 1000 for o in good]
    p = bundle.manifest.pipeline
    results: dict[str, Any] = {
        "model": bundle.manifest.model.name, "crops": p.crops, "steps": p.steps, "cpu": report.machine()["cpu"],
        "simd": report.simd_flags(), "max_batch": args.max_batch, "max_queue_delay_ms": args.max_queue_delay_ms,
        "protocol": args.protocol, "clients": args.clients, "threads": args.threads,
        "in_process": {"rounds": args.rounds, "seconds": rounds, "images_per_s": ref_ips},
        "load": {"requests": args.requests, "answered": len(answered), "lost": args.requests - len(answered),
                 "wrong": len(wrong), "error_responses": sum(o.error is not None for o in answered),
                 "bad_sent": sum(is_bad(i, args.bad_every) for i in range(args.requests)),
                 "bad_answered_with_error": sum(o.error is not None for o in bad),
                 "bad_errors": sorted({o.error for o in bad if o.error})[:10],
                 "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                 "wall_s": wall, "images_per_s": len(answered) / wall,
                 "transport_errors": sorted({o.transport for o in outcomes if o.transport})[:10]},
        "overhead_ratio": (len(answered) / wall) / ref_ips, "batches": batches,
        "rss_mib": [rss_before, rss_after], "exit_status": status}
    name = args.name or f"serving_load_{bundle.manifest.model.name}_{args.protocol}"
    report.publish(args.out, name, results, markdown(results))
    if wrong or len(answered) < args.requests:
        raise SystemExit(f"{len(wrong)} wrong and {args.requests - len(answered)} lost responses")


if __name__ == "__main__":
    main()

"""`diffv2iqa-trt serve`: score images over HTTP and gRPC (KServe v2) on Triton Inference Server, through PyTriton.

A thin layer: options -> Scorers (the public API's `Scorer.from_options`, as `score` opens its model) -> the server
(serving/server.py). The interface of the `diffv2iqa` model is in serving/requests.py. Nothing here imports PyTriton:
the CLI loads this module in every environment, and `serve` says what to install where PyTriton is missing.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffV2IQAError
from .requests import DEFAULT_MAX_IMAGE_BYTES

DEFAULT_MAX_PIXELS = 100_000_000  # runtime.images.DEFAULT_MAX_PIXELS (not imported: `--help` stays light)


class Transport(str, Enum):  # serving.server.TRANSPORTS
    base64 = "base64"
    shared_memory = "shared-memory"


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"{typer.style('error:', fg='red', bold=True)} {message}", err=True)
    return typer.Exit(code)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    bundle: Annotated[Path, typer.Option(help="A bundle written by `build`; its graphs score the requests.")],
    backend: Annotated[str | None, typer.Option(
        help="onnxruntime (default), openvino, or on a GPU torch-cuda or tensorrt (as for `score`).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="Precision plan of the bundle's graphs (as for `score`; default: the plan the bundle was built "
             "with).")] = None,
    crops: Annotated[str | None, typer.Option(
        help="Crop policy: center, five, grid:N or resize224 (default: the bundle's). Requests cannot change it: "
             "a request parameter `crops` naming another policy is answered with an error.")] = None,
    mode: Annotated[str | None, typer.Option(
        help="crops or faithful (default: the bundle's); fixed per server, like --crops.")] = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on (HTTP, gRPC and metrics). The default, 127.0.0.1, accepts connections from this "
             "machine only. WARNING: any other address (0.0.0.0, a LAN or public IP) exposes an endpoint without "
             "authentication or TLS that decodes untrusted images on this machine's CPU; put it behind a proxy "
             "that authenticates, or a firewall.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="KServe v2 HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="KServe v2 gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=1, max=65535, help="Prometheus metrics port (/metrics).")]
    = 8002,
    max_batch: Annotated[int, typer.Option(min=1, max=1024, help="Most images Triton's dynamic batcher joins into "
                                                                  "one Scorer call (max_batch_size).")] = 8,
    max_queue_delay_ms: Annotated[float, typer.Option(
        min=0.0, max=10_000.0, help="How long the dynamic batcher may hold a request to fill a batch.")] = 2.0,
    instances: Annotated[int, typer.Option(
        min=1, max=64, help="Model instances, each with its own Scorer (and backend sessions) and thread; on a CPU, "
                            "set --threads so that instances x threads fits the cores.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Crops per graph call (as for `score`).")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda (as for `score`).")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, max=1024, help="CPU threads per instance for onnxruntime "
                                                                       "and openvino.")] = None,
    max_pixels: Annotated[int, typer.Option(
        min=1, help="Refuse images (encoded or pixels) of more pixels than this, before decoding.")]
    = DEFAULT_MAX_PIXELS,
    max_image_bytes: Annotated[int, typer.Option(
        min=1, help="Refuse an encoded image larger than this many bytes, unread.")] = DEFAULT_MAX_IMAGE_BYTES,
    drain_timeout: Annotated[int, typer.Option(
        min=0, max=3600, help="Seconds SIGTERM waits for in-flight requests (and open client connections) before "
                              "the server exits anyway.")] = 30,
    transport: Annotated[Transport, typer.Option(
        help="How requests travel between Triton's Python backend and the scorer: base64 (every request that "
             "reaches the model gets its own response) or shared-memory (PyTriton's tensor store: faster, about 19 "
             "percent more images/s on 2 CPU cores here, but a pixels tensor with a zero dimension fails every request "
             "batched with it).")] = Transport.base64,
    triton_log: Annotated[Path | None, typer.Option(
        help="Write Triton's own log here (default: a temporary file, shown if Triton fails).")] = None,
) -> None:
    """Serve a bundle on Triton Inference Server (model `diffv2iqa`, KServe v2 HTTP and gRPC) until SIGTERM or
    Ctrl-C, which drain the requests in flight. Needs the `serve` extra (PyTriton, NumPy < 2) in its own
    environment. Prints one line with the URLs when the model is loaded, warmed up and ready."""
    from .environment import check_ports, check_serving_environment
    from .requests import RequestLimits

    try:
        python = check_serving_environment()
        # Before the bundle loads (seconds): a busy port is reported at once (run_server checks again).
        check_ports(host, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
    except DiffV2IQAError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if not _is_loopback(host):
        typer.echo(f"{typer.style('warning:', fg='yellow', bold=True)} listening on {host}: anyone who can reach it "
                   "can send images to decode and score; there is no authentication or TLS", err=True)

    from ..api import Scorer
    from ..scorers import ScoreOptions
    from .server import Endpoints, ServerSettings, run_server

    options = ScoreOptions(bundle=bundle, backend=backend, precision=precision, crops=crops, mode=mode,
                           batch_size=batch_size, device=device, threads=threads)
    endpoints = Endpoints(host, http_port, grpc_port, metrics_port)
    try:
        scorers = [Scorer.from_options(options, max_pixels=max_pixels) for _ in range(instances)]
        spec = scorers[0].spec
        settings = ServerSettings(
            endpoints=endpoints, max_batch=max_batch, max_queue_delay_ms=max_queue_delay_ms,
            drain_timeout_s=drain_timeout, triton_log=triton_log, transport=transport.value,
            limits=RequestLimits(max_image_bytes=max_image_bytes, crops=spec.crops, mode=spec.mode))
        first = scorers[0]

        def ready(e: Endpoints) -> None:
            typer.echo(f"serving model diffv2iqa ({first.label}, {first.backend} {first.precision}, crops={spec.crops} "
                       f"mode={spec.mode}, {instances} instance(s), max batch {max_batch}) at {e.http} (HTTP) "
                       f"{e.grpc} (gRPC) {e.metrics} (metrics)")

        code = run_server(scorers, settings, python, on_ready=ready, report=lambda line: typer.echo(line, err=True))
    except DiffV2IQAError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    raise typer.Exit(code)

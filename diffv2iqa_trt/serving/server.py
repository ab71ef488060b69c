"""The server: the `diffv2iqa` model bound on Triton Inference Server through PyTriton, warm-up, readiness, drain.

Life cycle (`run_server`):
1. every instance's Scorer is warmed up in this process by the infer function itself (a `pixels` request and an
   encoded `image` request of a synthetic picture), before Triton starts: a bundle that cannot score never listens;
2. PyTriton writes the model into its local repository and starts `tritonserver`, which loads the model before it
   opens its ports: /v2/health/ready and /v2/models/diffv2iqa/ready answer 200 together, never "server ready,
   model missing" (PyTriton's default loads models over the repository API after the server is up). Requests that
   arrive before PyTriton's proxy has connected (about a second) wait, they are not refused;
3. SIGTERM or SIGINT: tritonserver is asked to stop (SIGINT), refuses new requests, lets in-flight ones finish (up to
   `drain_timeout_s`, Triton's --exit-timeout-secs; open keep-alive connections also hold it that long), then exits;
   `run_server` returns 0. If tritonserver dies by itself, `run_server` raises BackendError with its log's tail.

Transport between tritonserver's Python-backend stub and this process: `base64` (the default; PyTriton's
PYTRITON_NO_TENSORSTORE) or `shared-memory` (PyTriton's tensor store). The tensor store cannot copy an empty array
("memoryview: cannot cast view with zeros in shape or strides", raised in the stub while it serialises the whole
batch), so one `pixels` tensor with a zero dimension fails every request batched with it: any client could fail
its neighbours' requests. base64 hands such a request to the infer function like any other (its own error row), at
a cost: 80 requests of a 512x512 photo from 4 HTTP clients took 14.0 s against 11.8 s with the tensor store (tiny
bundle, ONNX Runtime, 2 shared CPU cores, two runs each).

PyTriton is imported inside the functions: this module loads (and is type-checked) where PyTriton is absent.
Each model instance (`instances`) has a Scorer of its own (a Scorer is not thread-safe) and its own thread in
PyTriton's proxy; Triton's dynamic batcher hands one instance up to `max_batch` requests at a time, scored by one
`Scorer.score` call.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError
from .environment import Interpreter, check_ports, use_own_libpython
from .requests import (
    IMAGE,
    MODEL_NAME,
    PIXELS,
    PlainRequest,
    RequestLimits,
    ServedRequest,
    error_responses,
    score_requests,
)

if TYPE_CHECKING:
    from ..api import Scorer

__all__ = ["TRANSPORTS", "Endpoints", "ServerSettings", "run_server", "warm_up"]

LOGGER = logging.getLogger(__name__)
InferFunction = Callable[[Sequence[ServedRequest]], list[dict[str, np.ndarray]]]
Report = Callable[[str], None]
# Readable by anyone who can reach the port (statistics feed load tests and dashboards); repository control, shared
# memory, tracing and logging settings stay behind PyTriton's generated token, which only this process knows.
RESTRICTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]
TRANSPORTS = ("base64", "shared-memory")
_LOG_TAIL = 4000  # characters of Triton's log shown when it fails


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def _name(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def http(self) -> str:
        return f"http://{self._name}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"grpc://{self._name}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self._name}:{self.metrics_port}/metrics"


@dataclass(frozen=True)
class ServerSettings:
    endpoints: Endpoints = field(default_factory=lambda: Endpoints("127.0.0.1", 8000, 8001, 8002))
    max_batch: int = 8  # requests (images) per Scorer.score call: Triton's max_batch_size
    max_queue_delay_ms: float = 2.0  # how long the dynamic batcher may hold a request to fill a batch
    drain_timeout_s: int = 30  # Triton's --exit-timeout-secs: how long SIGTERM waits for in-flight requests
    limits: RequestLimits = field(default_factory=RequestLimits)
    triton_log: Path | None = None  # Triton's own log; None: a temporary file, shown when Triton fails
    transport: str = "base64"  # or "shared-memory" (see the module docstring)


def _synthetic_rgb(height: int = 256, width: int = 320) -> np.ndarray:
    """A deterministic picture with edges and gradients (a flat image would exercise less of the decoder)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), ((x // 16 + y // 16) % 2) * 255], -1)
    return rgb.astype(np.uint8)


def warm_up(infer: InferFunction) -> float:
    """Run the infer function once on a `pixels` request and an encoded `image` request; seconds taken.
    BackendError if either is not scored (the bundle, backend or decoder cannot serve)."""
    from PIL import Image

    rgb = _synthetic_rgb()
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    requests = [PlainRequest({PIXELS: rgb[None]}), PlainRequest({IMAGE: np.array([[png.getvalue()]], object)})]
    start = time.perf_counter()
    responses = infer(requests)
    seconds = time.perf_counter() - start
    for name, response in zip((PIXELS, IMAGE), responses, strict=True):
        error = bytes(response["error"][0, 0]).decode()
        if error or not np.isfinite(response["score"][0, 0]):
            raise BackendError(f"the warm-up request ({name}) was not scored: {error or 'non-finite score'}")
    return seconds


def infer_function(scorer: Scorer, limits: RequestLimits) -> InferFunction:
    """The function PyTriton calls with a batch of requests (one list per Triton batch) for one model instance."""

    def infer(requests: Sequence[ServedRequest]) -> list[dict[str, np.ndarray]]:
        try:
            return score_requests(scorer, requests, limits)
        except Exception as exc:  # the whole batch failed (the backend): each request gets the error, no traceback
            LOGGER.exception("scoring a batch of %d requests failed", len(requests))
            return error_responses(requests, f"scoring failed on the server: {type(exc).__name__}: {exc}")

    return infer


def _triton_config(settings: ServerSettings, log_file: Path) -> Any:
    from pytriton.triton import TritonConfig

    e = settings.endpoints
    return TritonConfig(http_address=e.host, http_port=e.http_port, grpc_address=e.host, grpc_port=e.grpc_port,
                        metrics_address=e.host, metrics_port=e.metrics_port, allow_gpu_metrics=False,
                        strict_readiness=True, exit_timeout_secs=settings.drain_timeout_s, log_file=log_file)


def _bind(triton: Any, infer_functions: list[InferFunction], settings: ServerSettings) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    batcher = DynamicBatcher(max_queue_delay_microseconds=round(settings.max_queue_delay_ms * 1000))
    triton.bind(
        model_name=MODEL_NAME, infer_func=infer_functions, strict=True,
        inputs=[Tensor(name=IMAGE, dtype=np.bytes_, shape=(1,), optional=True),
                Tensor(name=PIXELS, dtype=np.uint8, shape=(-1, -1, 3), optional=True)],
        outputs=[Tensor(name="score", dtype=np.float64, shape=(1,)), Tensor(name="vcg", dtype=np.float64, shape=(1,)),
                 Tensor(name="vda", dtype=np.float64, shape=(1,)), Tensor(name="crops", dtype=np.int32, shape=(1,)),
                 Tensor(name="error", dtype=np.bytes_, shape=(1,))],
        config=ModelConfig(batching=True, max_batch_size=settings.max_batch, batcher=batcher))


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


class _StopSignals:
    """SIGTERM and SIGINT set an event (the main thread then drains and stops Triton); the old handlers come back on
    exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_server(scorers: Sequence[Scorer], settings: ServerSettings, python: Interpreter, *,
               report: Report = lambda line: None, on_ready: Callable[[Endpoints], None] = lambda e: None) -> int:
    """Serve until SIGTERM/SIGINT (then drain and return 0). One model instance per Scorer. `report` gets progress
    lines (warm-up, stopping), `on_ready` the endpoints once Triton and the model are ready. Raises ConfigError for a
    busy port, BackendError when the warm-up fails or Triton does not start or dies."""
    e = settings.endpoints
    check_ports(e.host, {"--http-port": e.http_port, "--grpc-port": e.grpc_port, "--metrics-port": e.metrics_port})
    infer_functions = [infer_function(scorer, settings.limits) for scorer in scorers]
    for i, infer in enumerate(infer_functions):
        report(f"warm-up of instance {i}: scored in {warm_up(infer):.2f} s")

    os.environ.update(use_own_libpython(python))  # PyTriton starts tritonserver with a copy of os.environ
    # Read by PyTriton here (when the model is bound) and by the stub (from the environment tritonserver passes on).
    if settings.transport == "base64":
        os.environ["PYTRITON_NO_TENSORSTORE"] = "1"
    else:
        os.environ.pop("PYTRITON_NO_TENSORSTORE", None)
    from pytriton.triton import Triton, TritonLifecyclePolicy, TritonSecurityConfig

    with tempfile.TemporaryDirectory(prefix="diffv2iqa-triton-") as scratch, _StopSignals() as stop:
        log_file = settings.triton_log or Path(scratch) / "tritonserver.log"
        triton = Triton(config=_triton_config(settings, log_file),
                        # The model is in the repository before tritonserver starts, so it is loaded before the
                        # server reports ready (see the module docstring).
                        triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True,
                                                                      local_model_store=True),
                        security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED_ENDPOINTS))
        try:
            _bind(triton, infer_functions, settings)
            try:
                triton.run()
            except Exception as exc:  # PyTriton raises TimeoutError, RuntimeError, its own errors
                raise BackendError(f"Triton Inference Server did not start ({type(exc).__name__}: {exc}); the end of "
                                   f"its log ({log_file}):\n{_log_tail(log_file)}") from None
            if not stop.event.is_set():
                on_ready(e)
            while not stop.event.wait(0.5):
                if not triton.is_alive():
                    raise BackendError(f"Triton Inference Server stopped unexpectedly; the end of its log "
                                       f"({log_file}):\n{_log_tail(log_file)}")
            report(f"{stop.received}: draining in-flight requests (up to {settings.drain_timeout_s} s), then exiting")
        finally:
            triton.stop()
    return 0

"""A `diffv2iqa-trt serve` process for the serve tests: started from the serving virtualenv on free loopback ports,
watched until ready, stopped (or killed) by its own process id.

The server runs in its own Python (DIFFV2IQA_TRT_SERVE_PYTHON: PyTriton needs NumPy < 2), the tests talk to it from
this one with tritonclient, as a client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from diffv2iqa_trt.benchmarks.serving_load import free_ports

SERVE_PYTHON = "DIFFV2IQA_TRT_SERVE_PYTHON"
REPO = Path(__file__).resolve().parents[1]


def serve_python() -> str:
    """The serving virtualenv's python, or skip (with why) where there is none."""
    python = os.environ.get(SERVE_PYTHON)
    if python and os.sep in python:
        python = os.path.abspath(python)  # the servers start in other folders (a relative path would not resolve)
    if not python:
        pytest.skip(f"{SERVE_PYTHON} is not set: the serve tests start the server from the serving virtualenv "
                    "(`make install` builds .venv-serve, `make test` sets it)")
    probe = subprocess.run([python, "-c", "import pytriton, numpy; assert numpy.__version__ < '2'"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot serve (needs nvidia-pytriton and NumPy < 2): {probe.stderr.strip()[-300:]}")
    return python


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_status(url: str) -> int | str:
    """The HTTP status of GET url, or the name of the connection error."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError) as exc:
        return type(getattr(exc, "reason", exc)).__name__


class ServeProcess:
    """`python -m diffv2iqa_trt.cli serve --bundle B ...` in a session of its own; stdout and stderr lines are kept
    with the time they arrived; the readiness endpoint is polled from the start (`polls`)."""

    def __init__(self, python: str, bundle: Path, ports: list[int] | None = None, *args: str) -> None:
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [python, "-m", "diffv2iqa_trt.cli", "serve", "--bundle", str(bundle), "--http-port", str(self.http_port),
             "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stdout: list[tuple[float, str]] = []
        self.stderr: list[tuple[float, str]] = []
        self.polls: list[tuple[float, int | str, int | str]] = []  # (time, server ready, model ready) on changes
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    @staticmethod
    def _read(stream: object, lines: list[tuple[float, str]]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append((time.monotonic(), line.rstrip("\n")))

    def _poll(self) -> None:
        """Readiness as seen from outside, from the moment the process starts until the server is ready."""
        while self.proc.poll() is None:
            state = (http_status(f"{self.http}/v2/health/ready"), http_status(f"{self.http}/v2/models/diffv2iqa/ready"))
            if not self.polls or self.polls[-1][1:] != state:
                self.polls.append((time.monotonic(), *state))
            if state[0] == 200:
                return
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        return "\n".join(["stdout:", *(line for _, line in self.stdout), "stderr:", *(line for _, line in self.stderr)])

    def wait_ready(self, timeout: float = 90.0) -> ServeProcess:
        """Until the startup line is printed (the server is ready then); fails with the output if it exits."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("serving model diffv2iqa") for _, line in self.stdout):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the readers' last lines
                raise AssertionError(f"serve exited with {self.proc.returncode} before it was ready\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready after {timeout} s\n{self.output()}")
            time.sleep(0.05)
        self._poller.join(timeout=10)
        return self

    def signal(self, sig: signal.Signals) -> float:
        os.kill(self.proc.pid, sig)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def close(self) -> None:
        """Stop it (SIGTERM, then SIGKILL), and anything left in its session (tritonserver, the backend stubs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the session this test started (its pid is the group id)
            os.killpg(self.proc.pid, signal.SIGKILL)

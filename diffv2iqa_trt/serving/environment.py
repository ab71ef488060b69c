"""What `serve` needs of this Python before it starts Triton: PyTriton, NumPy < 2, a shared libpython, free ports.

Triton's Python backend runs a stub process that embeds the interpreter: it must load this interpreter's own
libpython (a pyenv build beside Debian's libpython3.11.so picked Debian's and failed with "'_thread.RLock' object has
no attribute '_recursion_count'"), so the server process gets LD_LIBRARY_PATH = LIBDIR first; a Python built without
a shared libpython cannot host the stub at all. PyTriton 0.7.0's stub reads NumPy 2 arrays as empty, so serving runs
in an environment of its own with NumPy < 2 (`make install` builds .venv-serve).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DependencyError

__all__ = ["Interpreter", "check_ports", "check_serving_environment", "serving_problems", "use_own_libpython"]

INSTALL_HINT = ("install the serve extra in a virtualenv of its own: python -m venv .venv-serve && "
                ".venv-serve/bin/pip install 'diffv2iqa-trt[serve]' (`make install` builds it), then run "
                ".venv-serve/bin/diffv2iqa-trt serve")


@dataclass(frozen=True)
class Interpreter:
    """The facts about this Python that decide whether it can serve."""

    executable: str
    numpy_version: str
    has_pytriton: bool
    shared_libpython: bool  # sysconfig Py_ENABLE_SHARED
    libdir: Path | None  # sysconfig LIBDIR
    libpython: str | None  # sysconfig LDLIBRARY, e.g. libpython3.11.so

    @classmethod
    def current(cls) -> Interpreter:
        libdir = sysconfig.get_config_var("LIBDIR")
        return cls(executable=sys.executable, numpy_version=np.__version__,
                   has_pytriton=importlib.util.find_spec("pytriton") is not None,
                   shared_libpython=bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
                   libdir=Path(libdir) if libdir else None, libpython=sysconfig.get_config_var("LDLIBRARY"))


def serving_problems(python: Interpreter) -> list[str]:
    """Why this interpreter cannot run `serve`, one sentence per problem (empty: it can)."""
    problems = []
    if not python.has_pytriton:
        problems.append(f"PyTriton (nvidia-pytriton) is not installed in {python.executable}")
    if np.lib.NumpyVersion(python.numpy_version) >= "2.0.0":
        problems.append(f"NumPy {python.numpy_version} is installed; PyTriton 0.7.0's Python-backend stub reads "
                        "NumPy 2 arrays as empty, so serving needs NumPy < 2")
    if not python.shared_libpython:
        problems.append(f"{python.executable} was built without a shared libpython (Py_ENABLE_SHARED=0) and "
                        "Triton's Python-backend stub must load one: use a Python built with --enable-shared "
                        "(python.org and distribution builds are; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared "
                        "pyenv install 3.11)")
    elif python.libdir is None or not python.libpython or not (python.libdir / python.libpython).exists():
        problems.append(f"the shared libpython of {python.executable} ({python.libpython}) is not in its LIBDIR "
                        f"({python.libdir}); reinstall this Python")
    return problems


def check_serving_environment(python: Interpreter | None = None) -> Interpreter:
    """This interpreter if it can serve; DependencyError naming every problem and the fix otherwise."""
    python = python or Interpreter.current()
    problems = serving_problems(python)
    if problems:
        raise DependencyError("cannot serve from this Python: " + "; ".join(problems) + ". To fix: " + INSTALL_HINT)
    return python


def use_own_libpython(python: Interpreter, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the Triton server process (PyTriton passes os.environ on): this interpreter's LIBDIR
    first in LD_LIBRARY_PATH, so the stub loads this libpython and not another of the same version."""
    env = dict(os.environ if environ is None else environ)
    if python.libdir is not None:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != str(python.libdir)]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(python.libdir), *rest])
    return env


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """ConfigError unless each port (option name -> port) can be bound on `host` now, and no two are the same.

    Triton reports a busy port only in its log and then waits out its startup; checked here, the user gets the port
    and the option to change. (Another process may still take a port between this check and Triton's bind.)"""
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if port in seen:
            raise ConfigError(f"{option} and {seen[port]} are both {port}: give each endpoint its own port")
        seen[port] = option
    try:
        family, _, _, _, address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    for option, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
            try:
                probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"{host}:{port} ({option}) is in use by another process: stop it, or pick a "
                                      f"free port with {option}") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(f"--host {host} is not an address of this machine") from None
                raise ConfigError(f"cannot bind {host}:{port} ({option}): {exc.strerror or exc}") from None

"""A persisted TensorRT timing cache: where it lives, and reading and merging it safely.

The timing cache holds the measured speed of each tactic TensorRT tried; reusing it makes a rebuild take seconds
instead of minutes. It is valid only for one TensorRT version and one GPU model, so the default file is keyed by
both; a file given with --timing-cache is used as it is (TensorRT then ignores entries that do not match).
Several builds may share a cache (one per graph, or parallel jobs): a build merges what it learnt into the file under
an exclusive lock, re-reading the file inside the lock, and replaces it atomically, so no build loses another's
entries and a reader never sees half a file. The merge itself is TensorRT's (`ITimingCache.combine`), passed in.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .compatibility import Machine


def cache_key(machine: Machine) -> str:
    gpu = re.sub(r"[^a-z0-9]+", "-", machine.gpu.lower()).strip("-") or "gpu"
    return f"trt{machine.tensorrt}-sm{machine.sm}-{gpu}"


def default_cache_path(machine: Machine) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "diffv2iqa-trt" / "timing" / f"{cache_key(machine)}.cache"


class TimingCacheFile:
    """One timing-cache file. `read` gives its bytes (b"" when it does not exist yet); `merge` folds new bytes in."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def merge(self, new: bytes, combine: Callable[[bytes, bytes], bytes]) -> int:
        """Write combine(current file, new) in place of the file, under the lock; returns the bytes written."""
        with self._locked():
            current = self.read()
            merged = combine(current, new) if current else new
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(merged)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return len(merged)

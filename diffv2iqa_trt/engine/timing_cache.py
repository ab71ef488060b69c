"""A persisted TensorRT timing cache: where it lives, and reading and merging it safely.

The timing cache holds the measured speed of each tactic TensorRT tried; reusing it makes a rebuild take seconds
instead of minutes. It is valid only for one TensorRT version and one GPU model, so the default file is keyed by
both; a file given with --timing-cache is used as it is (TensorRT then ignores entries that do not match).
Several builds may share a cache (one per graph, or parallel jobs): a build merges what it learnt into the file under
an exclusive lock, re-reading the file inside the lock, and replaces it atomically, so no build loses another's
entries and a reader never sees half a file. The merge itself is TensorRT's (`ITimingCache.combine`), passed in.

The lock is `<cache>.lock` beside the cache, in a folder others may write to (a shared cache): it is opened without
following a symbolic link, without truncating, and only if it is a regular file, so a link planted under that name
cannot make a build create or empty a file elsewhere. The merged file keeps the mode the cache had (a shared 0644
cache stays 0644); a new cache gets the mode a plain open() would give it under the umask.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import current_umask
from ..cache_dirs import cache_root
from ..errors import ConfigError
from .compatibility import Machine

# O_NOFOLLOW: a link as the lock's name is refused (ELOOP) rather than followed; O_NONBLOCK: a FIFO under that name
# does not block the open; no O_TRUNC: the lock's bytes are never touched.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def cache_key(machine: Machine) -> str:
    gpu = re.sub(r"[^a-z0-9]+", "-", machine.gpu.lower()).strip("-") or "gpu"
    return f"trt{machine.tensorrt}-sm{machine.sm}-{gpu}"


def default_cache_path(machine: Machine) -> Path:
    return cache_root() / "timing" / f"{cache_key(machine)}.cache"


class TimingCacheFile:
    """One timing-cache file. `read` gives its bytes (b"" when it does not exist yet); `merge` folds new bytes in."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _open_lock(self) -> int:
        """A descriptor of the lock file, created if needed (mode 0666 under the umask): ConfigError when the name
        is taken by a link, FIFO, directory or anything else that is not a regular file."""
        lock = self.lock_path
        advice = f"remove it (it is the timing cache's lock file) or choose another --timing-cache than {self.path}"
        try:
            fd = os.open(lock, _LOCK_FLAGS, 0o666)
        except OSError as exc:
            if os.path.islink(lock):
                raise ConfigError(f"{lock} is a symbolic link, not a lock file; it was not followed: "
                                  f"{advice}") from None
            raise ConfigError(f"cannot open the timing cache's lock {lock} ({exc.strerror or exc}): {advice}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"{lock} is {kind}, not a lock file: {advice}")
        return fd

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def check(self) -> None:
        """Refuse a bad lock (ConfigError) before any engine is built, not after the first build's minutes."""
        with self._locked():
            pass

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
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)  # the cache's own mode, kept
            except FileNotFoundError:
                mode = 0o666 & ~current_umask()
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)  # mkstemp made it 0600
                    f.write(merged)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return len(merged)

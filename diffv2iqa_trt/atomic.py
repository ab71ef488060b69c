"""Atomic file writes: a temp file in the target's folder, then a rename, so readers never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(root: Path) -> None:
    """mkdtemp and mkstemp create owner-only entries; a published folder (a bundle, a Triton repository, which may be
    read by another user) gets the usual modes under the umask."""
    mask = current_umask()
    for d, _, names in os.walk(root):
        os.chmod(d, 0o777 & ~mask)
        for name in names:
            os.chmod(Path(d) / name, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give the result the mode a plain open() would have.
        tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)

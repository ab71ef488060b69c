"""The folder a report is written to, checked before a run that may take hours (used by `parity` and `bench`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError


def check_report_folder(folder: Path) -> None:
    """ConfigError unless the folder can be created and written: a probe file is created and removed (permission
    bits alone say nothing when running as root), and so are the folders made for it (the report creates them again
    when it is written)."""
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        shown = os.fsdecode(folder).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"cannot write the report to --out {shown} ({exc.strerror or exc}); choose a folder you "
                          "can write to") from None
    finally:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break

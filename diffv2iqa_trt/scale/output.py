"""The output folder of `score-dataset`: result parts written atomically, and the index a re-run resumes from.

A part is `part-<run>-<n>.parquet` (or `.csv`): written under a temporary name that starts with a dot (which Arrow,
pandas and Spark skip when they read the folder) and renamed into place, so a reader or a re-run sees a whole part or
none. One row per image; an image is identified by its path (exact file-system bytes) and the run's scoring key: the
bundle's manifest hash (the manifest lists the sha256 of every file of the bundle) and the settings that change a
score. A re-run skips every image that already has a row under the same key, whatever its status (a file that could
not be decoded gets the same error again; delete its part to retry it).

One writer at a time: a lock file in the folder refuses a second run on the same output while the first is alive.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import ConfigError

FORMATS = ("parquet", "csv")
LOCK_NAME = ".score-dataset.lock"
_PART = re.compile(r"^part-[0-9A-Za-z-]+-(?P<seq>[0-9]{6})\.(?P<ext>parquet|csv)$")
_TEMP = re.compile(r"^\.part-.*\.tmp$")
# The columns of a part, in order; `path_bytes_hex` is set only for a name that is not UTF-8 (`path` then shows its
# bytes as \xNN), as in `score --format json`.
COLUMNS = ("path", "score", "vcg", "vda", "crops", "status", "error", "path_bytes_hex", "bundle_sha256", "settings")
KEY_COLUMNS = ("path", "path_bytes_hex", "bundle_sha256", "settings")


def arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("score", pa.float64()), ("vcg", pa.float64()), ("vda", pa.float64()),
                      ("crops", pa.int32()), ("status", pa.string()), ("error", pa.string()),
                      ("path_bytes_hex", pa.string()), ("bundle_sha256", pa.string()), ("settings", pa.string())])


def path_key(path: str, path_bytes_hex: str | None) -> bytes:
    """The exact file-system bytes of a row's path (from its hex when the name is not UTF-8)."""
    return bytes.fromhex(path_bytes_hex) if path_bytes_hex else os.fsencode(path)


@dataclass(frozen=True)
class ScoringKey:
    """What makes two scores of the same file comparable: the bundle (its manifest's sha256) and the settings."""

    bundle_sha256: str
    settings: str


def part_files(out: Path) -> list[Path]:
    """The finished parts in `out`, in name order (runs, then their parts in order)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if _PART.match(p.name) and p.is_file())


def read_keys(part: Path) -> Iterator[tuple[bytes, str, str]]:
    """(path bytes, bundle sha256, settings) of every row of a part; ConfigError naming a part that cannot be read
    (parts are written whole, so that is damage from outside)."""
    try:
        if part.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(part, columns=list(KEY_COLUMNS))
            columns = [table.column(name).to_pylist() for name in KEY_COLUMNS]
            for path, hexed, bundle, settings in zip(*columns, strict=True):
                yield path_key(path, hexed), bundle, settings
        else:
            with part.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    yield path_key(row["path"], row["path_bytes_hex"] or None), row["bundle_sha256"], row["settings"]
    except (OSError, KeyError, ValueError, csv.Error) as exc:
        raise ConfigError(f"{part}: cannot read this result part ({exc}); it was damaged after it was written: move "
                          "it out of the output folder (its images are then scored again)") from None
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid, ...) derive from these or from Exception
        raise ConfigError(f"{part}: cannot read this result part ({exc}); move it out of the output folder (its "
                          "images are then scored again)") from None


@dataclass
class ResumeIndex:
    done: set[bytes]  # paths with a row under this run's key
    rows: int  # every row of the output, all keys
    parts: int


def resume_index(out: Path, key: ScoringKey) -> ResumeIndex:
    done: set[bytes] = set()
    rows = 0
    parts = part_files(out)
    for part in parts:
        for path, bundle, settings in read_keys(part):
            rows += 1
            if bundle == key.bundle_sha256 and settings == key.settings:
                done.add(path)
    return ResumeIndex(done, rows, len(parts))


class PartWriter:
    """Writes the result parts of one run: `part-<run>-<n>`, n counting from 0, each atomically."""

    def __init__(self, out: Path, fmt: str = "parquet") -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; use {' or '.join(FORMATS)}")
        self.out = out
        self.fmt = fmt
        self.run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self.written = 0

    def write(self, table: Any) -> Path:
        """Write one part (a pyarrow Table with COLUMNS) and return its path."""
        target = self.out / f"part-{self.run}-{self.written:06d}.{self.fmt}"
        with atomic_path(target) as tmp:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, tmp)
            else:
                import pyarrow.csv as pacsv

                pacsv.write_csv(table, tmp)
        self.written += 1
        return target


def check_output_folder(out: Path) -> None:
    """ConfigError unless `out` is a folder or can become one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (parts are written inside it)")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, so the folder cannot be created")
            break


def remove_temporary_parts(out: Path) -> int:
    """Remove the temporary parts that killed runs left (call under the lock: no live writer owns them)."""
    removed = 0
    for p in out.iterdir():
        if _TEMP.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the output folder's lock for the run (released when the process ends, however it ends)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one run at a time is then the user's business
        yield
        return
    with (out / LOCK_NAME).open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another score-dataset run is writing to {out}; wait for it to finish or stop it "
                              "(two runs on one output would score the same images twice)") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

"""The output folder of `score-dataset`: result parts written atomically, and the index a re-run resumes from.

A part is `part-<run>-<n>.parquet` (or `.csv`): written under a temporary name that starts with a dot (which Arrow,
pandas and Spark skip when they read the folder) and renamed into place, so a reader or a re-run sees a whole part or
none. One row per image; an image is identified by its path (exact file-system bytes) and the run's scoring key: the
bundle's manifest hash (the manifest lists the sha256 of every file of the bundle) and the settings that change a
score. A re-run skips every image that already has a row under the same key, whatever its status (a file that could
not be decoded gets the same error again; delete its part to retry it).

A CSV part has no footer to prove it whole (a Parquet part does), so each gets a check file beside it,
`.<part>.check` (JSON: rows, bytes, sha256), written before the part is renamed into place; a re-run refuses a CSV
part that does not match it, or whose rows do not have the part's columns.

One writer at a time: a lock file in the folder refuses a second run on the same output while the first is alive.
The lock is accepted only as a regular file, opened without following a link and without blocking (a FIFO, a
folder or a link with its name is refused), so a run never writes outside its folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
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
_TEMP = re.compile(r"^\.+part-.*\.tmp$")  # a part's or a check file's temporary name
_CHECK = re.compile(r"^\.(?P<part>part-[0-9A-Za-z-]+-[0-9]{6}\.csv)\.check$")
# What the free-space check assumes a row costs, beyond its path (a CSV row holds the bundle's sha256 and the
# settings in full; a Parquet row costs less), and a part beyond its rows.
ROW_BYTES = 320
PART_BYTES = 64 * 1024
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
            yield from _csv_keys(part)
    except PartDamaged as exc:
        raise ConfigError(f"{part}: {exc}; it was cut short or changed after it was written: move it (and "
                          f"{check_file(part).name} beside it) out of the output folder (its images are then scored "
                          "again)") from None
    except (OSError, KeyError, ValueError, csv.Error) as exc:
        raise ConfigError(f"{part}: cannot read this result part ({exc}); it was damaged after it was written: move "
                          "it out of the output folder (its images are then scored again)") from None
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid, ...) derive from these or from Exception
        raise ConfigError(f"{part}: cannot read this result part ({exc}); move it out of the output folder (its "
                          "images are then scored again)") from None


class PartDamaged(Exception):
    """A CSV part that is not the file its writer wrote."""


def check_file(part: Path) -> Path:
    """The check file of a CSV part: `.<part name>.check` beside it (hidden from readers of the folder)."""
    return part.with_name(f".{part.name}.check")


def _file_check(path: Path, rows: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"rows": rows, "columns": len(COLUMNS), "bytes": size, "sha256": digest.hexdigest()}


def _csv_keys(part: Path) -> Iterator[tuple[bytes, str, str]]:
    """Keys of a CSV part, after checking it whole: against its check file where it has one (parts written since
    check files exist), and in any case every row with exactly the part's columns and a final line break (what a
    cut inside a row leaves out)."""
    check = check_file(part)
    expected: dict[str, Any] | None = None
    if check.is_file():
        try:
            expected = json.loads(check.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PartDamaged(f"its check file {check.name} cannot be read ({exc})") from None
        if not isinstance(expected, dict):
            raise PartDamaged(f"its check file {check.name} is not a JSON object")
    with part.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                raise PartDamaged("its last row has no line break (the file ends inside a row)")
    keys: list[tuple[bytes, str, str]] = []
    with part.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise PartDamaged(f"its header is {header!r}, not the columns {', '.join(COLUMNS)}")
        for row in reader:
            if len(row) != len(COLUMNS):
                raise PartDamaged(f"line {reader.line_num} has {len(row)} fields, not {len(COLUMNS)}")
            values = dict(zip(COLUMNS, row, strict=True))
            keys.append((path_key(values["path"], values["path_bytes_hex"] or None), values["bundle_sha256"],
                         values["settings"]))
    if expected is not None:
        found = _file_check(part, len(keys))
        wrong = [f"{name} {found[name]} (written: {expected.get(name)})" for name in ("rows", "bytes", "sha256")
                 if expected.get(name) != found[name]]
        if wrong:
            raise PartDamaged(f"it does not match its check file {check.name}: {'; '.join(wrong)}")
    yield from keys


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
                # The check file first, then the part: a part in place always has its check file.
                with atomic_path(check_file(target)) as check:
                    check.write_text(json.dumps(_file_check(tmp, table.num_rows)) + "\n", encoding="utf-8")
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


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def make_output_folder(out: Path) -> Path | None:
    """Create `out` if needed and prove it writable with a probe file; ConfigError naming the problem otherwise (a
    read-only folder or file system, no permission). Returns the topmost folder this call created (`out` or one of
    its parents), None when `out` existed."""
    check_output_folder(out)
    created: Path | None = None
    for folder in [out.absolute(), *out.absolute().parents]:
        if folder.exists():
            break
        created = folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({_os_reason(exc)}); choose a folder you can "
                          "write to") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".score-dataset-probe-", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_created_folders(out, created)
        raise ConfigError(f"--out {out}: cannot write in this folder ({_os_reason(exc)}); make it writable or "
                          "choose another --out") from None
    return created


def remove_created_folders(out: Path, created: Path | None) -> None:
    """Remove `out` and its parents up to `created` (what `make_output_folder` made), each only if empty."""
    if created is None:
        return
    folder = out.absolute()
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else is there now, leave it
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


def estimate_output_bytes(paths: list[bytes], parts: int) -> int:
    """A generous estimate of what the parts of `paths` take on disk (a path's bytes twice: a name that is not
    UTF-8 is also stored as hex)."""
    return sum(2 * len(p) + ROW_BYTES for p in paths) + PART_BYTES * max(1, parts)


def check_free_space(out: Path, needed: int, images: int) -> None:
    """ConfigError, before any work starts, when the file system of `out` has less free space than `needed`."""
    try:
        free = shutil.disk_usage(out).free
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot read the free space of its file system ({_os_reason(exc)})") from None
    if free < needed:
        raise ConfigError(f"--out {out}: {_mb(free)} free on its file system, and the results of {images:,} images "
                          f"need about {_mb(needed)}; free some space or choose another --out (nothing was scored)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def check_part_format(out: Path, fmt: str) -> None:
    """ConfigError when `out` holds parts of the other format: a folder is one table, read with one reader (and a
    re-run must add to it, not skip everything and write nothing)."""
    other = sorted({p.suffix[1:] for p in part_files(out)} - {fmt})
    if other:
        raise ConfigError(f"--out {out} holds {' and '.join(other)} parts and this run would add {fmt} parts; a "
                          f"folder holds one format: run with --format {other[0]} to resume it, or choose another "
                          "--out")


def remove_temporary_parts(out: Path) -> int:
    """Remove the temporary parts (and check files) that killed runs left (call under the lock: no live writer owns
    them); a check file whose part is gone (deleted to score its images again) goes too."""
    removed = 0
    for p in out.iterdir():
        check = _CHECK.match(p.name)
        if (_TEMP.match(p.name) or (check and not (out / check["part"]).exists())) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


class OutputLock:
    """The held lock of an output folder: `created` says whether this run created the lock file."""

    def __init__(self, out: Path, fd: int | None, created: bool) -> None:
        self.out = out
        self.fd = fd
        self.created = created

    def discard(self, created_folder: Path | None) -> None:
        """Undo a start that wrote nothing: remove the lock file if this run created it (while still holding it, so
        a run that opened the same file fails, and the next one creates a new file) and the folders this run
        created (`make_output_folder`), where they are empty."""
        if self.created:
            with contextlib.suppress(OSError):
                os.unlink(self.out / LOCK_NAME)
        remove_created_folders(self.out, created_folder)


# Read-only is enough for flock, and the run never writes to whatever sits at the lock's name.
_LOCK_FLAGS = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def _open_lock(out: Path) -> tuple[int, bool]:
    """Open (or create) the lock file as a regular file, without following a link and without blocking on a FIFO;
    ConfigError naming what is in the way otherwise."""
    path = out / LOCK_NAME
    remove = f"remove {path} (score-dataset creates it as a plain file) and run again"
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise ConfigError(f"{path} is a symbolic link; the lock must be a plain file inside --out (a link "
                              f"would make the run write where it points): {remove}") from None
        if exc.errno == errno.EISDIR or os.path.isdir(path):
            raise ConfigError(f"{path} is a folder, not the lock file: {remove}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ConfigError(f"--out {out}: cannot open or create the lock file {LOCK_NAME} ({_os_reason(exc)}); "
                              "make the folder writable and the file readable, or choose another --out") from None
        raise ConfigError(f"{path}: cannot open the lock file ({_os_reason(exc)}): {remove}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ConfigError(f"{path} is {kind}, not the lock file: {remove}")
    return fd, not existed


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[OutputLock]:
    """Hold the output folder's lock for the run (released when the process ends, however it ends); the folder
    must exist (`make_output_folder`)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one run at a time is then the user's business
        yield OutputLock(out, None, False)
        return
    fd, created = _open_lock(out)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another score-dataset run is writing to {out}; wait for it to finish or stop it "
                              "(two runs on one output would score the same images twice)") from None
        try:
            yield OutputLock(out, fd, created)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

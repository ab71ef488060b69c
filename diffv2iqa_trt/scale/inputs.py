"""What `score-dataset` scores: the image paths of a folder tree, a text or CSV list, or a Parquet table.

Paths only, never pixels: the driver lists them (lazily for lists and tables) and Ray's workers open the files.
Every path is made absolute (against the list's or table's folder for a relative entry in one, against the current
folder otherwise, without resolving links), because workers do not share the driver's current folder and a re-run
must find the same key for the same file. Paths are kept as bytes where the file system has them as bytes, so a
name that is not UTF-8 survives the trip through Arrow.

Only local (or mounted) paths: URIs (s3://, gs://, http://) are refused with a hint, since the decoder opens files.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from ..runtime.images import IMAGE_SUFFIXES, expand_paths

DEFAULT_PATH_COLUMN = "path"
TEXT_SUFFIXES = frozenset({".txt", ".lst", ".list"})
CSV_SUFFIXES = frozenset({".csv", ".tsv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PARQUET_READ_ROWS = 65536


def source_kind(source: Path) -> str:
    """folder, image, text, csv or parquet (ConfigError for anything else)."""
    if source.is_dir():
        return "folder"
    if not source.exists():
        raise ConfigError(f"{source}: no such file or folder; give a folder of images, a text or CSV list of paths "
                          "(.txt, .csv) or a Parquet table with a path column (.parquet)")
    suffix = source.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise ConfigError(f"{source}: cannot tell what kind of list this is from its suffix {suffix!r}; name it .txt "
                      "(one path per line), .csv (a header with a path column) or .parquet (a path column)")


def iter_paths(source: str | os.PathLike[str], path_column: str = DEFAULT_PATH_COLUMN) -> Iterator[bytes]:
    """Every listed path, absolute, as file-system bytes, in the order of the source (duplicates included).

    A folder is searched recursively for image suffixes (as `score` does); a text list has one path per line (blank
    lines and lines starting with # are skipped); a CSV list has a header naming `path_column`; a Parquet table has a
    string column `path_column`. A name is kept exactly as written, spaces included (only a text line's terminator
    is removed): `y.png ` is another file than `y.png`, and a missing one becomes an error row, never another file's
    score."""
    src = Path(source)
    kind = source_kind(src)
    if kind == "folder":
        for p in expand_paths([src]):
            yield _absolute(os.fsencode(p), None)
        return
    if kind == "image":
        yield _absolute(os.fsencode(src), None)
        return
    base = os.fsencode(src.parent.absolute())
    if kind == "text":
        entries: Iterator[tuple[int, bytes]] = _text_entries(src)
    elif kind == "csv":
        entries = _csv_entries(src, path_column)
    else:
        entries = _parquet_entries(src, path_column)
    for where, raw in entries:
        yield _absolute(_local(raw, src, where), base)


def _absolute(raw: bytes, base: bytes | None) -> bytes:
    if os.path.isabs(raw):
        return raw
    return os.path.join(base if base is not None else os.fsencode(os.getcwd()), raw)


def _local(raw: bytes, src: Path, where: int) -> bytes:
    if raw.startswith(b"file://"):
        return raw[len(b"file://"):]
    if _URI.match(raw.decode("utf-8", "replace")):
        raise ConfigError(f"{src}, entry {where}: {raw.decode('utf-8', 'replace')!r} is a URI; score-dataset reads "
                          "local or mounted files: mount the bucket (s3fs, gcsfuse, ...) on every node and list "
                          "the mounted paths")
    return raw


def _blank(entry: bytes) -> bool:
    """An entry that names nothing (empty, or only spaces and tabs): skipped rather than scored as a folder."""
    return not entry.strip()


def _text_entries(src: Path) -> Iterator[tuple[int, bytes]]:
    with src.open("rb") as f:
        for number, line in enumerate(f, start=1):
            # Only the line terminator (\n or \r\n) goes: spaces belong to the name.
            entry = line[:-1] if line.endswith(b"\n") else line
            entry = entry[:-1] if entry.endswith(b"\r") else entry
            if not _blank(entry) and not entry.startswith(b"#"):
                yield number, entry


def _csv_entries(src: Path, column: str) -> Iterator[tuple[int, bytes]]:
    delimiter = "\t" if src.suffix.lower() == ".tsv" else ","
    # surrogateescape: a name that is not UTF-8 comes back as the same bytes.
    with src.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        if column not in header:
            raise ConfigError(f"{src}: no column {column!r} in the header ({', '.join(map(repr, header))}); name the "
                              "column of paths with --path-column")
        index = header.index(column)
        for row in reader:  # a field as the csv module reads it: quotes removed, spaces kept
            if index < len(row) and not _blank(raw := os.fsencode(row[index])):
                yield reader.line_num, raw


def _parquet_entries(src: Path, column: str) -> Iterator[tuple[int, bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(src)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{src}: not a readable Parquet file ({exc})") from None
    names = table.schema_arrow.names
    if column not in names:
        raise ConfigError(f"{src}: no column {column!r} (columns: {', '.join(map(repr, names))}); name the column "
                          "of paths with --path-column")
    field = table.schema_arrow.field(column)
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            or pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
        raise ConfigError(f"{src}: column {column!r} holds {field.type}, not paths (strings)")
    row = 0
    for batch in table.iter_batches(batch_size=_PARQUET_READ_ROWS, columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            raw = value if isinstance(value, bytes) else os.fsencode(value)
            if not _blank(raw):
                yield row, raw

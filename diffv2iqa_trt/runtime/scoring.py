"""Scoring a list of files: decode, score in chunks, and keep one result (a score or an error) per file.

Any failure of one file (unreadable, not an image, above the pixel cap, a size the crop rules refuse, a non-finite
score from the model) becomes that file's error; the other files are still scored. Images are decoded and scored a
chunk at a time (at most `images_per_chunk` images and about `pixels_per_chunk` decoded pixels), independent of the
pipeline's crop batch size, so memory stays bounded on long lists.

File names are bytes on POSIX; `path_text` shows them as text that is always valid Unicode (bytes that are not
UTF-8 become `\\xNN`), and `path_bytes_hex` gives the exact bytes of such names. The CSV, which goes to terminals as
often as to files, also shows control characters (ESC, BEL, line breaks, bidirectional overrides) escaped
(`without_controls`), so a file name cannot colour, retitle or rearrange the terminal; the JSON escapes them itself.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageDecodeError
from .crops import ImageSizeError, WorkUnit
from .images import DEFAULT_MAX_PIXELS, check_max_pixels, load_image
from .pipeline import ImageScore, ScoringPipeline

DEFAULT_IMAGES_PER_CHUNK = 16
DEFAULT_PIXELS_PER_CHUNK = DEFAULT_MAX_PIXELS  # decoded pixels held at once (one image at the cap, or many small)
NON_FINITE = "the model produced a non-finite score ({}); the weights or the bundle's graphs are broken for this input"


# Characters that act on a terminal rather than print: C0 and C1 controls (ESC starts colour, title and hyperlink
# sequences) and the bidirectional overrides and isolates that reorder what is shown (as the CLI's tables escape them).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def without_controls(text: str) -> str:
    """`text` with every control character as its Python escape (`\\x1b`, `\\n`, `\\u202e`)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def path_text(path: str | os.PathLike[str]) -> str:
    """The path as valid Unicode text: bytes of the name that are not UTF-8 appear as `\\xNN` (Python's
    backslashreplace), so it can always be encoded for output."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def valid_text(text: str) -> str:
    """`text` with the surrogate escapes of undecodable bytes (from a file name inside a message) as `\\xNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def path_bytes_hex(path: str | os.PathLike[str]) -> str | None:
    """The exact bytes of a path, in hex, when they are not valid UTF-8 (None when `path_text` is exact)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    return None


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


@dataclass(frozen=True)
class FileResult:
    path: Path
    score: ImageScore | None  # None when the file failed
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """The result as JSON-safe values: text paths, no NaN or infinity (a skipped branch is None)."""
        s = self.score
        row: dict[str, Any] = {"path": path_text(self.path), "score": _finite(s.score) if s else None,
                               "vcg": _finite(s.vcg) if s else None, "vda": _finite(s.vda) if s else None,
                               "crops": s.crops if s else 0,
                               "error": valid_text(self.error) if self.error is not None else None}
        raw = path_bytes_hex(self.path)
        if raw is not None:
            row["path_bytes_hex"] = raw
        return row


def checked_result(path: Path, score: ImageScore) -> FileResult:
    """A score with a NaN or infinite value (score or a branch that ran) is that file's error."""
    values = [score.score, *(v for v in (score.vcg, score.vda) if v is not None)]
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return FileResult(path, None, NON_FINITE.format(bad[0]))
    return FileResult(path, score)


def score_files(pipeline: ScoringPipeline, files: Sequence[str | os.PathLike[str]], *,
                images_per_chunk: int = DEFAULT_IMAGES_PER_CHUNK, pixels_per_chunk: int = DEFAULT_PIXELS_PER_CHUNK,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: Callable[[int], None] | None = None) -> list[FileResult]:
    """One FileResult per file, in order; `progress(n)` is called after each chunk with the files it covered.

    Files whose header declares more than `max_pixels` pixels are refused before decoding."""
    check_max_pixels(max_pixels)
    most = max(1, images_per_chunk)
    results: list[FileResult] = []
    paths: list[Path] = []  # the current chunk, in order
    slots: list[FileResult | None] = []  # its results so far (None: waiting for the pipeline)
    prepared: list[tuple[int, list[WorkUnit]]] = []
    pixels = 0

    def flush() -> None:
        nonlocal pixels
        scores = pipeline.score_prepared([units for _, units in prepared])
        for (i, _), score in zip(prepared, scores, strict=True):
            slots[i] = checked_result(paths[i], score)
        results.extend(r for r in slots if r is not None)
        if progress is not None:
            progress(len(slots))
        slots.clear()
        prepared.clear()
        paths.clear()
        pixels = 0

    for f in files:
        path = Path(f)
        paths.append(path)
        slots.append(None)
        try:
            rgb = load_image(path, max_pixels)
            prepared.append((len(slots) - 1, pipeline.prepare(rgb)))
            pixels += rgb.shape[0] * rgb.shape[1]
        except (ImageDecodeError, ImageSizeError) as exc:
            slots[-1] = FileResult(path, None, exc.reason)
        if len(slots) >= most or pixels >= pixels_per_chunk:
            flush()
    if slots:
        flush()
    return results


def results_json(results: Sequence[FileResult], header: dict[str, Any]) -> dict[str, Any]:
    """The JSON document `score --format json` prints: `header` (model, backend, pipeline) plus one row per file.
    It holds no NaN or infinity, so `json.dumps(..., allow_nan=False)` accepts it."""
    return {**header, "results": [r.row() for r in results]}


def results_csv(results: Sequence[FileResult], model_label: str) -> str:
    """CSV with one row per file; paths as `path_text` (non-UTF-8 bytes as `\\xNN`), empty cells for no value.
    Paths, the model label and errors show control characters escaped (`without_controls`): one line per row, and
    nothing in a cell acts on the terminal it is printed to."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "score", "vcg", "vda", "crops", "model", "error"],
                            lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    model = without_controls(valid_text(model_label))
    for r in results:
        row = r.row()
        writer.writerow({**row, "path": without_controls(row["path"]), "model": model,
                         "error": without_controls(row["error"] or "")})
    return buf.getvalue()


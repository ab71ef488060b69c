"""Scoring a list of files: decode, score in chunks, and keep one result (a score or an error) per file.

A file that cannot be decoded becomes that file's error; the other files are still scored. Images are decoded and
scored a chunk at a time (`images_per_chunk`), independent of the pipeline's crop batch size, so memory stays
bounded on long lists.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageDecodeError
from .images import load_image
from .pipeline import ImageScore, Pipeline

DEFAULT_IMAGES_PER_CHUNK = 16


@dataclass(frozen=True)
class FileResult:
    path: Path
    score: ImageScore | None  # None when the file failed
    error: str | None = None

    def row(self) -> dict[str, Any]:
        s = self.score
        return {"path": str(self.path), "score": s.score if s else None, "vcg": s.vcg if s else None,
                "vda": s.vda if s else None, "crops": s.crops if s else 0, "error": self.error}


def score_files(pipeline: Pipeline, files: Sequence[str | os.PathLike[str]], *,
                images_per_chunk: int = DEFAULT_IMAGES_PER_CHUNK,
                progress: Callable[[int], None] | None = None) -> list[FileResult]:
    """One FileResult per file, in order; `progress(n)` is called after each chunk with the files it covered."""
    chunk = max(1, images_per_chunk)
    results: list[FileResult] = []
    for start in range(0, len(files), chunk):
        paths = [Path(f) for f in files[start:start + chunk]]
        decoded: list[tuple[int, np.ndarray]] = []
        slot: list[FileResult | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                decoded.append((i, load_image(path)))
            except ImageDecodeError as exc:
                slot[i] = FileResult(path, None, exc.reason)
        scores = pipeline.score([img for _, img in decoded])
        for (i, _), score in zip(decoded, scores, strict=True):
            slot[i] = FileResult(paths[i], score)
        results.extend(r for r in slot if r is not None)
        if progress is not None:
            progress(len(paths))
    return results


def results_json(results: Sequence[FileResult], header: dict[str, Any]) -> dict[str, Any]:
    """The JSON document `score --format json` prints: `header` (model, backend, pipeline) plus one row per file."""
    return {**header, "results": [r.row() for r in results]}


def results_csv(results: Sequence[FileResult], model_label: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "score", "vcg", "vda", "crops", "model", "error"],
                            lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = r.row()
        writer.writerow({**row, "model": model_label, "error": row["error"] or ""})
    return buf.getvalue()

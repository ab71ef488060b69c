"""The two map stages of a `score-dataset` run, as Ray Data runs them on Arrow batches.

1. `decode_and_crop` (stateless, Ray tasks): path bytes (column `item`) -> decoded image -> the pipeline's work
   units, pickled; a file that cannot be decoded, or whose size the crop rules refuse, leaves its error instead.
2. `BundleScorer` (a callable class, one instance per Ray actor): opens the bundle's scorer once, then scores the
   prepared images of each batch with the same `score_prepared` and the same per-file checks as `score` (so a Ray
   run gives `score`'s numbers).

Ray fuses the two into one actor stage when their resources are equal (CPU actors with one thread each, the
default); with GPU actors the decoding runs in CPU tasks while the actors only score.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import Scorer
from ..errors import ImageDecodeError
from ..runtime.crops import ImageSizeError, prepare
from ..runtime.images import allow_pillow_pixels, load_image
from ..runtime.pipeline import PipelineSpec
from ..runtime.scoring import FileResult, checked_result
from ..scorers import ScoreOptions


@dataclass(frozen=True)
class CropRules:
    """What `Pipeline.prepare` needs of the spec, so the decoding stage can run without a model."""

    crops: str
    mode: str
    crop_size: int
    size_multiple: int

    @classmethod
    def of(cls, spec: PipelineSpec) -> CropRules:
        return cls(spec.crops, spec.mode, spec.crop_size, spec.size_multiple)


def prepared_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("path_bytes", pa.binary()), ("error", pa.string()), ("units", pa.large_binary())])


def result_schema() -> Any:
    """The scoring stage's rows: a part's columns before the run's key is added, plus the exact path bytes."""
    import pyarrow as pa

    return pa.schema([("path_bytes", pa.binary()), ("path", pa.string()), ("score", pa.float64()),
                      ("vcg", pa.float64()), ("vda", pa.float64()), ("crops", pa.int32()), ("status", pa.string()),
                      ("error", pa.string()), ("path_bytes_hex", pa.string())])


def decode_and_crop(batch: Any, rules: CropRules, max_pixels: int) -> Any:
    """Decode every path of the batch and cut it into work units (the same call `Pipeline.prepare` makes)."""
    import pyarrow as pa

    allow_pillow_pixels(max_pixels)  # process-wide, so once per worker process would do; it is cheap
    raws: list[bytes] = batch.column("item").to_pylist()
    errors: list[str | None] = []
    units: list[bytes | None] = []
    for raw in raws:
        try:
            rgb = load_image(os.fsdecode(raw), max_pixels)
            work = prepare(rgb, rules.crops, rules.mode, rules.crop_size, rules.size_multiple)
        except (ImageDecodeError, ImageSizeError) as exc:
            errors.append(exc.reason)
            units.append(None)
            continue
        errors.append(None)
        units.append(pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table([pa.array(raws, pa.binary()), pa.array(errors, pa.string()),
                     pa.array(units, pa.large_binary())], schema=prepared_schema())


class BundleScorer:
    """One per Ray actor: the bundle's scorer, opened once, applied to batches of prepared images."""

    def __init__(self, options: ScoreOptions, rules: CropRules) -> None:
        self.scorer = Scorer.from_options(options)  # the public API, as `score` uses it
        mine = CropRules.of(self.scorer.spec)
        if mine != rules:  # the decoding stage cut crops for another pipeline: a bug, not a user error
            raise RuntimeError(f"the scorer's crop rules {mine} differ from the decoding stage's {rules}")

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        raws: list[bytes] = batch.column("path_bytes").to_pylist()
        errors: list[str | None] = batch.column("error").to_pylist()
        blobs: list[bytes | None] = batch.column("units").to_pylist()
        paths = [Path(os.fsdecode(raw)) for raw in raws]
        results: list[FileResult] = [FileResult(p, None, e) for p, e in zip(paths, errors, strict=True)]
        todo = [(i, blob) for i, blob in enumerate(blobs) if blob is not None]
        prepared = [pickle.loads(blob) for _, blob in todo]  # written by decode_and_crop in this same job
        for (i, _), score in zip(todo, self.scorer.score_prepared(prepared), strict=True):
            results[i] = checked_result(paths[i], score)
        rows = [r.row() for r in results]
        columns: dict[str, list[Any]] = {
            "path_bytes": raws,
            **{name: [row[name] for row in rows] for name in ("path", "score", "vcg", "vda", "crops")},
            "status": ["ok" if row["error"] is None else "error" for row in rows],
            "error": [row["error"] for row in rows],
            "path_bytes_hex": [row.get("path_bytes_hex") for row in rows],
        }
        schema = result_schema()
        return pa.table([pa.array(columns[f.name], f.type) for f in schema], schema=schema)

"""The calibration cache: a set is recorded once and reused while nothing it depends on has changed.

Key: sha256 of a canonical JSON document (sorted keys, no whitespace) holding
- `format` (FORMAT_VERSION) and the toolkit version (what is recorded and how);
- per graph, the sha256 (from the manifest) of the fp32 ONNX file and of its external-data files: the weights;
- the manifest's whole pipeline section (steps, gamma/coef tables, capture steps, noise generator and seed, crop size,
  size multiple, normalisation), and the crop policy, mode and noise seed actually used;
- the sorted sha256s of the distinct readable image files;
- the settings that shape the set: max_crops, rows_per_step, max_pixels.
Not in the key: file names and order (images are processed in sha256 order), the device, batch size and threads
(the same FP32 arithmetic, up to float rounding).

One file per key, `<cache_dir>/<key>.npz` (uncompressed; the metadata as JSON bytes under `meta`), written atomically:
a reader sees the old file, the new file or none, never half of one.

The key names what a set was recorded from, not what the file holds: a file swapped for another valid one (another
key's set renamed, or arrays rewritten under the same metadata) would otherwise be reused and quietly calibrate a
variant from other data. So the metadata also records `arrays_sha256` (`arrays_sha256()`: every array's name, dtype,
shape and little-endian bytes, hashed at write), and a reader recomputes it. A file that does not load, carries
another key or format, or whose arrays do not hash to its record is not used: the set is recorded again and the file
replaced, and a `CalibrationCacheWarning` says which file and why (the library does not print; the CLI shows it).
The digest is also what `build --precision` records in each variant's manifest entry (`calibration_sha256`), so a
variant names the exact data it was calibrated on. Hashing costs about 1 s per GB (a paper set of 64 crops: ~2 GB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..bundle.schema import utc_timestamp
from ..bundle.store import Bundle
from ..cache_dirs import cache_root
from ..config import ScoringConfig
from ..contract import GRAPH_NAMES
from ..errors import ConfigError
from ..runtime.crops import WorkUnit, prepare
from ..runtime.images import DEFAULT_MAX_PIXELS, check_max_pixels
from ..runtime.pipeline import PipelineSpec
from . import record as recording
from .dataset import DEFAULT_MAX_CROPS, FORMAT_VERSION, MIN_IMAGES, CalibrationSet
from .record import Progress, check_enough, image_files, plan_crops


class CalibrationCacheWarning(UserWarning):
    """A cached calibration set was present but not used (damaged, swapped or altered): it is recorded again."""


def default_cache_dir() -> Path:
    """The `calibration` folder of the toolkit's cache (cache_dirs.cache_root)."""
    return cache_root() / "calibration"


def weight_hashes(bundle: Bundle) -> dict[str, dict[str, str]]:
    """Per graph, bundle file name -> sha256 of the fp32 ONNX file and every external-data file it loads."""
    out: dict[str, dict[str, str]] = {}
    files = bundle.manifest.files
    for graph in GRAPH_NAMES:
        main = bundle.graph(graph).variants["fp32"].file if "fp32" in bundle.graph(graph).variants else None
        if main is None:
            raise ConfigError(f"bundle {bundle.root}: graph {graph!r} has no fp32 ONNX variant to calibrate from")
        names = [main, *bundle.check_onnx_references(graph, "fp32")]
        out[graph] = {name: files[name].sha256 for name in names}
    return out


def key_document(bundle: Bundle, scoring: ScoringConfig, image_sha256: Sequence[str], *, max_crops: int,
                 rows_per_step: int | None, max_pixels: int) -> dict[str, Any]:
    """What the key is a hash of (see the module docstring)."""
    return {
        "format": FORMAT_VERSION,
        "toolkit": __version__,
        "weights": weight_hashes(bundle),
        "pipeline": bundle.manifest.pipeline.to_dict(),
        "scoring": {"crops": scoring.crops, "mode": scoring.mode, "noise_seed": int(scoring.noise_seed)},
        "images": sorted(image_sha256),
        "settings": {"max_crops": max_crops, "rows_per_step": rows_per_step, "max_pixels": max_pixels},
    }


def cache_key(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(cache_dir) / f"{key}.npz"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of a calibration set's arrays (`CalibrationSet.arrays()`), independent of how they are stored: for each
    array in name order, the line `<name> <dtype as little-endian numpy str> <shape as JSON>\n`, then its bytes in C
    order, little-endian."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))  # no copy for native arrays on x86 and ARM
        h.update(f"{name} {a.dtype.str} {json.dumps(list(a.shape))}\n".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def check_cached(path: Path, key: str) -> tuple[CalibrationSet | None, str | None]:
    """(the set stored at path, None) if it loads, carries `key` and the current format, and its arrays hash to
    its recorded `arrays_sha256`; otherwise (None, why it was not used), with why None when there is no file."""
    try:
        if not path.is_file():
            return None, None if not path.exists() else "is not a regular file"
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except Exception as exc:  # whatever a damaged file raises (zip, npy, JSON): it is not used
        return None, f"does not load ({type(exc).__name__}: the file is truncated or damaged)"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        return None, "is of another cache format"
    if meta.get("key") != key:
        return None, "holds the set of another key (the file was renamed or swapped)"
    recorded = meta.get("arrays_sha256")
    if not isinstance(recorded, str):
        return None, "records no hash of its arrays (written by an earlier release)"
    try:
        cs = CalibrationSet.from_arrays(arrays, meta)
        actual = arrays_sha256(cs.arrays())
    except Exception as exc:  # missing arrays, shapes that do not fit together
        return None, f"holds arrays that do not form a calibration set ({type(exc).__name__}: {exc})"[:300]
    if actual != recorded:
        return None, (f"holds arrays whose sha256 {actual[:16]}… is not the {recorded[:16]}… recorded when it was "
                      f"written (the arrays were replaced or altered)")
    return cs, None


def load_cached(path: Path, key: str) -> CalibrationSet | None:
    """The set stored at path if `check_cached` accepts it; None when missing, corrupt, of another key or format, or
    when its arrays do not match their recorded hash."""
    return check_cached(path, key)[0]


def save(cs: CalibrationSet, path: Path) -> None:
    """Write atomically (temp file in the same folder, then rename). The meta must hold the arrays' `arrays_sha256`
    (calibration_set puts it there), so a reader can check them."""
    meta = np.frombuffer(json.dumps(dict(cs.meta), allow_nan=False).encode("utf-8"), dtype=np.uint8)
    arrays: dict[str, Any] = {"meta": meta, **cs.arrays()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)


def _check_settings(max_crops: int, rows_per_step: int | None, batch_size: int) -> None:
    def positive_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not positive_int(max_crops) or max_crops < MIN_IMAGES:
        raise ConfigError(f"--max-crops must be an integer of at least {MIN_IMAGES} (one crop from each of the "
                          f"{MIN_IMAGES} images a calibration set needs at least), got {max_crops!r}")
    if rows_per_step is not None and not positive_int(rows_per_step):
        raise ConfigError(f"--rows-per-step must be a positive integer, got {rows_per_step!r}")
    if not positive_int(batch_size):
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")


def calibration_set(bundle: Bundle, image_paths: Sequence[str | os.PathLike[str]], *, crops: str | None = None,
                    mode: str | None = None, max_crops: int = DEFAULT_MAX_CROPS, rows_per_step: int | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: str | os.PathLike[str] | None = None,
                    use_cache: bool = True, device: str = "cpu", batch_size: int = 8, threads: int | None = None,
                    progress: Progress | None = None) -> tuple[CalibrationSet, bool]:
    """The calibration set of `bundle` on the images (files or folders, searched recursively), and whether it came
    from the cache (True) or was recorded now (False).

    crops / mode: the crop policy and restoration mode (default: the bundle's). max_crops: crops recorded at most
    (round-robin over the images). rows_per_step: keep at most this many restore_step rows per step (default: every
    crop at every step). progress(stage, done, total) is called as work advances (the library does not print).
    ConfigError for bad settings, a missing or unreadable folder, or fewer than MIN_IMAGES distinct images that
    decode. With use_cache=False nothing is read from or written to the cache. A reused set's meta (image_files,
    created, bundle root) describes the run that recorded it: names and paths are not part of the key."""
    say: Progress = progress or (lambda _s, _d, _t: None)
    _check_settings(max_crops, rows_per_step, batch_size)
    check_max_pixels(max_pixels)
    p = bundle.manifest.pipeline
    scoring = ScoringConfig(crops=crops if crops is not None else p.crops, mode=mode if mode is not None else p.mode,
                            noise_seed=p.noise.seed)
    files, skipped = image_files(image_paths, say)
    check_enough(len(files), "distinct readable files:", skipped)

    document = key_document(bundle, scoring, [f.sha256 for f in files], max_crops=max_crops,
                            rows_per_step=rows_per_step, max_pixels=max_pixels)
    key = cache_key(document)
    path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), key)
    if use_cache:
        cached, problem = check_cached(path, key)
        if cached is not None:
            return cached, True
        if problem is not None:
            warnings.warn(CalibrationCacheWarning(
                f"calibration cache file {path} {problem}; it was not used: the calibration set is recorded again "
                f"and the file replaced"), stacklevel=2)

    spec = PipelineSpec.from_manifest(p, scoring)
    plan = plan_crops(files, lambda rgb: _prepare(spec, rgb), max_crops, max_pixels, skipped, say)
    recorded = recording.record(bundle, scoring, plan, rows_per_step=rows_per_step, device=device,
                                     batch_size=batch_size, threads=threads, progress=say)
    meta = {
        "format": FORMAT_VERSION, "key": key, "toolkit": __version__, "created": utc_timestamp(),
        "bundle": {"root": str(bundle.root), "model": bundle.model_name, "trained": bundle.trained,
                   "weights": document["weights"]},
        "pipeline": {"steps": p.steps, "capture_t1": p.capture_t1, "capture_t2": p.capture_t2,
                     "crop_size": p.crop_size, "crops": scoring.crops, "mode": scoring.mode,
                     "noise_seed": int(scoring.noise_seed)},
        "settings": document["settings"],
        "images": [f.sha256 for f in plan.images],
        "image_files": [str(f.path) for f in plan.images],
        "skipped": [{"file": name, "reason": reason} for name, reason in plan.skipped],
        "counts": {"files": len(files), "images": len(plan.images), "crops": plan.crops,
                   "restore_rows": int(len(recorded.arrays["y"])), "noise_rows": int(len(recorded.arrays["z"]))},
        "recorded_with": recorded.executor,
    }
    cs = CalibrationSet.from_arrays(recorded.arrays, meta)
    cs = dataclasses.replace(cs, meta={**meta, "arrays_sha256": arrays_sha256(cs.arrays())})
    if use_cache:
        save(cs, path)
    return cs, False


def _prepare(spec: PipelineSpec, rgb: np.ndarray) -> list[WorkUnit]:
    """The work units of one image under the spec's policy and mode (what Pipeline.prepare does)."""
    return prepare(rgb, spec.crops, spec.mode, spec.crop_size, spec.size_multiple)

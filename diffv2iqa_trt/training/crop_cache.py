"""A disk cache of restored training crops, so a second `train iqa` with the same restorer skips the restoration.

Restoring every crop through the frozen restorer is most of the set-up time of IQA training. A cache file is named
`<name>-<per_image>-seed<seed>-<key>.npz`, where `key` is the first 12 hex digits of the SHA-256 of the restorer
checkpoint's bytes: another restorer gives another file, never a stale hit. The key does not cover the samples (a
`name` stands for a fixed split) or the code that cuts and restores crops; clear the folder after changing those.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import atomic_path
from ..bundle.schema import sha256_file
from ..model.diffv2iqa import DiffV2IQA
from .data import Sample
from .iqa import CropSet, build_crops


def restorer_key(restorer_path: str | os.PathLike[str]) -> str:
    """The cache key of a restorer checkpoint: the first 12 hex digits of the SHA-256 of its bytes."""
    return sha256_file(restorer_path)[:12]


def cache_file(cache_dir: str | os.PathLike[str], name: str, per_image: int, seed: int, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{per_image}-seed{seed}-{key}.npz"


def cached_crops(model: DiffV2IQA, samples: Sequence[Sample], per_image: int, *, seed: int, name: str,
                 cache_dir: str | os.PathLike[str] | None, restorer_path: str | os.PathLike[str],
                 log: Callable[[str], None] | None = None) -> CropSet:
    """`build_crops(model, samples, per_image, seed=seed)`, kept in `cache_dir` and reused from there.

    `name` names the samples (a split) in the file name; `restorer_path` is the checkpoint whose U-Net `model`
    carries. Without `cache_dir`, the crops are built every time and nothing is written.
    """
    if cache_dir is None:
        return build_crops(model, samples, per_image, seed=seed, log=log)
    path = cache_file(cache_dir, name, per_image, seed, restorer_key(restorer_path))
    if path.is_file():
        try:
            crops = CropSet.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            # Caches written before writes were atomic can be truncated by a killed run: rebuild rather than fail.
            if log is not None:
                log(f"ignoring unreadable cache {path} ({exc}); restoring the crops again")
        else:
            if log is not None:
                log(f"reusing restored crops {path}")
            return crops
    crops = build_crops(model, samples, per_image, seed=seed, log=log)
    # Written to a temp file and renamed: an interrupted run never leaves a file that looks like a valid cache.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        crops.save(f)
    return crops

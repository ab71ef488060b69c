"""A calibration set: the real inputs of the three graphs, recorded while the bundle's FP32 pipeline scored crops.

Two kinds of records, kept compactly and materialised on demand:
- restore_step: one row per (crop, step) of the fixed loop: the graph's inputs x, y (y_t), gamma, coef and z at that
  step, with the step index i (T-1 first ... 0) recorded explicitly, so one set of INT8 scales can serve every step of
  the single engine (timestep-aware calibration). x is the same at every step of a crop and z the same for every crop
  of a step, so they are stored once (`crop_x`, `z`) and each row points at them (`crop`, `z_index`).
- vcg / vda: one row per crop: x and the y0 / y_t1 / y_t2 snapshot crops exactly as the branch graphs receive them
  (before the uint8 round trip, which is inside the graphs). Both branches take the same four inputs.

In `faithful` mode the whole image is restored; restore rows are then the crop windows of x, y and z at every step
(the pixels each crop is cut from), so that every graph's rows have one shape.

Memory (float32, S = crop size, T = steps; one S x S image tensor is 12 S^2 bytes):
- materialised restore_step inputs per crop (x, y, z images plus 6 scalars, at every step): T (36 S^2 + 24) bytes:
  tiny (S 64, T 12) 1.77 MB, paper (S 224, T 50) 90.3 MB per crop (64 crops: 5.8 GB);
- as stored here per crop (x and three snapshots once; y, gamma, coef and three indices at every step):
  48 S^2 + T (12 S^2 + 36) bytes:
  tiny 0.79 MB, paper 32.5 MB per crop (64 crops: 2.1 GB), plus the noise windows, T 12 S^2 bytes once per
  resolution (paper 30 MB). `rows_per_step` bounds the restore rows: paper, 64 crops, 16 rows per step: 0.64 GB.
`feeds()` materialises one batch at a time; `inputs()` materialises a whole graph's rows at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import (
    BRANCH_INPUTS,
    BROADCAST_INPUTS,
    COEF,
    COEF_WIDTH,
    GAMMA,
    RESTORE_INPUTS,
    RESTORE_STEP,
    SNAPSHOT_INPUTS,
    Y,
    Z,
    check_graph,
)
from ..errors import ConfigError

# Bumped whenever what is recorded, or how it is stored, changes: every cached set of another version is rebuilt.
FORMAT_VERSION = 1
# Fewest distinct decodable images a calibration set may come from: scales fitted on fewer images fit those images.
MIN_IMAGES = 8
DEFAULT_MAX_CROPS = 64

# Stored arrays, named after the graph inputs they hold (the fields below; `crop_x` is x, stored once per crop).
_IMAGE_ARRAYS = ("crop_x", *SNAPSHOT_INPUTS, Y, Z)
_INDEX_ARRAYS = ("step", "crop", "z_index")
_STEP_ARRAYS = (GAMMA, COEF)  # restore_step's per-row scalars
_ARRAYS = _IMAGE_ARRAYS + _INDEX_ARRAYS + _STEP_ARRAYS + ("crop_source",)


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Recorded graph inputs (see the module docstring); `meta` says where they came from (bundle, images, settings,
    counts). Arrays are float32 except the int32 indices and the int64 `crop_source`."""

    crop_x: np.ndarray  # (C, 3, S, S): x of each crop: the branch graphs' x, and restore_step's x of its rows
    y0: np.ndarray  # (C, 3, S, S) snapshot crops fed to vcg / vda
    y_t1: np.ndarray
    y_t2: np.ndarray
    y: np.ndarray  # (R, 3, S, S): restore_step's y input of each row
    gamma: np.ndarray  # (R,)
    coef: np.ndarray  # (R, COEF_WIDTH)
    step: np.ndarray  # (R,) the loop step i of each row (T-1 is the first step run, 0 the last)
    crop: np.ndarray  # (R,) row of crop_x
    z_index: np.ndarray  # (R,) row of z
    z: np.ndarray  # (K, 3, S, S) the distinct noise inputs (windows in faithful mode)
    crop_source: np.ndarray  # (C, 4): image (index into meta["images"]), work unit, top, left of each crop
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("inconsistent calibration set: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is inconsistent in the arrays (empty when they fit together)."""
        out: list[str] = []
        c, r = len(self.crop_x), len(self.y)
        for name in _IMAGE_ARRAYS + _STEP_ARRAYS:
            a = getattr(self, name)
            if a.dtype != np.float32:
                out.append(f"{name} is {a.dtype}, not float32")
        for name in _INDEX_ARRAYS:
            a = getattr(self, name)
            if a.dtype != np.int32 or a.shape != (r,):
                out.append(f"{name} must be int32 of shape ({r},), is {a.dtype} {a.shape}")
        image = self.crop_x.shape[1:]
        if self.crop_x.ndim != 4 or image[0] != 3 or image[1] != image[2]:
            out.append(f"crop_x has shape {self.crop_x.shape}, not (C, 3, S, S)")
        for name in SNAPSHOT_INPUTS:
            if getattr(self, name).shape != self.crop_x.shape:
                out.append(f"{name} has shape {getattr(self, name).shape}, crop_x {self.crop_x.shape}")
        for name in (Y, Z):
            if getattr(self, name).shape[1:] != image:
                out.append(f"{name} has shape {getattr(self, name).shape}, rows must be {image}")
        if self.gamma.shape != (r,) or self.coef.shape != (r, COEF_WIDTH):
            out.append(f"gamma {self.gamma.shape} / coef {self.coef.shape} do not fit {r} rows")
        if self.crop_source.shape != (c, 4):
            out.append(f"crop_source has shape {self.crop_source.shape}, not ({c}, 4)")
        if not out and r:
            if self.crop.min() < 0 or self.crop.max() >= c:
                out.append("crop indices out of range")
            if self.z_index.min() < 0 or self.z_index.max() >= len(self.z):
                out.append("z indices out of range")
            if self.step.min() < 0:
                out.append("negative step indices")
        return out

    # --- sizes --------------------------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    @property
    def crop_size(self) -> int:
        return int(self.crop_x.shape[-1])

    @property
    def crops(self) -> int:
        return int(len(self.crop_x))

    def rows(self, graph: str) -> int:
        """Rows recorded for a graph: (crop, step) pairs for restore_step, crops for the branches."""
        return int(len(self.y)) if check_graph(graph) == RESTORE_STEP else self.crops

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return int(sum(getattr(self, n).nbytes for n in _ARRAYS))

    # --- materialised inputs ------------------------------------------------------------------------------------

    def inputs(self, graph: str, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Input name -> float32 array stacked along the batch, for all rows or the given row indices (new arrays).

        restore_step's `z` here holds one noise image per row, (rows, 3, S, S); the graph itself takes one (1, 3, H, W)
        per call, which `feeds()` respects."""
        idx = np.arange(self.rows(graph)) if rows is None else np.asarray(rows, dtype=np.int64)
        if check_graph(graph) == RESTORE_STEP:
            arrays = (self.crop_x[self.crop[idx]], self.y[idx], self.gamma[idx], self.coef[idx],
                      self.z[self.z_index[idx]])
            return dict(zip(RESTORE_INPUTS, arrays, strict=True))
        crops = (self.crop_x, self.y0, self.y_t1, self.y_t2)
        return {name: a[idx] for name, a in zip(BRANCH_INPUTS, crops, strict=True)}

    def batches(self, graph: str, batch_size: int) -> list[np.ndarray]:
        """Row indices of each batch `feeds` yields: every row exactly once, at most batch_size per batch. For
        restore_step the rows of a batch share their noise input (one step; one window in faithful mode), since
        the graph takes a single z per call."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        n = self.rows(graph)
        if graph != RESTORE_STEP:
            return [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        order = np.argsort(self.z_index, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(self.z_index[order])) + 1) if n else []
        return [g[start:start + batch_size] for g in groups for start in range(0, len(g), batch_size)]

    def feeds(self, graph: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of graph inputs, ready for a session's run(): a new dict of new arrays per batch (never one dict
        reused or repeated), every recorded row exactly once. For restore_step, z is (1, 3, S, S)."""
        for idx in self.batches(graph, batch_size):
            yield self.feed(graph, idx)

    def feed(self, graph: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """One call's inputs for the given rows (new contiguous arrays). For restore_step the rows must share their
        noise input (as every batch of `batches` does): z is that one (1, 3, S, S) image."""
        names = RESTORE_INPUTS if check_graph(graph) == RESTORE_STEP else BRANCH_INPUTS
        batch = self.inputs(graph, rows)
        for name in BROADCAST_INPUTS:  # z, the rows' shared noise: the graph takes it once per call
            if name in batch:
                batch[name] = batch[name][:1]
        return {name: np.ascontiguousarray(batch[name]) for name in names}

    # --- storage ------------------------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by name (what the cache file holds besides the metadata)."""
        return {n: getattr(self, n) for n in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> CalibrationSet:
        """The inverse of `arrays` (ValueError or KeyError when arrays are missing or do not fit together)."""
        return cls(**{n: np.asarray(arrays[n]) for n in _ARRAYS}, meta=dict(meta))


# --- per-step activation ranges of restore_step ------------------------------------------------------------------


@dataclass(frozen=True)
class StepRange:
    """The range of restore_step's y input at one step; `share` is y_absmax over the largest y_absmax of any step:
    the fraction of one shared INT8 range that this step's values use (a small share means few quantisation levels
    are left for that step)."""

    step: int
    gamma: float
    rows: int
    y_min: float
    y_max: float
    y_absmax: float
    y_std: float
    share: float


def step_ranges(cs: CalibrationSet) -> list[StepRange]:
    """Per step (T-1 first, as the loop runs), the range of y: does one range fit step T-1 (pure noise) and step 0
    (nearly the restored image)?"""
    steps = sorted({int(s) for s in cs.step}, reverse=True)
    stats: list[tuple[int, float, int, float, float, float, float]] = []
    for s in steps:
        mask = cs.step == s
        y = cs.y[mask]
        stats.append((s, float(cs.gamma[mask][0]), int(mask.sum()), float(y.min()), float(y.max()),
                      float(np.abs(y).max()), float(y.std(dtype=np.float64))))
    top = max((st[5] for st in stats), default=0.0)
    return [StepRange(*st, share=st[5] / top if top > 0 else 1.0) for st in stats]

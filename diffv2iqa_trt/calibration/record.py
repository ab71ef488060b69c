"""Recording a calibration set: images -> crops (the bundle's policy and mode) -> the bundle's own FP32 pipeline, with
an executor wrapper that keeps host copies of what the graphs receive.

The step of every restore_step call is recorded explicitly: the recording pipeline tags the (gamma, coef) inputs it
hands to the loop with the index of the table row they were made from (`Pipeline.step_inputs`), and the recording
executor reads the tag; nothing is inferred from the order or number of calls.

Crops are chosen deterministically: images in the order of their sha256 (so the set depends on the files, not on
their names or order), then round-robin over the images (each image's first crop, then each image's second, ...)
until `max_crops`, so that a limit keeps every image represented.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.store import Bundle
from ..config import ScoringConfig
from ..contract import BRANCH_INPUTS, COEF, GAMMA, SNAPSHOT_INPUTS, X, Y, Z
from ..errors import ConfigError, DiffV2IQAError
from ..runtime.crops import WorkUnit
from ..runtime.executor import Executor, Handle
from ..runtime.from_bundle import bundle_pipeline
from ..runtime.images import expand_paths, load_image
from ..runtime.pipeline import Pipeline, Snapshots
from .dataset import MIN_IMAGES

# progress(stage, done, total): stage is "hashing" (files), "decoding" (files) or "recording" (crops).
Progress = Callable[[str, int, int], None]

_CHUNK = 1 << 20


def _silent(_stage: str, _done: int, _total: int) -> None:
    pass


# --- image files -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    path: Path
    sha256: str


def _sha256_regular(path: Path) -> str:
    """sha256 of a regular file's bytes; OSError for anything else (a FIFO would block, a device never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def image_files(paths: Sequence[str | os.PathLike[str]],
                progress: Progress = _silent) -> tuple[list[ImageFile], list[tuple[str, str]]]:
    """The readable files of `paths` (directories searched recursively for image suffixes), hashed, one per distinct
    content, sorted by sha256; and (file, reason) for each file that could not be read. ConfigError for a path that
    does not exist, a folder that cannot be listed, or no files at all."""
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"calibration images: {p} does not exist")
        if p.is_dir():
            try:
                with os.scandir(p):
                    pass
            except OSError as exc:
                raise ConfigError(f"calibration images: cannot read the folder {p} "
                                  f"({exc.strerror or exc})") from None
    files = expand_paths(list(paths))
    if not files:
        raise ConfigError(f"calibration images: no image files in {', '.join(map(str, paths)) or 'no paths'}; "
                          f"give at least {MIN_IMAGES} images (files or folders)")
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for i, f in enumerate(files):
        progress("hashing", i, len(files))
        try:
            digest = _sha256_regular(f)
        except OSError as exc:
            skipped.append((str(f), f"cannot read the file ({exc.strerror or exc})"))
            continue
        found.setdefault(digest, f)
    progress("hashing", len(files), len(files))
    return [ImageFile(path, digest) for digest, path in sorted(found.items())], skipped


def check_enough(count: int, what: str, skipped: Sequence[tuple[str, str]]) -> None:
    """ConfigError naming MIN_IMAGES when fewer than that many images are usable."""
    if count >= MIN_IMAGES:
        return
    shown = "".join(f"\n  {name}: {reason}" for name, reason in sorted(skipped)[:10])
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    raise ConfigError(f"calibration needs at least {MIN_IMAGES} distinct images that decode; {what} {count}"
                      + (f"; {len(skipped)} file(s) skipped:{shown}{more}" if skipped else ""))


# --- the crop plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedUnit:
    """A work unit to restore (its boxes limited to the chosen crops) and the crop ids of those boxes."""

    unit: WorkUnit
    crop_ids: tuple[int, ...]


@dataclass(frozen=True)
class CropPlan:
    images: list[ImageFile]  # the images crops were taken from, in sha256 order (crop_source's image index)
    groups: list[list[PlannedUnit]]  # units of one shape per group, crop ids numbered through the groups in order
    source: np.ndarray  # (C, 4) int64: image, unit, top, left of crop id c
    skipped: list[tuple[str, str]]

    @property
    def crops(self) -> int:
        return int(len(self.source))


def spread(k: int, m: int) -> list[int]:
    """m of the indices 0..k-1 (m <= k), evenly spaced and centred: spread(5, 1) == [2], spread(4, 2) == [1, 3]."""
    return [(2 * j + 1) * k // (2 * m) for j in range(m)]


def plan_crops(files: Sequence[ImageFile], prepare: Callable[[np.ndarray], list[WorkUnit]], max_crops: int,
               max_pixels: int, skipped: Sequence[tuple[str, str]] = (), progress: Progress = _silent) -> CropPlan:
    """Decode images (sha256 order) until `max_crops` usable ones, cut their work units with `prepare` (the
    pipeline's policy and mode), then take crops round-robin over the images up to `max_crops`, each image's crops
    spread evenly over its crop list. Images that fail to decode or that the crop rules refuse are skipped;
    ConfigError when fewer than MIN_IMAGES remain.

    Memory: the uint8 pixels of at most max_crops crops per image (crops mode) or one resized image per image
    (faithful mode), for at most max_crops images."""
    skipped = list(skipped)
    images: list[ImageFile] = []
    units: list[dict[int, WorkUnit]] = []  # per image: the units some candidate crop needs
    candidates: list[list[tuple[int, int]]] = []  # per image: (unit, box) of at most max_crops crops, spread
    for i, f in enumerate(files):
        if len(images) >= max_crops:  # every image gives at least one crop: later ones cannot be reached
            break
        progress("decoding", i, len(files))
        try:
            prepared = prepare(load_image(f.path, max_pixels))
        except DiffV2IQAError as exc:  # ImageDecodeError, ImageSizeError: that image's problem
            skipped.append((str(f.path), str(getattr(exc, "reason", exc))))
            continue
        crops = [(u, b) for u, unit in enumerate(prepared) for b in range(len(unit.boxes))]
        if not crops:
            skipped.append((str(f.path), "the crop policy gives no crop"))
            continue
        picked = [crops[j] for j in spread(len(crops), min(len(crops), max_crops))]
        # Own copies: a unit is often a view of the whole decoded image, which must not stay alive.
        units.append({u: dataclasses.replace(prepared[u], pixels=np.array(prepared[u].pixels))
                      for u in sorted({u for u, _ in picked})})
        candidates.append(picked)
        images.append(f)
    progress("decoding", len(files), len(files))
    check_enough(len(images), "usable images:", skipped)

    counts = [0] * len(images)  # round-robin: each image's first crop, then each image's second, ...
    for r in range(max(map(len, candidates))):
        for i, picked in enumerate(candidates):
            if r < len(picked) and sum(counts) < max_crops:
                counts[i] += 1
    boxes: dict[tuple[int, int], list[int]] = {}
    for i, picked in enumerate(candidates):
        for j in spread(len(picked), counts[i]):
            u, b = picked[j]
            boxes.setdefault((i, u), []).append(b)

    # Units of one shape together, as the pipeline batches them; crop ids follow the order the pipeline cuts them.
    by_shape: dict[tuple[int, ...], list[WorkUnit]] = {}
    owners: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for (i, u), bs in boxes.items():
        unit = units[i][u]
        chosen = dataclasses.replace(unit, boxes=tuple(unit.boxes[b] for b in sorted(bs)))
        by_shape.setdefault(chosen.shape, []).append(chosen)
        owners.setdefault(chosen.shape, []).append((i, u))
    groups: list[list[PlannedUnit]] = []
    source: list[tuple[int, int, int, int]] = []
    for shape, members in by_shape.items():
        group = []
        for unit, (i, u) in zip(members, owners[shape], strict=True):
            ids = tuple(range(len(source), len(source) + len(unit.boxes)))
            source.extend((i, u, top, left) for top, left in unit.boxes)
            group.append(PlannedUnit(unit, ids))
        groups.append(group)
    return CropPlan(images=images, groups=groups, source=np.asarray(source, dtype=np.int64).reshape(-1, 4),
                    skipped=skipped)


# --- recording -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInput:
    """A restore_step input handle tagged with the step (row of the pipeline's tables) it was made for."""

    handle: Handle
    step: int


def kept_rows(crops: int, rows_per_step: int | None) -> Callable[[int, int], bool]:
    """keep(crop, step): all rows, or at most rows_per_step crops per step, staggered so that every crop is kept
    at every k-th step (k = ceil(crops / rows_per_step))."""
    if rows_per_step is None or rows_per_step >= crops:
        return lambda _c, _s: True
    k = math.ceil(crops / rows_per_step)
    return lambda c, s: (c + s) % k == 0


@dataclass
class Recorder:
    """Collects host copies of restore_step inputs (per kept crop and step) and of the branch inputs."""

    crop_size: int
    crops: int
    keep: Callable[[int, int], bool]
    queue: deque[PlannedUnit] = field(default_factory=deque)
    progress: Progress = _silent
    restored: int = 0
    crop_x: dict[int, np.ndarray] = field(default_factory=dict)
    rows: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in (Y, GAMMA, COEF, "step", "crop",
                                                                                  "z_index")})
    z: list[np.ndarray] = field(default_factory=list)
    z_keys: dict[tuple[int, ...], int] = field(default_factory=dict)
    branch_rows: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in BRANCH_INPUTS})
    _current: list[PlannedUnit] = field(default_factory=list)
    _last_branch: tuple[Handle, ...] | None = None

    def _window(self, top: int, left: int) -> tuple[slice, slice, slice]:
        s = self.crop_size
        return slice(None), slice(top, top + s), slice(left, left + s)

    def begin_restore(self, x: np.ndarray) -> None:
        """A Pipeline.restore call starts on x: its rows are the next units of the plan (checked, not assumed)."""
        batch = [self.queue.popleft() for _ in range(min(len(x), len(self.queue)))]
        if len(batch) != len(x) or any(not np.array_equal(row, p.unit.x) for row, p in zip(x, batch, strict=True)):
            raise RuntimeError("calibration: the pipeline restored other crops than were planned (toolkit bug)")
        for row, p in zip(x, batch, strict=True):
            for (top, left), c in zip(p.unit.boxes, p.crop_ids, strict=True):
                self.crop_x[c] = np.array(row[self._window(top, left)], dtype=np.float32)
        self._current = batch

    def end_restore(self) -> None:
        self.restored += sum(len(p.crop_ids) for p in self._current)
        self._current = []
        self.progress("recording", self.restored, self.crops)

    def restore_step(self, step: int, y: Handle, gamma: Handle, coef: Handle, z: Handle,
                     download: Callable[[Handle], np.ndarray]) -> None:
        kept = [(j, c, box) for j, p in enumerate(self._current) for box, c in zip(p.unit.boxes, p.crop_ids,
                                                                                      strict=True)
                if self.keep(c, step)]
        if not kept:
            return
        y_h, g_h, c_h, z_h = (download(h) for h in (y, gamma, coef, z))
        height, width = y_h.shape[-2:]
        for j, c, (top, left) in kept:
            window = self._window(top, left)
            key = (step, height, width, top, left)  # the noise input depends on nothing else (seed fixed per run)
            if key not in self.z_keys:
                self.z_keys[key] = len(self.z)
                self.z.append(np.array(z_h[0][window], dtype=np.float32))
            rows = self.rows
            rows[Y].append(np.array(y_h[j][window], dtype=np.float32))
            rows[GAMMA].append(np.float32(g_h[j]))
            rows[COEF].append(np.array(c_h[j], dtype=np.float32))
            rows["step"].append(step)
            rows["crop"].append(c)
            rows["z_index"].append(self.z_keys[key])

    def branch(self, handles: tuple[Handle, ...], download: Callable[[Handle], np.ndarray]) -> None:
        # vcg and vda of one batch receive the same four handles: record them once.
        last = self._last_branch
        if last is not None and all(a is b for a, b in zip(handles, last, strict=True)):
            return
        self._last_branch = handles
        for name, h in zip(self.branch_rows, handles, strict=True):
            self.branch_rows[name].extend(np.array(download(h), dtype=np.float32))


class RecordingExecutor:
    """An Executor that delegates every call to `inner` and hands the inputs of restore_step, vcg and vda to a
    Recorder first. restore_step must receive StepInput-tagged gamma and coef (RecordingPipeline makes them)."""

    def __init__(self, inner: Executor, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self.name = inner.name

    def upload(self, array: np.ndarray) -> Handle:
        return self.inner.upload(array)

    def download(self, handle: Handle) -> np.ndarray:
        return self.inner.download(handle)

    def restore_step(self, x: Handle, y: Handle, gamma: Handle, coef: Handle, z: Handle) -> Handle:
        if not (isinstance(gamma, StepInput) and isinstance(coef, StepInput) and gamma.step == coef.step):
            raise RuntimeError("calibration: restore_step received inputs without their step (the pipeline no "
                               "longer takes them from step_inputs()); the step cannot be recorded (toolkit bug)")
        self.recorder.restore_step(gamma.step, y, gamma.handle, coef.handle, z, self.inner.download)
        return self.inner.restore_step(x, y, gamma.handle, coef.handle, z)

    def vcg(self, x: Handle, y0: Handle, yt1: Handle, yt2: Handle) -> Handle:
        self.recorder.branch((x, y0, yt1, yt2), self.inner.download)
        return self.inner.vcg(x, y0, yt1, yt2)

    def vda(self, x: Handle, y0: Handle, yt1: Handle, yt2: Handle) -> Handle:
        self.recorder.branch((x, y0, yt1, yt2), self.inner.download)
        return self.inner.vda(x, y0, yt1, yt2)


@dataclass
class RecordingPipeline(Pipeline):
    """The pipeline, unchanged, except that each restore call announces its rows to the recorder and the per-step
    inputs carry their step index."""

    recorder: Recorder | None = None

    def _rec(self) -> Recorder:
        if self.recorder is None:
            raise RuntimeError("RecordingPipeline needs a recorder")
        return self.recorder

    def step_inputs(self, batch: int) -> list[tuple[Handle, Handle]]:
        return [(StepInput(g, i), StepInput(c, i)) for i, (g, c) in enumerate(super().step_inputs(batch))]

    def restore(self, x: np.ndarray) -> Snapshots:
        rec = self._rec()
        rec.begin_restore(x)
        snaps = super().restore(x)
        rec.end_restore()
        return snaps


@dataclass(frozen=True)
class Recorded:
    arrays: dict[str, np.ndarray]  # CalibrationSet's arrays (crop_source included)
    executor: str


def record(bundle: Bundle, scoring: ScoringConfig, plan: CropPlan, *, rows_per_step: int | None = None,
           device: str = "cpu", batch_size: int = 8, threads: int | None = None,
           progress: Progress = _silent) -> Recorded:
    """Run the plan's crops through the bundle's FP32 ONNX Runtime pipeline and return what the graphs received."""
    plain = bundle_pipeline(bundle, "onnxruntime", device=device, scoring=scoring, batch_size=batch_size,
                            threads=threads)
    spec = plain.spec
    queue = deque(p for group in plan.groups for p in group)
    rec = Recorder(crop_size=spec.crop_size, crops=plan.crops, keep=kept_rows(plan.crops, rows_per_step),
                   queue=queue, progress=progress)
    pipe = RecordingPipeline(RecordingExecutor(plain.executor, rec), spec, plain.batch_size, recorder=rec)
    progress("recording", 0, plan.crops)
    for group in plan.groups:
        # One call per shape: the pipeline then restores the units in the planned order.
        pipe.crop_scores([(0, p.unit) for p in group])
    if rec.queue or len(rec.crop_x) != plan.crops or len(rec.branch_rows[X]) != plan.crops:
        raise RuntimeError("calibration: the pipeline did not restore and score every planned crop (toolkit bug)")
    crop_x = np.stack([rec.crop_x[c] for c in range(plan.crops)])
    if not np.array_equal(crop_x, np.stack(rec.branch_rows[X])):
        raise RuntimeError("calibration: the branch graphs received crops in another order than restored "
                           "(toolkit bug)")
    s = spec.crop_size
    rows = rec.rows
    empty = np.zeros((0, 3, s, s), np.float32)
    # CalibrationSet's arrays: the branch inputs as recorded (x once, as crop_x), restore_step's rows and indices.
    arrays = {
        "crop_x": crop_x,
        **{name: np.stack(rec.branch_rows[name]) for name in SNAPSHOT_INPUTS},
        Y: np.stack(rows[Y]) if rows[Y] else empty,
        GAMMA: np.asarray(rows[GAMMA], dtype=np.float32),
        COEF: np.asarray(rows[COEF], dtype=np.float32).reshape(len(rows[COEF]), spec.coef.shape[1]),
        "step": np.asarray(rows["step"], dtype=np.int32),
        "crop": np.asarray(rows["crop"], dtype=np.int32),
        "z_index": np.asarray(rows["z_index"], dtype=np.int32),
        Z: np.stack(rec.z) if rec.z else empty,
        "crop_source": plan.source,
    }
    return Recorded(arrays=arrays, executor=plain.executor.name)

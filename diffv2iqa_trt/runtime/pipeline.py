"""The scoring pipeline: fixed-step restoration, snapshot capture, crop assembly, branch calls and fusion.

It runs over any `Executor` and needs only NumPy: the schedule tables, noise seed and crop policy come from a
`PipelineSpec`, made from a bundle manifest (`from_manifest`) or a model config (`from_config`), in one place each.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..bundle.manifest import PipelineSection
from ..config import MAX_STEPS, ModelConfig, ScoringConfig, check_seed
from ..contract import COEF_WIDTH
from ..errors import ConfigError
from ..schedule import check_capture_steps, step_tables
from .batching import UNLIMITED, BatchLimits
from .crops import WorkUnit, prepare
from .executor import Executor, Handle
from .noise import noise_bank

# Noise banks kept per resolution (LRU). A paper-size 512x512 bank is ~160 MB on the host plus its device copy, and
# faithful mode meets a new resolution with every image size, so the cache must be bounded.
DEFAULT_NOISE_BANKS = 4


def check_steps(steps: int) -> int:
    """A step count the pipeline accepts (ConfigError otherwise), checked before any table is allocated: at most
    config.MAX_STEPS, since the step tables, the noise bank and the run time all grow with it."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be an integer between 1 and {MAX_STEPS}, got {steps!r}")
    return steps


@dataclass(frozen=True)
class PipelineSpec:
    gamma: np.ndarray  # (T,) noise level per step, float32
    coef: np.ndarray  # (T, COEF_WIDTH) step coefficients, float32 (columns as contract.COEF_NAMES)
    capture_t1: int
    capture_t2: int
    noise_seed: int
    crop_size: int
    size_multiple: int
    crops: str = "center"
    mode: str = "crops"
    vcg_weight: float = 1.0
    vda_weight: float = 1.0

    def __post_init__(self) -> None:
        check_steps(int(self.gamma.shape[0]) if self.gamma.ndim == 1 else -1)
        check_seed(self.noise_seed)

    @property
    def steps(self) -> int:
        return int(self.gamma.shape[0])

    @classmethod
    def from_config(cls, config: ModelConfig, scoring: ScoringConfig, steps: int | None = None) -> PipelineSpec:
        """The pipeline of a model config (the reference, and what `build` writes into a bundle)."""
        n = check_steps(config.schedule.steps if steps is None else steps)
        check_capture_steps(config.schedule, n)
        tables = step_tables(config.schedule, n)
        return cls(gamma=tables.gamma.astype(np.float32), coef=tables.coef.astype(np.float32),
                   capture_t1=config.schedule.capture_t1, capture_t2=config.schedule.capture_t2,
                   noise_seed=scoring.noise_seed, crop_size=config.crop_size,
                   size_multiple=config.unet.size_multiple, crops=scoring.crops, mode=scoring.mode,
                   vcg_weight=config.fusion.vcg_weight, vda_weight=config.fusion.vda_weight)

    @classmethod
    def from_manifest(cls, p: PipelineSection, scoring: ScoringConfig | None = None) -> PipelineSpec:
        """The pipeline a bundle records; `scoring` overrides its crop policy, mode and noise seed."""
        spec = cls(gamma=np.asarray(p.gamma, dtype=np.float32),
                   coef=np.asarray(p.coef, dtype=np.float32).reshape(p.steps, COEF_WIDTH),
                   capture_t1=p.capture_t1, capture_t2=p.capture_t2, noise_seed=p.noise.seed,
                   crop_size=p.crop_size, size_multiple=p.size_multiple, crops=p.crops, mode=p.mode,
                   vcg_weight=p.fusion.vcg_weight, vda_weight=p.fusion.vda_weight)
        if scoring is not None:
            spec = dataclasses.replace(spec, crops=scoring.crops, mode=scoring.mode, noise_seed=scoring.noise_seed)
        return spec


@dataclass(frozen=True)
class ImageScore:
    score: float
    vcg: float | None  # None when the branch has zero fusion weight and was skipped
    vda: float | None
    crops: int


@dataclass(frozen=True)
class Snapshots:
    y0: np.ndarray
    yt1: np.ndarray
    yt2: np.ndarray


@dataclass
class Pipeline:
    executor: Executor
    spec: PipelineSpec
    batch_size: int = 8
    max_noise_banks: int = DEFAULT_NOISE_BANKS
    limits: BatchLimits = UNLIMITED  # the batching rule (batching.py), from the bundle's profiles
    _banks: OrderedDict[tuple[int, int], tuple[np.ndarray, list[Handle]]] = field(default_factory=OrderedDict,
                                                                                    repr=False)
    _step_inputs: dict[int, list[tuple[Handle, Handle]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_noise_banks < 1:
            raise ConfigError(f"max_noise_banks must be at least 1, got {self.max_noise_banks}")

    def noise(self, height: int, width: int) -> tuple[np.ndarray, list[Handle]]:
        """The noise bank of one resolution, generated and uploaded once while it stays among the
        `max_noise_banks` most recently used: (starting sample (3,H,W) on the host, step noise rows (1,3,H,W) as
        backend handles)."""
        key = (height, width)
        if key in self._banks:
            self._banks.move_to_end(key)
            return self._banks[key]
        bank = noise_bank(self.spec.noise_seed, self.spec.steps, height, width)
        entry = (bank[self.spec.steps], [self.executor.upload(row[None]) for row in bank[:-1]])
        self._banks[key] = entry
        while len(self._banks) > self.max_noise_banks:
            self._banks.popitem(last=False)
        return entry

    def step_inputs(self, batch: int) -> list[tuple[Handle, Handle]]:
        """Per step i, the (gamma (B,), coef (B,k)) inputs for a batch of `batch`, uploaded once, not every step."""
        if batch not in self._step_inputs:
            s, ex = self.spec, self.executor
            self._step_inputs[batch] = [
                (ex.upload(np.full((batch,), s.gamma[i], dtype=np.float32)),
                 ex.upload(np.ascontiguousarray(np.broadcast_to(s.coef[i].astype(np.float32),
                                                                (batch, s.coef.shape[1])))))
                for i in range(s.steps)]
        return self._step_inputs[batch]

    def restore(self, x: np.ndarray) -> Snapshots:
        """Run all steps on a batch x (B,3,H,W) and keep y0, y_t1 and y_t2 (host arrays)."""
        ex, s = self.executor, self.spec
        b, _, h, w = x.shape
        start, bank = self.noise(h, w)
        x_dev = ex.upload(x)
        y = ex.upload(np.ascontiguousarray(np.broadcast_to(start, x.shape)))
        captured: dict[int, np.ndarray] = {}
        steps = self.step_inputs(b)
        for i in reversed(range(s.steps)):
            gamma, coef = steps[i]
            y = ex.restore_step(x_dev, y, gamma, coef, bank[i])
            if i in (s.capture_t1, s.capture_t2):
                captured[i] = ex.download(y)
        return Snapshots(y0=ex.download(y), yt1=captured[s.capture_t1], yt2=captured[s.capture_t2])

    def _branch_scores(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray,
                       yt2: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        ex = self.executor
        handles = [ex.upload(a) for a in (x, y0, yt1, yt2)]
        vcg = ex.download(ex.vcg(*handles)) if self.spec.vcg_weight != 0 else None
        vda = ex.download(ex.vda(*handles)) if self.spec.vda_weight != 0 else None
        return vcg, vda

    def prepare(self, rgb: np.ndarray) -> list[WorkUnit]:
        """One decoded image's work units (ImageSizeError for an image the crop rules or the limits refuse)."""
        return prepare_within(rgb, self.spec, self.limits)

    def work_units(self, images: Sequence[np.ndarray]) -> list[tuple[int, WorkUnit]]:
        """Every image's work units, tagged with the image's index."""
        return [(index, u) for index, rgb in enumerate(images) for u in self.prepare(rgb)]

    def crop_scores(self, units: Sequence[tuple[int, WorkUnit]]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Restore the units (those of one resolution batched together), cut their crops and score them: (the owning
        image of each crop, VCG per crop, VDA per crop; NaN for a branch with fusion weight 0, which is not run).

        Crops are scored as soon as a batch of them is ready, so memory holds one restoration batch and one branch
        batch, not every crop of the list; the branch batches are the same consecutive runs of crops as if all crops
        were collected first. Batch sizes follow the batching rule (batching.py)."""
        s = self.spec
        branch_batch = self.limits.branch_batch_for(self.batch_size)
        by_shape: dict[tuple[int, ...], list[tuple[int, WorkUnit]]] = defaultdict(list)
        for item in units:
            by_shape[item[1].shape].append(item)
        owners: list[int] = []
        pending: list[list[np.ndarray]] = [[], [], [], []]
        vcg_all: list[np.ndarray] = []
        vda_all: list[np.ndarray] = []

        def flush(count: int) -> None:
            batch = [np.stack(c[:count]) for c in pending]
            for c in pending:
                del c[:count]
            vcg, vda = self._branch_scores(*batch)
            vcg_all.append(vcg if vcg is not None else np.full(count, np.nan, np.float32))
            vda_all.append(vda if vda is not None else np.full(count, np.nan, np.float32))

        for group in by_shape.values():
            restore_batch = self.limits.restore_batch_for(self.batch_size, is_direct(group[0][1], s.crop_size))
            for start in range(0, len(group), restore_batch):
                chunk = group[start:start + restore_batch]
                x = np.stack([u.x for _, u in chunk])
                snaps = self.restore(x)
                for j, (owner, unit) in enumerate(chunk):
                    for top, left in unit.boxes:
                        window = (slice(None), slice(top, top + s.crop_size), slice(left, left + s.crop_size))
                        for k, arr in enumerate((x, snaps.y0, snaps.yt1, snaps.yt2)):
                            pending[k].append(arr[j][window])
                        owners.append(owner)
                        if len(pending[0]) >= branch_batch:
                            flush(branch_batch)
        if pending[0]:
            flush(len(pending[0]))
        if not vcg_all:
            return owners, np.zeros(0, np.float32), np.zeros(0, np.float32)
        return owners, np.concatenate(vcg_all), np.concatenate(vda_all)

    def score(self, images: Sequence[np.ndarray]) -> list[ImageScore]:
        """Score decoded RGB uint8 images (H, W, 3); one ImageScore per image, in order."""
        return self.score_prepared([self.prepare(rgb) for rgb in images])

    def score_prepared(self, prepared: Sequence[Sequence[WorkUnit]]) -> list[ImageScore]:
        """Score images already turned into work units (`prepare`); one ImageScore per image, in order."""
        if not prepared:
            return []
        owners, vcg, vda = self.crop_scores([(index, u) for index, units in enumerate(prepared) for u in units])
        return _aggregate(owners, vcg, vda, len(prepared), self.spec.vcg_weight, self.spec.vda_weight)


def is_direct(unit: WorkUnit, crop_size: int) -> bool:
    """Whether a unit's restoration is its one crop (crops mode, resize224): the restored batch is a branch batch."""
    return unit.shape[1:] == (crop_size, crop_size) and tuple(unit.boxes) == ((0, 0),)


def prepare_within(rgb: np.ndarray, spec: PipelineSpec, limits: BatchLimits) -> list[WorkUnit]:
    """An image's work units under the crop rules and the batching limits (ImageSizeError otherwise)."""
    units = prepare(rgb, spec.crops, spec.mode, spec.crop_size, spec.size_multiple)
    for unit in units:
        limits.check_unit(unit)
    return units


class ScoringPipeline(Protocol):
    """What scoring needs of a pipeline: the host Pipeline and the StreamPipeline both are one."""

    spec: PipelineSpec

    @property
    def executor(self) -> Any: ...
    def prepare(self, rgb: np.ndarray) -> list[WorkUnit]: ...
    def score_prepared(self, prepared: Sequence[Sequence[WorkUnit]]) -> list[ImageScore]: ...


def crop_mean(values: np.ndarray) -> float:
    """An image's crop scores averaged as docs/bundle.md states it: float64, summed left to right in crop order, then
    divided by the count (np.mean sums pairwise, which a port would have to copy)."""
    total = 0.0
    for v in values.tolist():  # float32 -> Python float (float64), exactly
        total += v
    return total / len(values) if len(values) else float("nan")


def _aggregate(owner: list[int], vcg: np.ndarray, vda: np.ndarray, count: int, vcg_weight: float,
               vda_weight: float) -> list[ImageScore]:
    """Mean over an image's crops of each branch, then the weighted fusion."""
    owners = np.asarray(owner)
    out: list[ImageScore] = []
    for index in range(count):
        mask = owners == index
        mv, md = crop_mean(vcg[mask]), crop_mean(vda[mask])
        fused = (vcg_weight * mv if vcg_weight else 0.0) + (vda_weight * md if vda_weight else 0.0)
        out.append(ImageScore(score=fused, vcg=None if vcg_weight == 0 else mv,
                              vda=None if vda_weight == 0 else md, crops=int(mask.sum())))
    return out


"""The scoring pipeline: fixed-step restoration, snapshot capture, crop assembly, branch calls and fusion.

It runs over any `Executor` and needs only NumPy: the schedule tables, noise seed and crop policy come from a
`PipelineSpec` (which a bundle manifest or a model config provides).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .crops import WorkUnit, prepare
from .executor import Executor, Handle
from .noise import noise_bank


@dataclass(frozen=True)
class PipelineSpec:
    gamma: np.ndarray  # (T,) noise level per step
    coef: np.ndarray  # (T, 5) step coefficients (see model.schedule.COEF_NAMES)
    capture_t1: int
    capture_t2: int
    noise_seed: int
    crop_size: int
    size_multiple: int
    crops: str = "center"
    mode: str = "crops"
    vcg_weight: float = 1.0
    vda_weight: float = 1.0

    @property
    def steps(self) -> int:
        return int(self.gamma.shape[0])


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
    _banks: dict[tuple[int, int], tuple[np.ndarray, list[Handle]]] = field(default_factory=dict, repr=False)
    _step_inputs: dict[int, list[tuple[Handle, Handle]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    def noise(self, height: int, width: int) -> tuple[np.ndarray, list[Handle]]:
        """The noise bank of one resolution, generated and uploaded once: (starting sample (3,H,W) on the host,
        step noise rows (1,3,H,W) as backend handles)."""
        key = (height, width)
        if key not in self._banks:
            bank = noise_bank(self.spec.noise_seed, self.spec.steps, height, width)
            self._banks[key] = (bank[self.spec.steps], [self.executor.upload(row[None]) for row in bank[:-1]])
        return self._banks[key]

    def step_inputs(self, batch: int) -> list[tuple[Handle, Handle]]:
        """Per step i, the (gamma (B,), coef (B,5)) inputs for a batch of `batch`, uploaded once, not every step."""
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

    def score(self, images: Sequence[np.ndarray]) -> list[ImageScore]:
        """Score decoded RGB uint8 images (H, W, 3); one ImageScore per image, in order."""
        s = self.spec
        units: list[tuple[int, WorkUnit]] = []
        for index, rgb in enumerate(images):
            units.extend((index, u) for u in prepare(rgb, s.crops, s.mode, s.crop_size, s.size_multiple))
        # Restore units of one resolution together, then cut their crops.
        by_shape: dict[tuple[int, ...], list[tuple[int, WorkUnit]]] = defaultdict(list)
        for item in units:
            by_shape[item[1].x.shape].append(item)
        crop_owner: list[int] = []
        crop_sets: list[list[np.ndarray]] = [[], [], [], []]
        for group in by_shape.values():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                x = np.stack([u.x for _, u in chunk])
                snaps = self.restore(x)
                for j, (owner, unit) in enumerate(chunk):
                    for top, left in unit.boxes:
                        window = (slice(top, top + s.crop_size), slice(left, left + s.crop_size))
                        for k, arr in enumerate((x, snaps.y0, snaps.yt1, snaps.yt2)):
                            crop_sets[k].append(arr[j][(slice(None), *window)])
                        crop_owner.append(owner)
        vcg_all: list[np.ndarray] = []
        vda_all: list[np.ndarray] = []
        for start in range(0, len(crop_owner), self.batch_size):
            batch = [np.stack(c[start:start + self.batch_size]) for c in crop_sets]
            vcg, vda = self._branch_scores(*batch)
            n = batch[0].shape[0]
            vcg_all.append(vcg if vcg is not None else np.full(n, np.nan, np.float32))
            vda_all.append(vda if vda is not None else np.full(n, np.nan, np.float32))
        return _aggregate(crop_owner, np.concatenate(vcg_all), np.concatenate(vda_all), len(images),
                          self.spec.vcg_weight, self.spec.vda_weight)


def _aggregate(owner: list[int], vcg: np.ndarray, vda: np.ndarray, count: int, vcg_weight: float,
               vda_weight: float) -> list[ImageScore]:
    """Mean over an image's crops of each branch, then the weighted fusion."""
    owners = np.asarray(owner)
    out: list[ImageScore] = []
    for index in range(count):
        mask = owners == index
        mv = float(np.mean(vcg[mask], dtype=np.float64))
        md = float(np.mean(vda[mask], dtype=np.float64))
        fused = (vcg_weight * mv if vcg_weight else 0.0) + (vda_weight * md if vda_weight else 0.0)
        out.append(ImageScore(score=fused, vcg=None if vcg_weight == 0 else mv,
                              vda=None if vda_weight == 0 else md, crops=int(mask.sum())))
    return out


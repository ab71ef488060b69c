"""IQA training on the frozen restorer's snapshots, and evaluation against the pseudo-MOS.

The IQA net sees exactly what inference feeds it: crops cut by `runtime.crops.prepare` (mode `crops`), restored by
the runtime pipeline (`Pipeline.restore`, deterministic noise bank), and the uint8 round trip inside
`model.vcg` / `model.vda`. Snapshots of every training and validation crop are computed once and kept in memory.

Objective: both branch scores regress the crop's pseudo-MOS (the mean of the SSIM map over the crop window),
loss = MSE(vcg, target) + MSE(vda, target), so each branch is a quality predictor on its own and the fused score
(the tiny config's 0.5 * vcg + 0.5 * vda) is their mean. Adam with weight decay, cosine learning-rate decay,
random horizontal flips (of the crop and its snapshots together). Model selection: the epoch with the best
validation SRCC (image level, the default `center` crop policy) is kept.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ScoringConfig
from ..model.diffv2iqa import DiffV2IQA
from ..reference import reference_pipeline
from ..runtime.crops import crop_boxes, prepare
from .data import Sample


@dataclass
class CropSet:
    """Crops with their snapshots and targets, all in memory."""

    x: np.ndarray  # (N, 3, S, S) float32 in [-1, 1]
    y0: np.ndarray
    yt1: np.ndarray
    yt2: np.ndarray
    target: np.ndarray  # (N,) float32: the crop's pseudo-MOS
    owner: np.ndarray  # (N,) int: index of the sample (image) the crop comes from

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def save(self, path: str | Path) -> None:
        np.savez(path, x=self.x, y0=self.y0, yt1=self.yt1, yt2=self.yt2, target=self.target, owner=self.owner)

    @classmethod
    def load(cls, path: str | Path) -> CropSet:
        with np.load(path) as z:
            return cls(z["x"], z["y0"], z["yt1"], z["yt2"], z["target"], z["owner"])

    @classmethod
    def concat(cls, sets: Sequence[CropSet]) -> CropSet:
        return cls(*(np.concatenate([getattr(c, f) for c in sets]) for f in ("x", "y0", "yt1", "yt2", "target",
                                                                               "owner")))

    def tensors(self, idx: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in (self.x, self.y0, self.yt1, self.yt2)]


def crop_positions(sample: Sample, index: int, per_image: int, size: int, seed: int) -> list[tuple[int, int]]:
    """Where an image's crops are cut. per_image == 1: the centre (the default `center` policy, used for
    validation); otherwise `per_image` uniformly random positions, drawn per image (seeded by its index), so the
    50 distorted versions of a photograph show different content and the net cannot learn a photograph's crops
    by heart (a first run with the five policy's fixed positions did exactly that)."""
    h, w = sample.image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"{sample.photo} is smaller than the crop size")
    if per_image == 1:
        return [crop_boxes("center", h, w, size)[0]]
    rng = np.random.default_rng([seed, index])
    return [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(per_image)]


def build_crops(model: DiffV2IQA, samples: Sequence[Sample], per_image: int, *, seed: int = 0,
                batch_size: int = 64, log: Callable[[str], None] | None = None) -> CropSet:
    """Cut crops the way inference does (`prepare`, mode `crops`) and restore them with the runtime pipeline
    (noise seed 0): exactly the inputs the IQA net gets when scoring."""
    s = model.config.crop_size
    m = model.config.unet.size_multiple
    pipe = reference_pipeline(model, ScoringConfig(), batch_size=batch_size)
    xs: list[np.ndarray] = []
    targets: list[float] = []
    owners: list[int] = []
    for i, sample in enumerate(samples):
        for top, left in crop_positions(sample, i, per_image, s, seed):
            # A crop-sized window through `prepare` gives exactly the unit the pipeline scores for that crop.
            (unit,) = prepare(sample.image[top:top + s, left:left + s], "center", "crops", s, m)
            xs.append(unit.x)
            targets.append(sample.crop_target(top, left, s))
            owners.append(i)
    x = np.stack(xs)
    snaps: list[list[np.ndarray]] = [[], [], []]
    start = time.perf_counter()
    for b in range(0, len(x), batch_size):
        r = pipe.restore(x[b:b + batch_size])
        for lst, arr in zip(snaps, (r.y0, r.yt1, r.yt2), strict=True):
            lst.append(arr)
        if log is not None:
            log(f"restored {min(b + batch_size, len(x))}/{len(x)} crops ({time.perf_counter() - start:.0f} s)")
    y0, yt1, yt2 = (np.concatenate(v) for v in snaps)
    return CropSet(x, y0, yt1, yt2, target=np.asarray(targets, np.float32), owner=np.asarray(owners))


@torch.no_grad()
def branch_scores(model: DiffV2IQA, crops: CropSet, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(vcg, vda) per crop, eval mode."""
    model.eval()
    vcg, vda = [], []
    for b in range(0, len(crops), batch_size):
        t = crops.tensors(np.arange(b, min(b + batch_size, len(crops))))
        vcg.append(model.vcg(*t).numpy())
        vda.append(model.vda(*t).numpy())
    return np.concatenate(vcg), np.concatenate(vda)


def srcc(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def plcc(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(a, b).statistic)


def image_scores(model: DiffV2IQA, crops: CropSet, count: int) -> np.ndarray:
    """Fused image scores: the mean over an image's crops of each branch, then the configured fusion."""
    vcg, vda = branch_scores(model, crops)
    f = model.config.fusion
    out = np.empty(count)
    for i in range(count):
        mask = crops.owner == i
        out[i] = f.vcg_weight * vcg[mask].mean() + f.vda_weight * vda[mask].mean()
    return out


def _per_image(v: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    return np.array([v[owner == i].mean() for i in range(count)])


def train_iqa(model: DiffV2IQA, train: CropSet, val: CropSet, val_mos: np.ndarray, *, epochs: int,
              batch_size: int, lr: float, weight_decay: float, seed: int, joint_batchnorm: bool = True,
              time_limit_s: float = 0.0,
              log: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Train model.iqa in place (the U-Net stays frozen); at the end the best-validation weights are loaded.

    With `joint_batchnorm` the ResNet runs once on the joint batch of the four image sets (x, y0, y_t1, y_t2), as
    at inference, so its BatchNorm running statistics are those inference applies to all four. The model's own
    training path (the authors') normalises each set with its own batch statistics; a first run trained that way
    scored the validation split worse than a constant (train/inference mismatch). The switch only clears
    `IQANet.training` (read by `_backbone_features` alone); BatchNorm and dropout stay in training mode.

    Returns the per-epoch history and the best epoch.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    for p in model.unet.parameters():
        p.requires_grad_(False)
    params = [p for p in model.iqa.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.iqa.train()
        if joint_batchnorm:
            model.iqa.training = False  # children keep training mode; see the docstring
        losses: list[float] = []
        perm = rng.permutation(len(train))
        for b in range(0, len(train), batch_size):
            idx = perm[b:b + batch_size]
            t = train.tensors(idx)
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None]
            t = [torch.where(flip, v.flip(-1), v) for v in t]
            target = torch.from_numpy(train.target[idx])
            loss = ((model.vcg(*t) - target) ** 2).mean() + ((model.vda(*t) - target) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        vcg, vda = branch_scores(model, val)
        f = model.config.fusion
        fused_crop = f.vcg_weight * vcg + f.vda_weight * vda
        scores = image_scores(model, val, len(val_mos))
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "train_step_losses": losses,
            "val_loss": float(np.mean((vcg - val.target) ** 2) + np.mean((vda - val.target) ** 2)),
            "val_fused_mse": float(np.mean((fused_crop - val.target) ** 2)),
            "val_srcc": srcc(scores, val_mos),
            "val_srcc_vcg": srcc(_per_image(vcg, val.owner, len(val_mos)), val_mos),
            "val_srcc_vda": srcc(_per_image(vda, val.owner, len(val_mos)), val_mos),
            "val_plcc": plcc(scores, val_mos),
            "lr": float(sched.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        history.append(entry)
        if best is None or entry["val_srcc"] > best[0]:
            best = (entry["val_srcc"], epoch, copy.deepcopy(model.iqa.state_dict()))
        if log is not None:
            log(entry)
        if time_limit_s and time.perf_counter() - start > time_limit_s:
            break
    assert best is not None
    model.iqa.load_state_dict(best[2])
    model.eval()
    return history, best[1]


def level_metrics(scores: np.ndarray, samples: Sequence[Sample]) -> dict[str, Any]:
    """Agreement of scores with the distortion level (0 = pristine): pooled, and per distortion type
    (Spearman over that type's images of every photograph, pristine photographs included as level 0).
    Signs are flipped so that +1 means the score falls as the level rises."""
    levels = np.array([s.level for s in samples])
    kinds = np.array([s.kind for s in samples])
    per_type: dict[str, float] = {}
    for kind in sorted(set(kinds) - {"pristine"}):
        mask = (kinds == kind) | (kinds == "pristine")
        per_type[str(kind)] = -srcc(scores[mask], levels[mask])
    return {"srcc_vs_level_pooled": -srcc(scores, levels), "srcc_vs_level_per_type": per_type,
            "srcc_vs_level_mean_over_types": float(np.mean(list(per_type.values())))}


def evaluate(model: DiffV2IQA, samples: Sequence[Sample], crops: str = "center",
             batch_size: int = 32) -> dict[str, Any]:
    """Image-level metrics with the runtime pipeline's scores (mode `crops`, noise seed 0)."""
    pipe = reference_pipeline(model, ScoringConfig(crops=crops), batch_size=batch_size)
    start = time.perf_counter()
    scores = np.array([r.score for r in pipe.score([s.image for s in samples])])
    seconds = time.perf_counter() - start
    mos = np.array([s.pseudo_mos for s in samples])
    return {
        "images": len(samples),
        "photos": sorted({s.photo for s in samples}),
        "crops": crops,
        "srcc_vs_pseudo_mos": srcc(scores, mos),
        "plcc_vs_pseudo_mos": plcc(scores, mos),
        **level_metrics(scores, samples),
        "score_seconds": round(seconds, 1),
        "per_image": [{"photo": s.photo, "kind": s.kind, "level": s.level, "pseudo_mos": round(s.pseudo_mos, 5),
                       "score": round(float(v), 5)} for s, v in zip(samples, scores, strict=True)],
    }

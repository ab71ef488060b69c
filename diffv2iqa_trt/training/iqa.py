"""IQA training on the frozen restorer's snapshots, and evaluation against the pseudo-MOS.

The IQA net sees exactly what inference feeds it: crops cut by `runtime.crops.prepare` (mode `crops`), restored by
the runtime pipeline (`Pipeline.restore`, deterministic noise bank), and the uint8 round trip inside
`model.vcg` / `model.vda`. Snapshots of every training and validation crop are computed once and kept in memory.

Objective: both branch scores regress the crop's pseudo-MOS (the mean of the SSIM map over the crop window),
loss = MSE(vcg, target) + MSE(vda, target), so each branch is a quality predictor on its own and the fused score
(the tiny config's 0.5 * vcg + 0.5 * vda) is their mean; optionally plus an auxiliary distortion type/level loss
on the backbones (training-only heads). Adam with weight decay, optional warm-up then cosine learning-rate decay,
random flips or dihedral transforms (of the crop and its snapshots together), optional weight EMA. Model
selection: the epoch with the best validation SRCC (image level, the default `center` crop policy) is kept.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

import numpy as np
import torch

from ..config import FusionConfig, ScoringConfig
from ..data.distortions import DISTORTIONS, LEVELS
from ..errors import ConfigError
from ..metrics import plcc, srcc
from ..model.diffv2iqa import DiffV2IQA
from ..reference.loading import reference_pipeline
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

    def save(self, file: str | os.PathLike[str] | IO[bytes]) -> None:
        """An .npz archive (np.savez appends `.npz` to a path without it; an open file is written as is)."""
        np.savez(file, x=self.x, y0=self.y0, yt1=self.yt1, yt2=self.yt2, target=self.target, owner=self.owner)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CropSet:
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
        raise ConfigError(f"{sample.photo} ({h}x{w}) is smaller than the crop size {size}; use larger images")
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


def _per_image(v: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    return np.array([v[owner == i].mean() for i in range(count)])


FUSION_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


def best_fusion(vcg: np.ndarray, vda: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(vcg weight w, image-level SRCC) of the fusion w * vcg + (1 - w) * vda that ranks `mos` best, w on a 0.1 grid;
    ties go to the weight nearest 0.5 (the equal fusion of the authors' tiny-scale default)."""
    results = [(srcc(w * vcg + (1.0 - w) * vda, mos), -abs(w - 0.5), w) for w in FUSION_GRID]
    rho, _, w = max(results)
    return w, rho


@dataclass(frozen=True)
class AuxTargets:
    """Per training crop: the distortion type's index (0 = pristine) and the level / 5, for the auxiliary loss."""

    kind: np.ndarray  # (N,) int64
    level: np.ndarray  # (N,) float32
    n_kinds: int

    @classmethod
    def of(cls, crops: CropSet, samples: Sequence[Sample]) -> AuxTargets:
        kinds = ("pristine", *DISTORTIONS)
        return cls(np.array([kinds.index(samples[o].kind) for o in crops.owner], np.int64),
                   np.array([samples[o].level / LEVELS for o in crops.owner], np.float32), len(kinds))


AUGMENTATIONS = ("hflip", "dihedral")


def augment_batch(tensors: list[torch.Tensor], kind: str, rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random geometric transform applied to a crop and its snapshots (one draw per sample).

    hflip: horizontal flip or not. dihedral: one of the 8 rotations/reflections of the square; the distortions
    are isotropic or come in both orientations (motion blur), so every transform keeps the quality target.
    """
    n = tensors[0].shape[0]
    if kind == "hflip":
        flip = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
        return [torch.where(flip, v.flip(-1), v) for v in tensors]
    if kind == "dihedral":
        ops = rng.integers(0, 8, n)
        out = [v.clone() for v in tensors]
        for i, op in enumerate(ops):
            for v, o in zip(tensors, out, strict=True):
                t = torch.rot90(v[i], int(op) % 4, dims=(-2, -1))
                o[i] = t.transpose(-2, -1) if op >= 4 else t
        return out
    raise ConfigError(f"unknown augmentation {kind!r}; use one of {', '.join(AUGMENTATIONS)}")


def check_train_options(*, epochs: int, batch_size: int, augment: str, warmup_epochs: float, ema_decay: float,
                        aux_weight: float) -> None:
    """Raise ConfigError for option values `train_iqa` cannot work with (checked before any training starts)."""
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}")
    if not 0 <= warmup_epochs < epochs:
        raise ConfigError(f"warm-up must be in [0, epochs) = [0, {epochs}) epochs, got {warmup_epochs}")
    if not 0.0 <= ema_decay < 1.0:
        raise ConfigError(f"EMA decay must be in [0, 1), got {ema_decay}")
    if aux_weight < 0:
        raise ConfigError(f"auxiliary loss weight must be >= 0, got {aux_weight}")


def train_iqa(model: DiffV2IQA, train: CropSet, val: CropSet, val_mos: np.ndarray, *, epochs: int,
              batch_size: int, lr: float, weight_decay: float, seed: int, joint_batchnorm: bool = True,
              augment: str = "hflip", warmup_epochs: float = 0.0, ema_decay: float = 0.0,
              fit_fusion: bool = False, aux: AuxTargets | None = None, aux_weight: float = 0.0,
              time_limit_s: float = 0.0,
              log: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Train model.iqa in place (the U-Net stays frozen); at the end the best-validation weights are loaded.

    With `joint_batchnorm` the ResNet runs once on the joint batch of the four image sets (x, y0, y_t1, y_t2), as
    at inference, so its BatchNorm running statistics are those inference applies to all four. The model's own
    training path (the authors') normalises each set with its own batch statistics; a first run trained that way
    scored the validation split worse than a constant (train/inference mismatch). The switch only clears
    `IQANet.training` (read by `_backbone_features` alone); BatchNorm and dropout stay in training mode.

    With `ema_decay` > 0, an exponential moving average of the weights (BatchNorm statistics copied from the live
    net) is what gets validated, selected and kept: it smooths the epoch-to-epoch swings of a small net trained on
    few photographs.

    With `fit_fusion`, epochs are compared by the validation SRCC of the best fusion weights (`best_fusion`), and
    the kept epoch's weights become the model's fusion config; otherwise by the configured fusion.

    With `aux` and `aux_weight` > 0, training-only linear heads on the ResNet logits and on the mean ViT token
    (last tapped block) of the distorted crop learn which distortion it shows and how strong (cross-entropy on the
    type + MSE on level / 5), weighted by `aux_weight`: a richer signal for the backbones than one scalar per crop
    (the pseudo-MOS is mostly a function of type and level). The heads are discarded; the checkpoint keeps the
    authors' architecture.

    Returns the per-epoch history and the best epoch. Bad option values raise ConfigError (`check_train_options`).
    """
    check_train_options(epochs=epochs, batch_size=batch_size, augment=augment, warmup_epochs=warmup_epochs,
                        ema_decay=ema_decay, aux_weight=aux_weight)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    for p in model.unet.parameters():
        p.requires_grad_(False)
    params = [p for p in model.iqa.parameters() if p.requires_grad]
    # Backbone outputs captured during a step, for the auxiliary heads: ResNet logits (4B, C) and the ViT's last
    # tapped block (4B, 1 + T, E); both on the joint batch x, y0, y_t1, y_t2, so rows [:B] belong to x.
    features: dict[str, torch.Tensor] = {}
    aux_heads: dict[str, torch.nn.Module] = {}
    hooks = []
    if aux is not None and aux_weight > 0:
        vit = model.iqa.vit
        for name, module, width in (("res", model.iqa.res, model.config.iqa.resnet.num_classes),
                                    ("vit", vit.blocks[max(vit.config.taps)], vit.config.embed_dim)):
            aux_heads[name] = torch.nn.Linear(width, aux.n_kinds + 1)
            params += list(aux_heads[name].parameters())
            hooks.append(module.register_forward_hook(partial(_keep_first, features, name)))
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    total, warm = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + float(np.cos(np.pi * (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    ema = {k: v.detach().clone() for k, v in model.iqa.state_dict().items()} if ema_decay else None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.iqa.train()
        if joint_batchnorm:
            model.iqa.training = False  # children keep training mode; see the docstring
        losses: list[float] = []  # the score part, comparable with the validation loss
        aux_losses: list[float] = []
        perm = rng.permutation(len(train))
        for b in range(0, len(train), batch_size):
            idx = perm[b:b + batch_size]
            t = augment_batch(train.tensors(idx), augment, rng)
            target = torch.from_numpy(train.target[idx])
            features.clear()
            score_loss = ((model.vcg(*t) - target) ** 2).mean() + ((model.vda(*t) - target) ** 2).mean()
            loss = score_loss
            if aux is not None:
                for name, head in aux_heads.items():
                    feat = features[name][:len(idx)]
                    logits = head(feat[:, 1:].mean(dim=1) if feat.ndim == 3 else feat)  # ViT: mean of the patch tokens
                    loss = loss + aux_weight * (
                        torch.nn.functional.cross_entropy(logits[:, :-1], torch.from_numpy(aux.kind[idx]))
                        + ((logits[:, -1] - torch.from_numpy(aux.level[idx])) ** 2).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(score_loss.detach()))
            aux_losses.append(float(loss.detach() - score_loss.detach()))
            if ema is not None:
                _update_ema(ema, model.iqa.state_dict(), ema_decay)
        live = None
        if ema is not None:  # validate the averaged weights; the live ones resume training afterwards
            live = copy.deepcopy(model.iqa.state_dict())
            model.iqa.load_state_dict(ema)
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "train_step_losses": losses,
            "train_aux_loss": float(np.mean(aux_losses)),
            **validation_metrics(model, val, val_mos),
            "lr": float(sched.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        history.append(entry)
        key = "val_srcc_best_fusion" if fit_fusion else "val_srcc"
        if best is None or entry[key] > best[0]:
            best = (entry[key], epoch, copy.deepcopy(model.iqa.state_dict()))
        if log is not None:
            log(entry)
        if live is not None:
            model.iqa.load_state_dict(live)
        if time_limit_s and time.perf_counter() - start > time_limit_s:
            break
    for h in hooks:
        h.remove()
    assert best is not None
    model.iqa.load_state_dict(best[2])
    if fit_fusion:
        w = history[best[1] - 1]["fusion_vcg_weight"]
        model.config = dataclasses.replace(model.config, fusion=FusionConfig(vcg_weight=w, vda_weight=1.0 - w))
    model.eval()
    return history, best[1]


def validation_metrics(model: DiffV2IQA, val: CropSet, val_mos: np.ndarray) -> dict[str, Any]:
    """Crop losses and image-level SRCC/PLCC of the model on the validation crops, and the best fusion weight."""
    vcg, vda = branch_scores(model, val)
    f = model.config.fusion
    fused_crop = f.vcg_weight * vcg + f.vda_weight * vda
    # Image score: the mean over an image's crops of each branch, then the configured fusion.
    vcg_image, vda_image = _per_image(vcg, val.owner, len(val_mos)), _per_image(vda, val.owner, len(val_mos))
    scores = f.vcg_weight * vcg_image + f.vda_weight * vda_image
    fusion_w, fusion_srcc = best_fusion(vcg_image, vda_image, val_mos)
    return {
        "val_loss": float(np.mean((vcg - val.target) ** 2) + np.mean((vda - val.target) ** 2)),
        "val_fused_mse": float(np.mean((fused_crop - val.target) ** 2)),
        "val_srcc": srcc(scores, val_mos),
        "val_srcc_vcg": srcc(vcg_image, val_mos),
        "val_srcc_vda": srcc(vda_image, val_mos),
        "val_plcc": plcc(scores, val_mos),
        "fusion_vcg_weight": fusion_w,
        "val_srcc_best_fusion": fusion_srcc,
    }


def _keep_first(store: dict[str, torch.Tensor], name: str, _module: torch.nn.Module, _inputs: Any,
                output: torch.Tensor) -> None:
    """Forward hook: keep a module's first output of the step (returns None, so the output is not replaced)."""
    if name not in store:
        store[name] = output


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], live: dict[str, torch.Tensor], decay: float) -> None:
    for k, v in live.items():
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
            ema[k].lerp_(v, 1.0 - decay)
        else:  # BatchNorm statistics are running averages already; counters are copied
            ema[k].copy_(v)


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

"""`diffv2iqa-trt train ...`: restorer pre-training, IQA training, evaluation and loss curves of the demo weights.

A typer sub-app (`train_app`); also runnable alone: `python -m diffv2iqa_trt.training.cli --help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..atomic import atomic_path, current_umask

train_app = typer.Typer(help="Train and evaluate demo weights on synthetic distortions of real photographs.",
                        no_args_is_help=True, pretty_exceptions_enable=False)


@train_app.callback()
def _group() -> None:
    """Train and evaluate demo weights on synthetic distortions of real photographs."""


def _command(name: str) -> str:
    """This invocation as a `diffv2iqa-trt train ...` command line."""
    argv = sys.argv
    tail = argv[argv.index(name):] if name in argv else [name, *argv[1:]]
    return "diffv2iqa-trt train " + shlex.join(tail)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _check_split(name: str) -> None:
    from .data import SPLITS

    if name not in SPLITS:
        raise typer.BadParameter(f"unknown split {name!r}; use one of {', '.join(SPLITS)}", param_hint="--split")


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:  # a log or metrics file is never left half-written
        tmp.write_text(json.dumps(doc, indent=1) + "\n")


@train_app.command()
def restorer(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (restorer trained, IQA net at its initialisation).")],
    log: Annotated[Path, typer.Option(help="JSON file for the per-step loss history.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 800,
    batch_size: Annotated[int, typer.Option(help="Crop pairs per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, the crops and the noise.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
) -> None:
    """Pre-train the tiny restorer U-Net on (distorted, pristine) pairs of the training split."""
    from ..config import tiny_config
    from ..model.checkpoint import save_checkpoint
    from ..model.diffv2iqa import build_model
    from .data import split_samples
    from .restorer import train_restorer

    _threads(threads)
    start = time.perf_counter()
    samples = split_samples("train")
    model = build_model(tiny_config(), seed=seed)

    def report(e: dict[str, Any]) -> None:
        if e["step"] % 50 == 0 or e["step"] == 1:
            typer.echo(f"step {e['step']:5d}  loss {e['loss']:.4f}  {e['seconds']:.0f} s", err=True)

    history = train_restorer(model, samples, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log=report)
    seconds = time.perf_counter() - start
    save_checkpoint(model, out, trained=False,
                    description=f"tiny restorer pre-trained {steps} steps on synthetic distortions (seed {seed}); "
                                "IQA net untrained")
    _write_json(log, {"command": _command("restorer"), "wall_seconds": round(seconds, 1), "steps": steps,
                      "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads, "history": history})
    typer.echo(f"wrote {out} and {log} ({seconds:.0f} s)")


@train_app.command()
def iqa(
    restorer: Annotated[Path, typer.Option(help="Checkpoint from `train restorer` (its U-Net is used, frozen).")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (trained).")],
    log: Annotated[Path, typer.Option(help="JSON file for the per-epoch history.")],
    epochs: Annotated[int, typer.Option(help="Passes over the training crops.")] = 12,
    crops_per_image: Annotated[int, typer.Option(help="Random crops per training image.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay to 0).")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of the IQA initialisation, the batches and dropout.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    time_limit: Annotated[float, typer.Option(help="Stop after the epoch that passes this many minutes of "
                                                    "training (0: no limit).")] = 0.0,
    crop_seed: Annotated[list[int] | None, typer.Option(help="Seed(s) of the random training-crop positions; "
                                                         "several seeds add crop sets (default: --seed).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Folder to keep the restored crops in (reused when the "
                                                     "restorer checkpoint and crop count match).")] = None,
    augment: Annotated[str, typer.Option(help="Geometric augmentation of the training crops and their snapshots: "
                                              "hflip or dihedral (the 8 rotations/reflections).")] = "hflip",
    warmup: Annotated[float, typer.Option(help="Epochs of linear learning-rate warm-up before the cosine "
                                               "decay.")] = 0.0,
    ema: Annotated[float, typer.Option(help="Decay of the exponential moving average of the weights that is "
                                            "validated and kept (0: off).")] = 0.0,
    aux_weight: Annotated[float, typer.Option(help="Weight of the auxiliary distortion type/level loss on the "
                                                   "ResNet and ViT features (training-only heads; 0: off).")] = 0.0,
    fit_fusion: Annotated[bool, typer.Option(help="Pick the VCG/VDA fusion weights (0.1 grid) on the validation "
                                                  "split and store them in the checkpoint's config.")] = False,
) -> None:
    """Train the IQA net on the frozen restorer's snapshots toward the SSIM pseudo-MOS; keep the best epoch."""
    from ..model.checkpoint import load_checkpoint, save_checkpoint
    from ..model.diffv2iqa import build_model
    from .data import split_samples
    from .iqa import AUGMENTATIONS, AuxTargets, CropSet, build_crops, train_iqa

    if augment not in AUGMENTATIONS:
        raise typer.BadParameter(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}",
                                 param_hint="--augment")
    if warmup < 0 or warmup >= epochs:
        raise typer.BadParameter(f"--warmup must be in [0, epochs), got {warmup}", param_hint="--warmup")
    if not 0.0 <= ema < 1.0:
        raise typer.BadParameter(f"--ema must be in [0, 1), got {ema}", param_hint="--ema")
    if aux_weight < 0:
        raise typer.BadParameter(f"--aux-weight must be >= 0, got {aux_weight}", param_hint="--aux-weight")
    _threads(threads)
    start = time.perf_counter()
    pre, _ = load_checkpoint(restorer)
    model = build_model(pre.config, seed=seed)  # fresh IQA initialisation, then the pre-trained U-Net
    model.unet.load_state_dict(pre.unet.state_dict())
    train_samples, val_samples = split_samples("train"), split_samples("val")

    def say(msg: str) -> None:
        typer.echo(msg, err=True)

    def crops_of(name: str, samples: list[Any], per_image: int, seed: int) -> CropSet:
        if cache is None:
            return build_crops(model, samples, per_image, seed=seed, log=say)
        key = hashlib.sha256(restorer.read_bytes()).hexdigest()[:12]
        path = cache / f"{name}-{per_image}-seed{seed}-{key}.npz"
        if path.is_file():
            say(f"reusing restored crops {path}")
            return CropSet.load(path)
        crops = build_crops(model, samples, per_image, seed=seed, log=say)
        cache.mkdir(parents=True, exist_ok=True)
        crops.save(path)
        return crops

    train_crops = CropSet.concat([crops_of("train", train_samples, crops_per_image, s)
                                  for s in (crop_seed or [seed])])
    val_crops = crops_of("val", val_samples, 1, seed)
    prep_seconds = time.perf_counter() - start
    val_mos = np.asarray([s.pseudo_mos for s in val_samples])

    def report(e: dict[str, Any]) -> None:
        say(f"epoch {e['epoch']:3d}  train {e['train_loss']:.4f}  val {e['val_loss']:.4f}  "
            f"val SRCC {e['val_srcc']:.4f} (VCG {e['val_srcc_vcg']:.3f}, VDA {e['val_srcc_vda']:.3f}; best fusion "
            f"w_vcg {e['fusion_vcg_weight']:.1f}: {e['val_srcc_best_fusion']:.4f})  PLCC {e['val_plcc']:.4f}  "
            f"{e['seconds']:.0f} s")

    history, best = train_iqa(model, train_crops, val_crops, val_mos, epochs=epochs, batch_size=batch_size,
                              lr=lr, weight_decay=weight_decay, seed=seed, augment=augment,
                              warmup_epochs=warmup, ema_decay=ema, fit_fusion=fit_fusion,
                              aux=AuxTargets.of(train_crops, train_samples), aux_weight=aux_weight,
                              time_limit_s=60 * time_limit, log=report)
    seconds = time.perf_counter() - start
    save_checkpoint(model, out, trained=True, description=(
        "tiny demo weights: trained on synthetic distortions of scikit-image photographs toward an SSIM "
        "pseudo-MOS (not human opinion scores); see weights/MODEL_CARD.md"))
    _write_json(log, {"command": _command("iqa"), "wall_seconds": round(seconds, 1),
                      "snapshot_seconds": round(prep_seconds, 1), "train_crops": len(train_crops),
                      "val_crops": len(val_crops),
                      "crop_seeds": crop_seed or [seed], "epochs": epochs, "best_epoch": best, "batch_size": batch_size,
                      "lr": lr, "weight_decay": weight_decay, "seed": seed, "threads": threads,
                      "augment": augment, "warmup_epochs": warmup, "ema": ema, "aux_weight": aux_weight,
                      "fit_fusion": fit_fusion, "fusion": dataclasses.asdict(model.config.fusion),
                      "history": history})
    kept = history[best - 1]["val_srcc_best_fusion" if fit_fusion else "val_srcc"]
    f = model.config.fusion
    typer.echo(f"wrote {out} (best epoch {best}, val SRCC {kept:.4f}, fusion {f.vcg_weight:g} * VCG + "
               f"{f.vda_weight:g} * VDA) and {log} ({seconds:.0f} s)")


@train_app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Native checkpoint to evaluate.")],
    out: Annotated[Path | None, typer.Option(help="JSON file for the metrics.")] = None,
    split: Annotated[list[str] | None, typer.Option(help="Split(s) to score (repeatable).")] = None,
    crops: Annotated[str, typer.Option(help="Crop policy of the image-level score.")] = "center",
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
) -> None:
    """Image-level SRCC/PLCC of the pipeline's scores against the pseudo-MOS and against distortion level."""
    from ..model.checkpoint import load_checkpoint
    from .data import SPLITS, split_samples
    from .iqa import evaluate as run_evaluation

    _threads(threads)
    model, info = load_checkpoint(checkpoint)
    results: dict[str, Any] = {}
    for name in split or ["val", "test"]:
        _check_split(name)
        r = run_evaluation(model, split_samples(name), crops=crops)
        results[name] = r
        typer.echo(f"{name}: SRCC {r['srcc_vs_pseudo_mos']:.4f}  PLCC {r['plcc_vs_pseudo_mos']:.4f}  "
                   f"SRCC vs level {r['srcc_vs_level_pooled']:.4f} (pooled), "
                   f"{r['srcc_vs_level_mean_over_types']:.4f} (mean over types)  [{r['images']} images]")
    if out is not None:
        _write_json(out, {"command": _command("evaluate"), "checkpoint": str(checkpoint),
                          "trained": info.trained, "splits": {k: list(v) for k, v in SPLITS.items()},
                          "target": "pseudo-MOS = SSIM (luminance) against the pristine photograph",
                          "results": results})
        typer.echo(f"wrote {out}")


@train_app.command("write-split")
def write_split(
    split: Annotated[str, typer.Option(help="Split to write: train, val or test.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and labels.csv (created; must be empty).")],
) -> None:
    """Write a split's images as PNGs with labels.csv (image, score = pseudo-MOS), e.g. for `parity --labels`."""
    import csv
    import shutil
    import tempfile

    from PIL import Image

    from .data import split_samples

    _check_split(split)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise typer.BadParameter(f"{out} exists and is not an empty folder; pick a new one", param_hint="--out")
    samples = split_samples(split)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything goes to a sibling temp folder that is renamed at the end: never a half-written split.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = []
        for s in samples:
            name = f"{s.photo}-{s.kind}{s.level}.png" if s.level else f"{s.photo}-pristine.png"
            Image.fromarray(s.image).save(tmp / name)
            rows.append((name, f"{s.pseudo_mos:.6f}"))
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "score"])
            w.writerows(rows)
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(f"wrote {len(rows)} images and labels.csv (pseudo-MOS) to {out}")


@train_app.command()
def curves(
    restorer_log: Annotated[Path, typer.Option(help="JSON log of `train restorer`.")],
    iqa_log: Annotated[Path, typer.Option(help="JSON log of `train iqa`.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
) -> None:
    """Plot the loss curves and the validation SRCC (needs matplotlib)."""
    from .plot import plot_curves

    plot_curves(json.loads(restorer_log.read_text()), json.loads(iqa_log.read_text()), out)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    train_app()

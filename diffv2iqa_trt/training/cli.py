"""`diffv2iqa-trt train ...`: restorer pre-training, IQA training, evaluation and loss curves of the demo weights.

A typer sub-app (`train_app`); also runnable alone: `python -m diffv2iqa_trt.training.cli --help`. A thin layer:
verbs parse options, call the training library and report; the library's expected failures (`DiffV2IQAError`)
become a message and the error's exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..atomic import atomic_path
from ..errors import DiffV2IQAError

train_app = typer.Typer(help="Train and evaluate demo weights on synthetic distortions of real photographs.",
                        no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)


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


@contextlib.contextmanager
def _expected_failures() -> Iterator[None]:
    """A library error is reported as a message and its exit code, not a traceback (anything else is a bug)."""
    try:
        yield
    except DiffV2IQAError as exc:
        typer.echo(f"{typer.style('error:', fg='red', bold=True)} {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


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

    def report(e: dict[str, Any]) -> None:
        if e["step"] % 50 == 0 or e["step"] == 1:
            typer.echo(f"step {e['step']:5d}  loss {e['loss']:.4f}  {e['seconds']:.0f} s", err=True)

    _threads(threads)
    start = time.perf_counter()
    with _expected_failures():
        samples = split_samples("train")
        model = build_model(tiny_config(), seed=seed)
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
    from .crop_cache import cached_crops
    from .data import split_samples
    from .iqa import AUGMENTATIONS, AuxTargets, CropSet, check_train_options, train_iqa

    # The common mistakes get typer's messages, which name the option; check_train_options covers the rest
    # (epochs, batch size) before the minutes of crop restoration.
    if augment not in AUGMENTATIONS:
        raise typer.BadParameter(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}",
                                 param_hint="--augment")
    if warmup < 0 or warmup >= epochs:
        raise typer.BadParameter(f"--warmup must be in [0, epochs), got {warmup}", param_hint="--warmup")
    if not 0.0 <= ema < 1.0:
        raise typer.BadParameter(f"--ema must be in [0, 1), got {ema}", param_hint="--ema")
    if aux_weight < 0:
        raise typer.BadParameter(f"--aux-weight must be >= 0, got {aux_weight}", param_hint="--aux-weight")

    def say(msg: str) -> None:
        typer.echo(msg, err=True)

    def report(e: dict[str, Any]) -> None:
        say(f"epoch {e['epoch']:3d}  train {e['train_loss']:.4f}  val {e['val_loss']:.4f}  "
            f"val SRCC {e['val_srcc']:.4f} (VCG {e['val_srcc_vcg']:.3f}, VDA {e['val_srcc_vda']:.3f}; best fusion "
            f"w_vcg {e['fusion_vcg_weight']:.1f}: {e['val_srcc_best_fusion']:.4f})  PLCC {e['val_plcc']:.4f}  "
            f"{e['seconds']:.0f} s")

    _threads(threads)
    start = time.perf_counter()
    with _expected_failures():
        check_train_options(epochs=epochs, batch_size=batch_size, augment=augment, warmup_epochs=warmup,
                            ema_decay=ema, aux_weight=aux_weight)
        pre, _ = load_checkpoint(restorer)
        model = build_model(pre.config, seed=seed)  # fresh IQA initialisation, then the pre-trained U-Net
        model.unet.load_state_dict(pre.unet.state_dict())
        train_samples, val_samples = split_samples("train"), split_samples("val")
        cache_args: dict[str, Any] = {"cache_dir": cache, "restorer_path": restorer, "log": say}
        train_crops = CropSet.concat([cached_crops(model, train_samples, crops_per_image, seed=s, name="train",
                                                   **cache_args) for s in (crop_seed or [seed])])
        val_crops = cached_crops(model, val_samples, 1, seed=seed, name="val", **cache_args)
        prep_seconds = time.perf_counter() - start
        val_mos = np.asarray([s.pseudo_mos for s in val_samples])
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
    from .data import SPLITS, check_split, split_samples
    from .iqa import evaluate as run_evaluation

    _threads(threads)
    names = split or ["val", "test"]
    results: dict[str, Any] = {}
    with _expected_failures():
        for name in names:  # every split is checked before the first one is scored
            check_split(name)
        model, info = load_checkpoint(checkpoint)
        for name in names:
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
def write_split_command(
    split: Annotated[str, typer.Option(help="Split to write: train, val or test.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and labels.csv (created; must be empty).")],
) -> None:
    """Write a split's images as PNGs with labels.csv (image, score = pseudo-MOS), e.g. for `parity --labels`."""
    from .data import write_split

    with _expected_failures():
        count = write_split(split, out)
    typer.echo(f"wrote {count} images and labels.csv (pseudo-MOS) to {out}")


@train_app.command()
def curves(
    restorer_log: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSON log of `train restorer`.")],
    iqa_log: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSON log of `train iqa`.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
) -> None:
    """Plot the loss curves and the validation SRCC (needs matplotlib)."""
    from .plot import plot_curves

    with _expected_failures():
        plot_curves(json.loads(restorer_log.read_text()), json.loads(iqa_log.read_text()), out)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    train_app()

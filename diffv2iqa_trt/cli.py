"""The `diffv2iqa-trt` command line: a thin layer over the library API."""

from __future__ import annotations

import csv
import io
import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__

app = typer.Typer(
    help="Deploy and run the DiffV2IQA no-reference image-quality model (PyTorch reference, ONNX, TensorRT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class PresetName(str, Enum):
    tiny = "tiny"
    paper = "paper"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"diffv2iqa-trt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Deploy and run the DiffV2IQA no-reference image-quality model."""


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


@app.command()
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")],
    checkpoint: Annotated[Path | None, typer.Option(help="Native checkpoint (.safetensors). Default: the embedded "
                                                         "model (tiny, untrained random weights).")] = None,
    preset: Annotated[PresetName | None, typer.Option(help="Model preset when no checkpoint is given.")] = None,
    crops: Annotated[str, typer.Option(help="Crop policy: center, five, grid:N or resize224.")] = "center",
    mode: Annotated[str, typer.Option(help="crops: restore only the crops; faithful: restore the whole image "
                                           "(resized to a multiple of 16) and crop afterwards.")] = "crops",
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's schedule).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the deterministic noise bank.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Crops per batch.")] = 8,
    device: Annotated[str, typer.Option(help="torch device of the reference backend: cpu or cuda.")] = "cpu",
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
) -> None:
    """Score images with the PyTorch reference. Bad files are reported and skipped; the exit code is 1 if any
    file could not be scored."""
    from .config import ScoringConfig
    from .model.checkpoint import CheckpointError
    from .reference import load_model, reference_pipeline
    from .runtime.images import ImageDecodeError, expand_paths, load_image

    try:
        scoring = ScoringConfig(crops=crops, mode=mode, noise_seed=seed)
        loaded = load_model(checkpoint, preset.value if preset else None)
        pipeline = reference_pipeline(loaded.model, scoring, steps, batch_size, device)
    except (CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    files = expand_paths(list(paths))
    if not files:
        raise _fail("no images found in the given paths")
    if not loaded.info.trained:
        err.print(f"[yellow]warning:[/] model {loaded.label}: scores are not meaningful quality ratings")

    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    progress = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=len(files) < 2, transient=True)
    with progress:
        task = progress.add_task("score", total=len(files))
        chunk = max(1, batch_size)
        for start in range(0, len(files), chunk):
            batch: list[tuple[int, Any]] = []
            for index in range(start, min(start + chunk, len(files))):
                try:
                    batch.append((index, load_image(files[index])))
                except ImageDecodeError as exc:
                    errors[index] = exc.reason
            if batch:
                for (index, _), result in zip(batch, pipeline.score([img for _, img in batch]), strict=True):
                    results[index] = result
            progress.advance(task, min(chunk, len(files) - start))

    _emit(fmt, files, results, errors, loaded.label, loaded.info.trained, scoring, pipeline.spec.steps)
    for index, reason in sorted(errors.items()):
        err.print(f"[bold red]error:[/] {files[index]}: {reason}")
    if errors:
        err.print(f"{len(errors)} of {len(files)} file(s) could not be scored")
        raise typer.Exit(1)


def _emit(fmt: OutputFormat, files: list[Path], results: dict[int, Any], errors: dict[int, str], label: str,
          trained: bool, scoring: Any, steps: int) -> None:
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(files):
        r = results.get(i)
        rows.append({"path": str(path), "score": r.score if r else None, "vcg": r.vcg if r else None,
                     "vda": r.vda if r else None, "crops": r.crops if r else 0, "error": errors.get(i)})
    if fmt is OutputFormat.json:
        doc = {"model": {"label": label, "trained": trained}, "crops": scoring.crops, "mode": scoring.mode,
               "steps": steps, "noise_seed": scoring.noise_seed, "results": rows}
        out.print(json.dumps(doc, indent=2), markup=False)
    elif fmt is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["path", "score", "vcg", "vda", "crops", "model", "error"],
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "model": label, "error": row["error"] or ""})
        out.print(buf.getvalue(), end="", markup=False)
    else:
        table = Table(title=f"DiffV2IQA scores, model {label}", caption=f"crops={scoring.crops} mode={scoring.mode} "
                      f"steps={steps} seed={scoring.noise_seed}")
        for col in ("image", "score", "VCG", "VDA", "crops"):
            if col == "image":
                table.add_column(col, overflow="fold")
            else:
                table.add_column(col, justify="right")
        for row in rows:
            if row["error"] is None:
                table.add_row(row["path"], _fmt(row["score"]), _fmt(row["vcg"]), _fmt(row["vda"]), str(row["crops"]))
            else:
                table.add_row(row["path"], "[red]error[/]", "", "", "")
        out.print(table)


@app.command()
def info(
    preset: Annotated[PresetName, typer.Option(help="Model preset.")] = PresetName.tiny,
    crop_size: Annotated[int | None, typer.Option(help="Crop size for the MAC count (default: the preset's).")] = None,
    image_size: Annotated[str | None, typer.Option(help="Restoration size HxW, e.g. 384x512 (default: one crop).")]
    = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the preset's schedule).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Model summary: parameters and MACs per stage for a preset."""
    from .config import preset as make_preset
    from .model.summary import summarize

    config = make_preset(preset.value)
    try:
        restore_hw = _parse_hw(image_size) if image_size else None
        summary = summarize(config, crop_size=crop_size, restore_hw=restore_hw, steps=steps)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print(json.dumps(summary.to_dict(), indent=2), markup=False)
        return
    params = Table(title=f"Parameters, preset {config.name}")
    params.add_column("part")
    params.add_column("parameters", justify="right")
    params.add_column("M", justify="right")
    for name, count in summary.params.items():
        params.add_row(name, f"{count:,}", f"{count / 1e6:.2f}")
    out.print(params)
    macs = Table(title=f"MACs per stage, crop {summary.crop_size}x{summary.crop_size}, restoration "
                      f"{summary.restore_hw[0]}x{summary.restore_hw[1]}, {summary.steps} steps")
    macs.add_column("stage")
    macs.add_column("GMAC", justify="right")
    for name, count in summary.macs.items():
        macs.add_row(name, f"{count / 1e9:.3f}")
    out.print(macs)


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size {text!r} is not HxW, e.g. 384x512") from None
    return h, w


@app.command()
def convert(
    sr3: Annotated[Path, typer.Option(help="Authors' SR3 generator checkpoint (*_gen.pth, a state dict).")],
    div2iqa: Annotated[Path, typer.Option(help="Authors' DIV2IQA checkpoint (a state dict).")],
    out_path: Annotated[Path, typer.Option("--out", help="Native checkpoint to write (.safetensors).")],
    preset: Annotated[PresetName, typer.Option(help="Architecture of the checkpoints.")] = PresetName.paper,
    feed_t1_as_t2: Annotated[bool, typer.Option(help="The IQA net was trained with y_t1 fed where y_t2 belongs "
                                                     "(the authors' code snapshot).")] = False,
    vcg_weight: Annotated[float | None, typer.Option(help="Fusion weight of VCG (default: the preset's).")] = None,
    vda_weight: Annotated[float | None, typer.Option(help="Fusion weight of VDA (default: the preset's).")] = None,
) -> None:
    """Convert the authors' checkpoints into one native checkpoint."""
    import dataclasses

    from .config import preset as make_preset
    from .model.checkpoint import CheckpointError, load_authors, save_checkpoint

    config = make_preset(preset.value)
    head = dataclasses.replace(config.iqa.head, feed_t1_as_t2=feed_t1_as_t2)
    fusion = dataclasses.replace(config.fusion, **{k: v for k, v in (("vcg_weight", vcg_weight),
                                                                       ("vda_weight", vda_weight)) if v is not None})
    config = config.replace(iqa=dataclasses.replace(config.iqa, head=head), fusion=fusion)
    try:
        model = load_authors(config, sr3, div2iqa)
    except CheckpointError as exc:
        raise _fail(str(exc)) from None
    save_checkpoint(model, out_path, trained=True, description=f"converted from {sr3.name} and {div2iqa.name}")
    out.print(f"wrote {out_path}")


if __name__ == "__main__":
    app()

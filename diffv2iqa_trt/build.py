"""`build --target onnx`: export the three graphs, lint them for TensorRT, check them against torch, write a bundle.

Everything is staged in a temporary directory and handed to `bundle.write_bundle`, which publishes the bundle
atomically: an interrupted or failed build never leaves a directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .benchmarks.parity import DEFAULT_GATES
from .bundle import BundleError, sha256_file, write_bundle
from .config import ScoringConfig
from .export.graphs import GRAPHS, example_inputs, graph_spec
from .export.onnx_export import export_graph
from .export.trt_lint import LintReport, lint_onnx
from .export.validate import compare_with_torch
from .model.checkpoint import CheckpointInfo, save_checkpoint
from .model.diffv2iqa import DiffV2IQA
from .model.schedule import COEF_NAMES, check_capture_steps, step_tables
from .runtime.noise import GENERATOR

TRT_MAJORS = (10, 11)
CHECKPOINT_FILE = "model.safetensors"


class BuildError(RuntimeError):
    """The build cannot produce a bundle that is safe to deploy."""


@dataclass(frozen=True)
class BuildOptions:
    scoring: ScoringConfig = ScoringConfig()
    opset: int = 18
    opt_batch: int = 8
    max_batch: int = 16
    max_size: int = 512  # largest restoration height/width in the TensorRT profile (faithful mode)
    steps: int | None = None  # denoising steps of the bundle (default: the model's schedule)
    include_checkpoint: bool = True
    allow_lint_failures: bool = False
    overwrite: bool = False

    def check(self, crop_size: int, size_multiple: int) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= --opt-batch ({self.opt_batch}) <= --max-batch ({self.max_batch})")
        if self.max_size < crop_size or self.max_size % size_multiple:
            raise ValueError(f"--max-size {self.max_size} must be at least the crop size {crop_size} and a "
                             f"multiple of {size_multiple}")


@dataclass(frozen=True)
class BuildResult:
    path: Path
    lint: dict[str, dict[int, LintReport]]
    parity: dict[str, Any]


Progress = Callable[[str], None]


def _profiles(graph: str, crop: int, o: BuildOptions) -> dict[str, dict[str, list[int]]]:
    def shapes(batch: int, hw: int) -> dict[str, list[int]]:
        if graph == "restore_step":
            img = [batch, 3, hw, hw]
            return {"x": img, "y": img, "gamma": [batch], "coef": [batch, 5], "z": [1, 3, hw, hw]}
        return {name: [batch, 3, crop, crop] for name in ("x", "y0", "y_t1", "y_t2")}

    return {"min": shapes(1, crop), "opt": shapes(o.opt_batch, crop), "max": shapes(o.max_batch, o.max_size)}


def build_onnx_bundle(model: DiffV2IQA, info: CheckpointInfo, out_dir: str | os.PathLike[str], options: BuildOptions,
                      *, init_seed: int | None = None, checkpoint_path: str | os.PathLike[str] | None = None,
                      progress: Progress | None = None) -> BuildResult:
    config = model.config
    options.check(config.crop_size, config.unet.size_multiple)
    if not options.overwrite and Path(out_dir).exists():  # fail before minutes of export, not after
        raise BundleError(f"{out_dir} already exists; choose another --out or pass --overwrite to replace it",
                          path=Path(out_dir))
    if options.steps is not None:
        check_capture_steps(config.schedule, options.steps)
        config = config.replace(schedule=dataclasses.replace(config.schedule, steps=options.steps))
    say = progress or (lambda _msg: None)
    tables = step_tables(config.schedule)
    with tempfile.TemporaryDirectory(prefix="diffv2iqa-build-") as tmp:
        stage = Path(tmp)
        files: dict[str, Path] = {}
        graphs: dict[str, Any] = {}
        lint: dict[str, dict[int, LintReport]] = {}
        # Gates that `diffv2iqa-trt parity` enforces for each precision of this bundle.
        parity: dict[str, Any] = {"reference": "torch fp32 (cpu)", "fp32": {},
                                  "gates": {p: dict(g) for p, g in DEFAULT_GATES.items()}}
        for graph in GRAPHS:
            say(f"exporting {graph}")
            name = f"{graph}.fp32.onnx"
            result = export_graph(model, graph, stage / name, opset=options.opset)
            if result.external_data is not None:
                files[result.external_data.name] = result.external_data
            files[name] = result.path
            say(f"linting {graph} for TensorRT {', '.join(map(str, TRT_MAJORS))}")
            lint[graph] = {major: lint_onnx(result.path, major) for major in TRT_MAJORS}
            say(f"checking {graph} against torch")
            batch = 2
            inputs = example_inputs(config, graph, batch=batch)
            parity["fp32"][graph] = {"batch": batch, **compare_with_torch(model, graph, result.path, inputs)}
            spec = graph_spec(graph, config)
            graphs[graph] = {
                "inputs": [t.to_dict() for t in spec.inputs],
                "outputs": [t.to_dict() for t in spec.outputs],
                "profiles": _profiles(graph, config.crop_size, options),
                "variants": {"fp32": {"file": name, "opset": result.opset}},
                "engines": {},
            }
        failures = [f"{g} (TensorRT {m})" for g, by_major in lint.items() for m, rep in by_major.items()
                    if not rep.ok]
        if failures and not options.allow_lint_failures:
            raise BuildError("TensorRT compatibility lint failed for " + ", ".join(failures) +
                             "; see the lint table, or pass --allow-lint-failures to write the bundle anyway")
        checkpoint_file = None
        if options.include_checkpoint:
            say("writing the checkpoint")
            save_checkpoint(model, stage / CHECKPOINT_FILE, trained=info.trained, description=info.description)
            files[CHECKPOINT_FILE] = stage / CHECKPOINT_FILE
            checkpoint_file = CHECKPOINT_FILE
        manifest = {
            "model": {
                "name": config.name, "config": config.to_dict(), "trained": info.trained,
                "description": info.description,
                "checkpoint_sha256": sha256_file(checkpoint_path) if checkpoint_path else None,
                "checkpoint": checkpoint_file, "init_seed": init_seed,
            },
            "pipeline": {
                "steps": tables.steps, "capture_t1": config.schedule.capture_t1,
                "capture_t2": config.schedule.capture_t2,
                "gamma": tables.gamma.astype(np.float32).tolist(),
                "coef": tables.coef.astype(np.float32).tolist(), "coef_names": list(COEF_NAMES),
                "noise": {"generator": GENERATOR, "seed": options.scoring.noise_seed},
                "crop_size": config.crop_size, "size_multiple": config.unet.size_multiple,
                "crops": options.scoring.crops, "mode": options.scoring.mode,
                "fusion": {"vcg_weight": config.fusion.vcg_weight, "vda_weight": config.fusion.vda_weight},
                "normalisation": {"formula": "x = (v / 255 - 0.5) / 0.5 for uint8 RGB v", "scale": 2.0 / 255.0,
                                  "offset": -1.0},
                "uint8_roundtrip": config.uint8_roundtrip,
            },
            "graphs": graphs,
            "lint": {g: {str(m): rep.to_dict() for m, rep in by_major.items()} for g, by_major in lint.items()},
            "parity": parity,
        }
        say("writing the bundle")
        path = write_bundle(out_dir, manifest, files, overwrite=options.overwrite, move=True)
    return BuildResult(path=path, lint=lint, parity=parity)

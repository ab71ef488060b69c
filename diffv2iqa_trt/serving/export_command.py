"""`diffv2iqa-trt export-triton`: a standalone Triton model repository of a bundle (serving/triton_repo.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffV2IQAError


class OnnxDevice(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class BlsTarget(str, Enum):
    auto = "auto"
    onnx = "onnx"
    tensorrt = "tensorrt"


def export_triton(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory written by `diffv2iqa-trt build`.")],
    out: Annotated[Path, typer.Option("--out", help="The repository folder to create (must not exist, or be "
                                                    "empty).")],
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, help="max_batch_size of the batched models (vcg, vda, the Python models); default: "
                                   "the largest the bundle's profiles allow.")] = None,
    instances: Annotated[int, typer.Option("--instances", min=1, max=64, help="Instances of each model (instance_group "
                                                                      "count).")] = 1,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="Precision plan of the exported graphs (fp32, fp16, int8, int8-cpu, or graph=precision "
                            "pairs); default: the plan the bundle was built with.")] = None,
    onnx_device: Annotated[OnnxDevice, typer.Option(
        "--onnx-device", help="Where Triton runs the ONNX models: cpu (KIND_CPU) or gpu (KIND_GPU). Engines always "
                              "run on the GPU.")] = OnnxDevice.cpu,
    bls_target: Annotated[BlsTarget, typer.Option(
        "--bls-target", help="Graph models the diffv2iqa front calls: onnx, tensorrt (the *_trt engines), or auto "
                             "(the engines when the bundle holds one of every graph).")] = BlsTarget.auto,
    local: Annotated[bool, typer.Option(
        "--local/--no-local", help="Also write diffv2iqa_local: the ONNX Runtime scorer inside the Python backend, "
                                   "with a copy of the bundle (loads without the onnxruntime/tensorrt backends).")]
    = True,
    max_queue_delay_ms: Annotated[float, typer.Option(
        "--max-queue-delay-ms", min=0.0, help="Dynamic batching: how long Triton may hold a request to form a "
                                              "larger batch.")] = 0.0,
) -> None:
    """Write a Triton Inference Server model repository of a bundle: the three graphs (onnxruntime_onnx, and
    tensorrt_plan for the engines the bundle holds), the diffv2iqa front (Python backend: the fixed-step loop and the
    fusion over BLS calls) and diffv2iqa_local. Its README.md says what each model needs."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..bundle import load_bundle
    from ..cli import _failed
    from .triton_repo import RepositoryOptions, write_repository

    try:
        options = RepositoryOptions(max_batch=max_batch, instances=instances, precision=precision,
                                    onnx_device=onnx_device.value, local=local, bls_target=bls_target.value,
                                    max_queue_delay_us=round(max_queue_delay_ms * 1000))
        report = write_repository(load_bundle(bundle), out, options)
    except DiffV2IQAError as exc:
        raise _failed(exc) from None
    console = Console(highlight=False, soft_wrap=True, emoji=False)
    table = Table(title=Text(f"Triton model repository {report.root}"))
    for column in ("model", "runs on", "files", "needs"):
        table.add_column(column, overflow="fold")
    for m in report.models:
        table.add_row(*(Text(v) for v in (m.name, m.runs_on, str(len(m.files)), m.needs)))
    console.print(table)
    console.print(f"precision plan {report.plan.label()}, max batch {report.max_batch}; the diffv2iqa front calls "
                  f"{', '.join(report.front_calls)}. See {report.root / 'README.md'}.", markup=False)

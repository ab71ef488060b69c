"""The GPU check: one prepared run that proves (or disproves) the CUDA runtime on a GPU machine, and times it.

`scripts/gpu_check.sh OUT` runs it on a CUDA machine with PyTorch preinstalled and no network. It:
(a) scores real distorted photographs with the `torch-cuda` stream pipeline, on the demo weights and on `paper`
    (random weights, 50 steps, 224x224 crops), with streams on/off and CUDA graphs on/off, against the PyTorch
    reference on the CPU (FP32 must agree to 1e-3; FP16 reports SRCC and max |delta|);
(b) exercises the device layers (cuda-python's CudaDevice and torch's TorchCudaDevice): allocations, async copies
    from page-locked memory, events between two streams, a window copy, graph capture and replay of copies, and
    checks the bytes;
(c) times, on `paper`, the naive baseline (the host pipeline with the torch executor on CUDA, FP32) against the
    stream pipeline (FP32 without streams, with streams, with streams and a CUDA graph; FP16 with both), in crops/s
    at batch 1, 8 and 32, with the stage breakdown from CUDA events and the restoration's achieved TFLOP/s;
(d) writes gpu_check.md and gpu_check.json into OUT, with the command and the machine.
Work is ordered by importance and stops at --budget-s (what did not run is listed as skipped).

`--dry-run` runs every step on the CPU (HostDevice instead of CUDA, the tiny model, few steps): the way this script
is checked before scarce GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ScoringConfig
from ..data.distortions import distort
from ..data.photos import photos
from ..metrics import srcc
from ..model.diffv2iqa import DiffV2IQA
from ..reference.loading import load_model
from ..reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher
from ..reference.torch_executor import TorchExecutor
from ..runtime.crops import WorkUnit
from ..runtime.device import Device, HostDevice
from ..runtime.pipeline import Pipeline, PipelineSpec
from ..runtime.stream_pipeline import StreamPipeline

FP32_TOLERANCE = 1e-3
# Dense FP16 tensor-core peak (TFLOP/s, without sparsity) from NVIDIA's data sheets, by a substring of the GPU name.
FP16_DENSE_PEAK = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}
KINDS = ("gaussian_blur", "white_noise", "jpeg", "contrast")


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, what: str, needs_s: float = 0.0) -> bool:
        if self.left() > needs_s:
            return True
        self.skipped.append(what)
        return False


@dataclass
class Setup:
    dry_run: bool
    make_device: Callable[[], Device]
    gpu_torch_device: str  # where the stream pipeline's model lives
    cpu_threads: int


def _images(count: int, max_side: int) -> list[np.ndarray]:
    base = list(photos(max_side=max_side).values())
    return [distort(base[i % len(base)], KINDS[i % 4], 1 + i % 5, seed=i) for i in range(count)]


def _spec(model: DiffV2IQA, steps: int | None) -> PipelineSpec:
    return PipelineSpec.from_config(model.config, ScoringConfig(crops="center", mode="crops"), steps)


def _stream(setup: Setup, model: DiffV2IQA, spec: PipelineSpec, precision: str, batch: int, streams: bool,
            graph: bool) -> StreamPipeline:
    return StreamPipeline(setup.make_device(), TorchGraphLauncher(model, precision), spec, batch_size=batch,
                          streams=streams, cuda_graph=graph)


# -------------------------------------------------------------------------------------------------- (b) devices


def exercise_device(device: Device) -> dict[str, Any]:
    """Copies through every device operation, checked against NumPy: upload from page-locked memory, a copy on a
    second stream ordered by events both ways, a window copy, download; then the same copies captured as a graph and
    replayed into cleared buffers."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 3, 8, 10)).astype(np.float32)
    s1, s2 = device.stream(), device.stream()
    a, b, c = device.empty(data.shape), device.empty(data.shape), device.empty((3, 4, 5))
    host_in = device.pinned(data.shape)
    np.copyto(host_in, data)
    host_b, host_c = device.pinned(data.shape), device.pinned((3, 4, 5))

    def cross_stream_copy(row: int, top: int, left: int) -> None:
        """a -> b on s2, ordered after s1's work and before s1's next (fork and join events), then a window of b[row]
        into c on s1."""
        fork, join = device.event(), device.event()
        device.record(fork, s1)
        device.wait(s2, fork)
        device.copy(a, b, s2)
        device.record(join, s2)
        device.wait(s1, join)
        device.copy_window(b[row], top, left, c, s1)

    checks: dict[str, bool] = {}
    device.upload(host_in, a, s1)
    cross_stream_copy(2, 3, 4)
    device.download(b, host_b, s1)
    device.download(c, host_c, s1)
    device.synchronize(s1)
    checks["eager: copy across streams"] = bool(np.array_equal(host_b, data))
    checks["eager: window copy"] = bool(np.array_equal(host_c, data[2, :, 3:7, 4:9]))
    zeros = device.pinned(data.shape)
    zeros.fill(0)
    device.begin_capture(s1)
    cross_stream_copy(1, 0, 0)
    graph = device.end_capture(s1)
    device.upload(zeros, b, s1)  # cleared: only a replay can bring the data back
    device.download(b, host_b, s1)
    device.synchronize(s1)
    checks["capture did not run the copies"] = bool(not host_b.any())
    device.replay(graph, s1)
    device.download(b, host_b, s1)
    device.download(c, host_c, s1)
    device.synchronize(s1)
    checks["replay: copy across streams"] = bool(np.array_equal(host_b, data))
    checks["replay: window copy"] = bool(np.array_equal(host_c, data[1, :, 0:4, 0:5]))
    return {"ok": all(checks.values()), "checks": checks}


def device_checks(setup: Setup) -> dict[str, Any]:
    out: dict[str, Any] = {}
    makers: dict[str, Callable[[], Device]] = {"torch-cuda (TorchCudaDevice)": setup.make_device}
    if setup.dry_run:
        makers = {"host (HostDevice, dry run)": HostDevice}

    def cuda_python() -> Device:
        from ..runtime.backends.cuda_device import CudaDevice

        device: Device = CudaDevice()
        return device

    makers["cuda-python (CudaDevice)"] = cuda_python
    for name, make in makers.items():
        try:
            out[name] = exercise_device(make())
        except Exception as exc:  # report and go on: one failing layer must not hide the other results
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=4)}
    return out


# ---------------------------------------------------------------------------------------------- (a) correctness


def correctness(setup: Setup, name: str, model: DiffV2IQA, steps: int | None, images: list[np.ndarray],
                batch: int) -> dict[str, Any]:
    spec = _spec(model, steps)
    cpu_model = copy.deepcopy(model).cpu().eval()
    reference = Pipeline(TorchExecutor(cpu_model, "cpu"), spec, batch)
    t0 = time.perf_counter()
    prepared = [reference.prepare(rgb) for rgb in images]
    want = np.array([r.score for r in reference.score_prepared(prepared)])
    result: dict[str, Any] = {"images": len(images), "steps": spec.steps, "crop": spec.crop_size, "batch": batch,
                              "cpu_reference_s": round(time.perf_counter() - t0, 2), "runs": []}
    gpu_model = copy.deepcopy(model).to(setup.gpu_torch_device).eval()
    for precision, streams, graph in [("fp32", False, False), ("fp32", True, False), ("fp32", False, True),
                                      ("fp32", True, True), ("fp16", True, True)]:
        pipe = _stream(setup, gpu_model, spec, precision, batch, streams, graph)
        got = np.array([r.score for r in pipe.score_prepared(prepared)])
        delta = float(np.abs(got - want).max())
        row = {"precision": precision, "streams": streams, "cuda_graph": graph, "max_abs_delta": delta,
               "srcc": float(srcc(got, want)) if len(got) > 2 else None,
               "replays": getattr(pipe.device, "log", {}).get("replay")}
        if precision == "fp32":
            row["pass"] = delta <= FP32_TOLERANCE
        result["runs"].append(row)
    result["ok"] = all(r.get("pass", True) for r in result["runs"])
    return result


# --------------------------------------------------------------------------------------------------- (c) timing


def _units(images: list[np.ndarray], spec: PipelineSpec, count: int) -> list[list[WorkUnit]]:
    from ..runtime.crops import prepare

    units = [prepare(rgb, spec.crops, spec.mode, spec.crop_size, spec.size_multiple) for rgb in images]
    return [units[i % len(units)] for i in range(count)]


def _timed(run: Callable[[list[list[WorkUnit]]], Any], warm: list[list[WorkUnit]],
           timed: list[list[WorkUnit]], sync: Callable[[], None]) -> float:
    run(warm)
    sync()
    t0 = time.perf_counter()
    run(timed)
    sync()
    return time.perf_counter() - t0


def timing(setup: Setup, model: DiffV2IQA, steps: int | None, images: list[np.ndarray], batches: list[int],
           budget: Budget, step_gflop: float, gpu: str) -> list[dict[str, Any]]:
    spec = _spec(model, steps)
    gpu_model = copy.deepcopy(model).to(setup.gpu_torch_device).eval()
    peak = next((v for k, v in FP16_DENSE_PEAK.items() if k in gpu), None)
    rows: list[dict[str, Any]] = []

    def sync() -> None:
        if torch.cuda.is_available() and not setup.dry_run:
            torch.cuda.synchronize()

    # Most telling first: if the budget runs out at batch 32, the FP32 variants without graphs are what is skipped.
    configs: list[tuple[str, str, bool, bool]] = [
        ("stream fp16, streams + CUDA graph", "fp16", True, True),
        ("stream fp32, streams + CUDA graph", "fp32", True, True),
        ("stream fp32, streams", "fp32", True, False),
        ("stream fp32, no streams, no graph", "fp32", False, False)]
    for batch in batches:
        per_batch_s: float | None = None
        label = "naive eager fp32 (host pipeline, torch executor)"
        if budget.allows(f"{label}, batch {batch}", needs_s=3 * (per_batch_s or 0)):
            executor = TorchExecutor(gpu_model, setup.gpu_torch_device)
            pipe = Pipeline(executor, spec, batch)
            seconds = _timed(pipe.score_prepared, _units(images, spec, batch), _units(images, spec, 2 * batch),
                             sync)
            per_batch_s = seconds / 2
            rows.append({"config": label, "batch": batch, "crops_per_s": 2 * batch / seconds})
        for label, precision, streams, graph in configs:
            # Warm-up: both double-buffer slots run eagerly once, and with a graph are then captured (4 batches).
            warm = 4 if graph else 2
            needed = (warm + 2) * (per_batch_s or 0) * (0.3 if precision == "fp16" else 1.0)
            if not budget.allows(f"{label}, batch {batch}", needs_s=needed):
                continue
            stream = _stream(setup, gpu_model, spec, precision, batch, streams, graph)
            seconds = _timed(stream.score_prepared, _units(images, spec, warm * batch),
                             _units(images, spec, 2 * batch), sync)
            last = stream.timings[-1]
            restore_s = last.restore_ms / 1000 if not graph else None
            row: dict[str, Any] = {"config": label, "batch": batch, "crops_per_s": 2 * batch / seconds,
                                   "stages_ms": {"upload": round(last.upload_ms, 3),
                                                 "restore" + (" + branches (graph)" if graph else ""):
                                                     round(last.restore_ms, 3),
                                                 "branches": round(last.branches_ms, 3),
                                                 "download": round(last.download_ms, 3)}}
            if restore_s:
                tflops = batch * spec.steps * step_gflop / restore_s / 1000
                row["restore_tflops"] = round(tflops, 2)
                row["of_fp16_dense_peak"] = None if peak is None else round(tflops / peak, 4)
            rows.append(row)
    base = {r["batch"]: r["crops_per_s"] for r in rows if r["config"].startswith("naive")}
    for r in rows:
        r["vs_naive"] = round(r["crops_per_s"] / base[r["batch"]], 3) if r["batch"] in base else None
    return rows


# ------------------------------------------------------------------------------------------------------ report


def environment(setup: Setup) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "dry_run": setup.dry_run, "cpu_count": os.cpu_count(),
                           "tf32_conv": torch.backends.cudnn.allow_tf32,
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available() and not setup.dry_run:
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "sm": f"{props.major}.{props.minor}",
                "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    try:
        import cuda.bindings

        env["cuda_bindings"] = getattr(cuda.bindings, "__version__", "?")
    except ImportError:
        env["cuda_bindings"] = None
    return env


def markdown(report: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"Command: `{report['command']}`", "",
             f"Machine: {json.dumps(report['environment'])}", "",
             f"Wall time: {report['seconds']:.0f} s; skipped (time budget): {report['skipped'] or 'nothing'}", "",
             "## (a) torch-cuda stream pipeline vs the PyTorch reference on the CPU", "",
             "| model | precision | streams | CUDA graph | max abs delta | SRCC | FP32 within 1e-3 |",
             "|---|---|---|---|---|---|---|"]
    for name, res in report["correctness"].items():
        if "error" in res:
            lines.append(f"| {name} | error: {res['error']} | | | | | |")
            continue
        for r in res["runs"]:
            lines.append(f"| {name} ({res['images']} images, {res['steps']} steps, crop {res['crop']}) | "
                         f"{r['precision']} | {r['streams']} | {r['cuda_graph']} | {r['max_abs_delta']:.3g} | "
                         f"{'-' if r['srcc'] is None else format(r['srcc'], '.5f')} | "
                         f"{r.get('pass', '-')} |")
    lines += ["", "## (b) device layers", "", "| layer | ok | checks or error |", "|---|---|---|"]
    for name, res in report["devices"].items():
        detail = res.get("error") or ", ".join(f"{k}: {v}" for k, v in res["checks"].items())
        lines.append(f"| {name} | {res['ok']} | {detail} |")
    lines += ["", "## (c) throughput on paper (crops/s)", "",
              "| config | batch | crops/s | vs naive | restore TFLOP/s | of FP16 dense peak | stages (ms, last batch) "
              "|",
              "|---|---|---|---|---|---|---|"]
    for r in report["timing"]:
        lines.append(f"| {r['config']} | {r['batch']} | {r['crops_per_s']:.3g} | {r.get('vs_naive')} | "
                     f"{r.get('restore_tflops', '-')} | {r.get('of_fp16_dense_peak', '-')} | "
                     f"{json.dumps(r.get('stages_ms', {}))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="run every step on the CPU (HostDevice, tiny)")
    parser.add_argument("--budget-s", type=float, default=320.0)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    setup = Setup(dry_run=dry, make_device=HostDevice if dry else TorchCudaDevice,
                  gpu_torch_device="cpu" if dry else "cuda", cpu_threads=os.cpu_count() or 1)
    torch.set_num_threads(setup.cpu_threads)
    budget = Budget(args.budget_s)
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                              "environment": environment(setup), "devices": device_checks(setup),
                              "correctness": {}, "timing": []}
    demo = load_model()
    paper = load_model(preset_name="tiny" if dry else "paper")
    paper_steps = 5 if dry else None  # dry run: the fewest steps the capture steps allow; paper: 50
    demo_images = _images(6 if dry else 16, 96)
    paper_images = _images(3, 96 if dry else 320)
    for name, loaded, steps, imgs, batch in (("demo", demo, None, demo_images, 2),
                                             ("paper" if not dry else "tiny (dry run)", paper, paper_steps,
                                              paper_images, 1)):
        if not budget.allows(f"correctness {name}", needs_s=20):
            continue
        try:
            report["correctness"][name] = correctness(setup, name, loaded.model, steps, imgs, batch)
        except Exception as exc:
            report["correctness"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc(limit=6)}
    try:
        from ..model.summary import summarize

        s = summarize(paper.model.config)
        step_gflop = 2 * s.macs["restorer U-Net, one step"] / 1e9
        batches = [int(b) for b in args.batches.split(",")]
        if dry:
            batches = [b for b in batches if b <= 2] or [1]
        report["timing"] = timing(setup, paper.model, paper_steps, paper_images, batches, budget, step_gflop,
                                  str(report["environment"].get("gpu", "")))
    except Exception as exc:
        report["timing_error"] = f"{type(exc).__name__}: {exc}"
        report["timing_traceback"] = traceback.format_exc(limit=6)
    report["skipped"] = budget.skipped
    report["seconds"] = time.perf_counter() - budget.start
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    ok = all(r.get("ok", False) for r in report["correctness"].values()) and all(
        d["ok"] for name, d in report["devices"].items() if "cuda-python" not in name or not dry)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

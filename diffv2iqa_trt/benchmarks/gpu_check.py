"""The GPU check: one prepared run that proves (or disproves) the CUDA runtime on a GPU machine, and times it.

`scripts/gpu_check.sh OUT` runs it on a CUDA machine with PyTorch preinstalled and no network. Its phases, in order of
importance (each one's failure is recorded and the next one still runs):
- environment: versions, the GPU, the TF32 settings found, which optional packages import;
- devices: both CUDA device layers (torch's TorchCudaDevice, cuda-python's CudaDevice): uploads from page-locked
  memory, a copy on a second stream ordered by events both ways, a window copy, downloads; then the same copies
  captured into a graph (checked NOT to have run at capture: the destinations hold a sentinel the copies would
  overwrite) and replayed;
- setup: the models (demo weights; `paper` with random weights) and distorted photographs;
- correctness-demo / correctness-paper: the stream pipeline against the PyTorch reference on the CPU: FP32 with TF32
  off (must agree to 1e-3) with streams and CUDA graphs on/off, the PyTorch graphs on cuda-python's CudaDevice
  (the TensorRT backend's device layer, end to end with real kernels), and TF32 and FP16 rows (reported);
- overlap: an upload on its own stream against restoration steps on another, with a CUDA-event timeline, and the
  stream pipeline's own stage times;
- bundle: `diffv2iqa-trt build --target onnx` of a tiny bundle (started on the CPU right after the environment
  phase, so it runs while the GPU phases do), then `score --backend torch-cuda` against `score --backend
  onnxruntime` on the same files, through the CLI;
- timing: crops/s of the naive eager loop against the stream pipeline (FP32, TF32, FP16; streams and graphs), each
  row's TFLOP/s against the peak of its own precision.

The report (gpu_check.json and gpu_check.md in OUT; its records are typed in gpu_check_report.py, whose
`GpuCheckReport.from_json` reads the file back) is rewritten atomically after every phase and every row, so a
kill at any point leaves every finished result on disk. The time budget is checked between rows and batches; a
watchdog thread writes the report and stops the process if a single call overruns the budget by --grace-s, and the
shell script's `timeout` sits above both.

`--dry-run` runs every phase on the CPU (host device layers, the tiny model, few steps, one CPU thread): the way
this script is checked before scarce GPU time is spent on it. `--inject-failure PHASE` (or DIFFV2IQA_GPU_CHECK_INJECT)
makes a phase fail at its start (`hang:PHASE` makes it hang), to check that the failure lands in the report.

Exit status: 0 every phase ran and passed; 1 a phase failed or errored; 2 no GPU (without --dry-run); 3 stopped by
the watchdog; 4 what ran passed but the budget left something out.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gpu_check_report import (
    FP32_TOLERANCE,
    Achieved,
    BundlePhase,
    BundleStep,
    CorrectnessPhase,
    CorrectnessRow,
    DevicesPhase,
    GpuCheckReport,
    LayerResult,
    OverlapPhase,
    Peak,
    PhaseEntry,
    SetupPhase,
    StageTimes,
    TimelineEvent,
    TimingPhase,
    TimingRow,
    WatchdogStop,
    markdown,
)

if TYPE_CHECKING:  # imported where used: a machine without NumPy still gets a report saying so
    import numpy as np

KINDS = ("gaussian_blur", "white_noise", "jpeg", "contrast")
# In order of importance, except the bundle check: its build starts on the CPU right after the environment and runs
# while the GPU phases before it do; the bundle phase then only waits for it and scores.
PHASES = ("environment", "devices", "setup", "correctness-demo", "correctness-paper", "overlap", "bundle", "timing")
NEEDS = {"devices": ("environment",), "setup": ("environment",), "correctness-demo": ("setup",),
         "bundle": ("environment",), "correctness-paper": ("setup",), "overlap": ("setup",), "timing": ("setup",)}
INJECT_ENV = "DIFFV2IQA_GPU_CHECK_INJECT"
CLI = "import sys; from diffv2iqa_trt.cli import app; sys.exit(app(prog_name='diffv2iqa-trt'))"
SENTINEL = -7.25  # what the capture check's destinations hold before the capture: the copies would overwrite it

# Peak dense throughput (TFLOP/s, without 2:4 sparsity) from NVIDIA's data sheets, by a substring of the GPU's name
# (the longest matching key wins: "H100 PCIe" before "H100"). fp32: CUDA cores; tf32 and fp16: tensor cores.
PEAKS: dict[str, dict[str, float]] = {
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4},  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0},
}
PEAK_LABELS = {"fp32": "FP32 (CUDA cores)", "tf32": "TF32 dense", "fp16": "FP16 dense"}


def peak_for(gpu: str, precision: str) -> tuple[str, float] | None:
    """(label, TFLOP/s) of the dense peak matching `precision` (fp32 with TF32 off, tf32, fp16) on `gpu`."""
    name = gpu.upper()
    for key in sorted(PEAKS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_LABELS[precision], PEAKS[key][precision]
    return None


class InjectedFailure(RuntimeError):
    pass


class OutOfBudget(Exception):
    """Raised inside a phase when its next piece of work would not fit in what is left of the budget."""


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, what: str, needs_s: float = 0.0) -> bool:
        """Whether `what` (expected to take `needs_s`) fits; if not it is listed as skipped."""
        if self.left() > needs_s:
            return True
        self.skipped.append(what)
        return False

    def need(self, what: str, needs_s: float = 0.0) -> None:
        if not self.allows(what, needs_s):
            raise OutOfBudget(what)


def say(message: str, budget: Budget | None = None) -> None:
    """A progress line, unbuffered (the shell may kill the process at any moment)."""
    stamp = f"[gpu_check {budget.elapsed():6.1f}s] " if budget is not None else "[gpu_check] "
    print(stamp + message, flush=True)


# ------------------------------------------------------------------------------------------------------- report


class Report:
    """The report on disk: `data`, rewritten atomically (temp file + rename) whenever `write` is called."""

    def __init__(self, out: Path, command: str, budget: Budget, dry_run: bool) -> None:
        self.out = out
        self.budget = budget
        self.lock = threading.Lock()
        self.current: str | None = None
        # the budget's list itself: what the budget leaves out is in the next write
        self.data = GpuCheckReport(command=command, dry_run=dry_run, budget_s=budget.seconds, skipped=budget.skipped)

    def phase_entry(self, name: str) -> PhaseEntry:
        return self.data.phase(name)

    def write(self) -> None:
        with self.lock:
            self.data.seconds = round(self.budget.elapsed(), 2)
            self.data.in_phase = self.current
            _atomic_write(self.out / "gpu_check.json", self.data.to_json())
            _atomic_write(self.out / "gpu_check.md", markdown(self.data))

    def failures(self) -> list[str]:
        """Phases that errored or whose checks failed (skips for the budget are not failures)."""
        return self.data.failures()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _error(exc: BaseException) -> tuple[str, str]:
    """(error, traceback) of the exception being handled."""
    return f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8)


class Watchdog:
    """If the process is still running `after_s` after the start (one call overran the budget and its grace), write
    the report saying where it was, dump every thread's stack beside it and exit with status 3."""

    def __init__(self, report: Report, after_s: float) -> None:
        self.report = report
        self.timer = threading.Timer(max(after_s - report.budget.elapsed(), 0.0), self._fire)
        self.timer.daemon = True

    def start(self) -> None:
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()

    def _fire(self) -> None:
        stacks = self.report.out / "gpu_check.stacks.txt"
        try:
            with stacks.open("w") as f:
                faulthandler.dump_traceback(f, all_threads=True)
            data = self.report.data
            data.status = "stopped by the watchdog"
            data.watchdog = WatchdogStop(phase=self.report.current, at_s=round(self.report.budget.elapsed(), 1),
                                         stacks=stacks.name)
            if self.report.current is not None:
                entry = self.report.phase_entry(self.report.current)
                entry.status, entry.error = "error", "stopped by the watchdog: overran the budget and its grace"
            self.report.write()
            say(f"watchdog: still in phase {self.report.current} past the budget; report written, stopping")
        finally:
            kill_children()
            os._exit(3)


# Module -> distribution of what the check uses; found without importing (onnxscript alone takes seconds).
PACKAGES = {"torch": "torch", "cuda.bindings": "cuda-bindings", "onnx": "onnx", "onnxscript": "onnxscript",
            "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "jsonschema": "jsonschema", "PIL": "pillow",
            "safetensors": "safetensors", "typer": "typer", "rich": "rich", "skimage": "scikit-image"}


def packages() -> dict[str, str]:
    """Each package's version, or why it is missing."""
    from importlib import metadata, util

    found: dict[str, str] = {}
    for module, dists in PACKAGES.items():
        try:
            present = util.find_spec(module) is not None
        except (ImportError, ValueError):
            present = False
        if not present:
            found[module] = "missing"
            continue
        found[module] = "?"
        for dist in (dists,) if isinstance(dists, str) else dists:
            try:
                found[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


# ------------------------------------------------------------------------------------------------------ devices


def exercise_device(device: Any) -> LayerResult:
    """Copies through every device operation, checked against NumPy: upload from page-locked memory, a copy on a
    second stream ordered by events both ways, a window copy, download; then the same copies captured as a graph
    (the destinations hold a sentinel before the capture, read back right after it: a capture that ran the copies
    shows) and replayed."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 3, 8, 10)).astype(np.float32)
    s1, s2 = device.stream(), device.stream()
    a, b, c = device.empty(data.shape), device.empty(data.shape), device.empty((3, 4, 5))
    host_in = device.pinned(data.shape)
    np.copyto(host_in, data)
    host_b, host_c = device.pinned(data.shape), device.pinned((3, 4, 5))
    sentinel_b, sentinel_c = device.pinned(data.shape), device.pinned((3, 4, 5))
    sentinel_b.fill(SENTINEL)
    sentinel_c.fill(SENTINEL)
    events = [device.event() for _ in range(4)]  # made before the capture: nothing is allocated inside it

    def cross_stream_copy(row: int, top: int, left: int, fork: Any, join: Any) -> None:
        """a -> b on s2, ordered after s1's work and before s1's next (fork and join events), then a window of b[row]
        into c on s1."""
        device.record(fork, s1)
        device.wait(s2, fork)
        device.copy(a, b, s2)
        device.record(join, s2)
        device.wait(s1, join)
        device.copy_window(b[row], top, left, c, s1)

    def read_back() -> tuple[np.ndarray, np.ndarray]:
        device.download(b, host_b, s1)
        device.download(c, host_c, s1)
        device.synchronize(s1)
        return host_b.copy(), host_c.copy()

    device.upload(host_in, a, s1)
    cross_stream_copy(2, 3, 4, events[0], events[1])
    got_b, got_c = read_back()
    checks = {"eager: copy across streams": bool(np.array_equal(got_b, data)),
              "eager: window copy": bool(np.array_equal(got_c, data[2, :, 3:7, 4:9]))}
    device.upload(sentinel_b, b, s1)
    device.upload(sentinel_c, c, s1)
    device.synchronize(s1)
    device.begin_capture(s1)
    try:
        cross_stream_copy(1, 0, 0, events[2], events[3])
        graph = device.end_capture(s1)
    except BaseException:
        abort = getattr(device, "abort_capture", None)
        if abort is not None:
            abort(s1)
        raise
    got_b, got_c = read_back()  # before anything clears them: the capture must have left the sentinel
    checks |= {"capture did not run the copies": bool((got_b == SENTINEL).all() and (got_c == SENTINEL).all())}
    device.replay(graph, s1)
    got_b, got_c = read_back()
    checks |= {"replay: copy across streams": bool(np.array_equal(got_b, data)),
               "replay: window copy": bool(np.array_equal(got_c, data[1, :, 0:4, 0:5]))}
    return LayerResult(ok=all(checks.values()), checks=checks)


def _close(thing: Any) -> None:
    close = getattr(thing, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:  # a close that fails is worth a line, not the phase
            say(f"warning: closing {type(thing).__name__} failed: {type(exc).__name__}: {exc}")


def dry_device() -> Any:
    """The dry run's stand-in for a CUDA device: the strict simulated device."""
    from ..runtime.sim_device import StrictDevice

    return StrictDevice(0)


# ------------------------------------------------------------------------------------------------------ the check

CHILDREN: list[subprocess.Popen[bytes]] = []  # killed by the watchdog and at the end of the check


class Child:
    """A CLI subprocess whose output goes to files (a pipe nobody reads could fill and block it)."""

    def __init__(self, name: str, args: list[str], folder: Path, env: dict[str, str]) -> None:
        self.name, self.args = name, args
        slug = "".join(c if c.isalnum() else "_" for c in name)
        self.stdout_path, self.stderr_path = folder / f"{slug}.stdout", folder / f"{slug}.stderr"
        self.start = time.perf_counter()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=out, stderr=err, env=env)
        CHILDREN.append(self.proc)
        self.end: float | None = None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.end = self.end or time.perf_counter()
        return code

    def seconds(self) -> float:
        return (self.end or time.perf_counter()) - self.start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(errors="replace"))


def kill_children() -> None:
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.kill()
    CHILDREN.clear()



@dataclass
class Loaded:
    demo: Any
    paper: Any
    demo_images: list[np.ndarray]
    paper_images: list[np.ndarray]


def _images(count: int, max_side: int) -> list[np.ndarray]:
    from ..data.distortions import distort
    from ..data.photos import photos

    base = list(photos(max_side=max_side).values())
    return [distort(base[i % len(base)], KINDS[i % 4], 1 + i % 5, seed=i) for i in range(count)]


class GpuCheck:
    def __init__(self, args: argparse.Namespace, report: Report, budget: Budget, inject: set[str]) -> None:
        self.args = args
        self.dry: bool = args.dry_run
        self.report = report
        self.budget = budget
        self.inject = inject
        self.loaded: Loaded | None = None
        self.gpu = ""
        # The dry run's torch gets one thread: on a shared 2-core machine two threads contending with other
        # processes ran a restoration step 70x slower (2.1 s instead of 0.03 s, measured).
        self.threads = 1 if self.dry else (os.cpu_count() or 1)
        self.torch_threads: int | None = None
        self._work: Path | None = None
        self.build: Child | None = None

    @property
    def work(self) -> Path:
        """A temporary folder for the bundle, its images and the CLI's output: not OUT, whose files come back."""
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="gpu_check."))
        return self._work

    @property
    def bundle_dir(self) -> Path:
        return self.work / "tiny"

    # ------------------------------------------------------------------------------------------------ phases

    def run(self, phases: tuple[str, ...]) -> None:
        try:
            for name in phases:
                self.phase(name, getattr(self, "phase_" + name.replace("-", "_")))
                if name == "environment" and "bundle" in phases and self._ok("environment"):
                    try:
                        self.start_build()  # on the CPU, while the GPU phases run
                    except Exception as exc:
                        say(f"bundle: the build did not start ({type(exc).__name__}: {exc}); the phase retries it")
        finally:
            kill_children()
            if self._work is not None:
                shutil.rmtree(self._work, ignore_errors=True)
            if self.torch_threads is not None:  # the environment phase set torch's threads: put them back
                import torch

                torch.set_num_threads(self.torch_threads)

    def _ok(self, phase: str) -> bool:
        entry = self.report.data.phases.get(phase)
        return entry is not None and entry.status == "ok"

    def phase(self, name: str, fn: Callable[[Any], object]) -> None:
        """Run one phase: `fn` gets the phase's record (of the phase's type in gpu_check_report.PHASE_TYPES, hence
        Any here) and fills it; False from it is a failed check, an exception an error; the next phase runs."""
        entry = self.report.phase_entry(name)
        missing = [n for n in NEEDS.get(name, ()) if not self._ok(n)]
        if missing:
            entry.status, entry.reason = "skipped", f"needs {', '.join(missing)}, which did not succeed"
            self.report.write()
            say(f"{name}: skipped ({entry.reason})", self.budget)
            return
        if self.budget.left() <= 0:
            self.budget.skipped.append(name)
            entry.status, entry.reason = "skipped", "time budget spent"
            self.report.write()
            say(f"{name}: skipped (time budget spent)", self.budget)
            return
        entry.status, entry.started_s = "running", round(self.budget.elapsed(), 2)
        self.report.current = name
        self.report.write()
        say(f"{name}: started", self.budget)
        t0 = time.perf_counter()
        try:
            if name in self.inject:
                raise InjectedFailure(f"injected failure of phase {name} (--inject-failure {name})")
            if f"hang:{name}" in self.inject:
                while True:  # the watchdog ends this
                    time.sleep(0.1)
            ok = fn(entry)
            entry.status = "ok" if ok is not False else "failed"
        except OutOfBudget as exc:
            if str(exc) not in self.budget.skipped:
                self.budget.skipped.append(str(exc))
            entry.status = "ok" if entry.has_rows() else "skipped"
            entry.stopped = f"time budget spent before: {exc}"
        except Exception as exc:  # recorded, and the next phase runs
            entry.status = "error"
            entry.error, entry.traceback = _error(exc)
        entry.seconds = round(time.perf_counter() - t0, 2)
        self.report.current = None
        self.report.write()
        say(f"{name}: {entry.status} in {entry.seconds:.1f} s"
            + (f" ({entry.error})" if entry.error is not None else ""), self.budget)

    def phase_environment(self, entry: PhaseEntry) -> bool:
        env = self.report.data.environment
        env.python, env.platform, env.dry_run = platform.python_version(), platform.platform(), self.dry
        env.cpu_count, env.cpu_threads_used = os.cpu_count(), self.threads
        env.packages = packages()
        self.report.write()
        import torch

        self.torch_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        env.torch, env.cuda = torch.__version__, torch.version.cuda
        env.tf32_found = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                          "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        if self.dry:
            return True
        if not torch.cuda.is_available():
            entry.error = "no CUDA GPU visible to torch: run with --dry-run on a CPU machine"
            return False
        props = torch.cuda.get_device_properties(0)
        self.gpu = props.name
        env.gpu, env.sm = props.name, f"{props.major}.{props.minor}"
        env.gpu_memory_gib = round(props.total_memory / 2**30, 1)
        env.peaks_tflops = {p: peak_for(props.name, p) for p in ("fp32", "tf32", "fp16")}
        return True

    def phase_devices(self, entry: DevicesPhase) -> bool:
        from ..reference.torch_on_cuda_device import HostPointerDevice

        def cuda_python() -> Any:
            from ..runtime.backends.cuda_device import CudaDevice

            return CudaDevice()

        makers: dict[str, Callable[[], Any]] = {"cuda-python (CudaDevice)": cuda_python}
        if self.dry:
            makers = {"dry run: " + type(dry_device()).__name__: dry_device,
                      "dry run: HostPointerDevice (CudaDevice's arrays over host memory)": HostPointerDevice,
                      **makers}
        else:
            from ..reference.torch_cuda import TorchCudaDevice

            makers = {"torch-cuda (TorchCudaDevice)": TorchCudaDevice, **makers}
        layers = entry.layers = {}
        for name, make in makers.items():
            device = None
            try:
                device = make()
                layers[name] = exercise_device(device)
            except Exception as exc:
                error, trace = _error(exc)
                layers[name] = LayerResult(ok=False, error=error, traceback=trace,
                                           expected="no GPU on a dry run" if self.dry and "CudaDevice)" in name
                                           else None)
            finally:
                _close(device)
            self.report.write()
        return all(r.ok for r in layers.values() if r.expected is None)

    def phase_setup(self, entry: SetupPhase) -> bool:
        from ..reference.loading import load_model

        demo = load_model()
        paper = load_model(preset_name="tiny" if self.dry else "paper")
        entry.models = {"demo": demo.label, "paper": paper.label}
        self.report.write()
        # Enough images for three batches of one shape: a slot's third batch replays the graph its second captured.
        self.loaded = Loaded(demo, paper, _images(6 if self.dry else 16, 96), _images(3, 96 if self.dry else 320))
        entry.images = {"demo": len(self.loaded.demo_images), "paper": len(self.loaded.paper_images)}
        return True

    # ------------------------------------------------------------------------------------------- correctness

    def _spec(self, model: Any, steps: int | None) -> Any:
        from ..config import ScoringConfig
        from ..runtime.pipeline import PipelineSpec

        return PipelineSpec.from_config(model.config, ScoringConfig(crops="center", mode="crops"), steps)

    def _gpu_model(self, model: Any) -> Any:
        return copy.deepcopy(model).to("cpu" if self.dry else "cuda").eval()

    def _stream_pipeline(self, model: Any, spec: Any, precision: str, batch: int, streams: bool, graph: bool,
                         layer: str = "torch-cuda") -> Any:
        from ..reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher
        from ..reference.torch_on_cuda_device import HostPointerDevice, cuda_device_pipeline, host_launcher
        from ..runtime.stream_pipeline import StreamPipeline

        if layer == "cuda-python":
            if self.dry:
                return StreamPipeline(HostPointerDevice(), host_launcher(model, precision), spec, batch_size=batch,
                                      streams=streams, cuda_graph=False)
            return cuda_device_pipeline(model, spec, precision=precision, batch_size=batch, streams=streams)
        device = dry_device() if self.dry else TorchCudaDevice()
        return StreamPipeline(device, TorchGraphLauncher(model, precision), spec, batch_size=batch,
                              streams=streams, cuda_graph=graph)

    def _correctness(self, entry: CorrectnessPhase, which: str) -> bool:
        import numpy as np

        from ..metrics import srcc
        from ..reference.torch_executor import TorchExecutor
        from ..runtime.pipeline import Pipeline

        assert self.loaded is not None
        model = (self.loaded.demo if which == "demo" else self.loaded.paper).model
        images = self.loaded.demo_images if which == "demo" else self.loaded.paper_images
        steps = 5 if self.dry else None
        batch = 2 if which == "demo" else 1
        spec = self._spec(model, steps)
        entry.images, entry.steps, entry.crop, entry.batch = len(images), spec.steps, spec.crop_size, batch
        entry.rows = rows_done = []
        reference = Pipeline(TorchExecutor(copy.deepcopy(model).cpu().eval(), "cpu"), spec, batch)
        prepared = [reference.prepare(rgb) for rgb in images]
        want: list[float] = []
        t0 = time.perf_counter()
        for i, units in enumerate(prepared):  # image by image: the budget is checked between them
            self.budget.need(f"{which}: CPU reference, image {i + 1} of {len(prepared)}")
            want.append(reference.score_prepared([units])[0].score)
        entry.cpu_reference_s = round(time.perf_counter() - t0, 2)
        self.report.write()
        gpu_model = self._gpu_model(model)
        # Most telling first: the product's default (streams + graph), the TensorRT backend's device layer, then
        # the variants that isolate streams and graphs; TF32 and FP16 are reported, not gated.
        rows = [("fp32", True, True, "torch-cuda"), ("fp32", True, False, "cuda-python"),
                ("fp32", False, False, "torch-cuda"), ("fp32", True, False, "torch-cuda"),
                ("fp32", False, True, "torch-cuda"), ("tf32", True, True, "torch-cuda"),
                ("fp16", True, True, "torch-cuda")]
        if self.dry and which != "demo":  # FP16 autocast on a CPU is ~30x slower: its wiring runs once (demo)
            rows = [r for r in rows if r[0] != "fp16"]
        last_s = 0.0
        for precision, streams, graph, layer in rows:
            label = f"{which}: {layer} {precision} streams={streams} graph={graph}"
            row = CorrectnessRow(precision=precision, streams=streams, cuda_graph=graph, layer=layer)
            if not self.budget.allows(label, needs_s=last_s):
                row.skipped = "time budget"
                rows_done.append(row)
                continue
            t0 = time.perf_counter()
            pipe = None
            # FP16 autocast on a CPU is some 30x slower than FP32: the dry run checks its wiring on one image.
            count = 1 if self.dry and precision == "fp16" else len(prepared)
            try:
                pipe = self._stream_pipeline(gpu_model, spec, precision, batch, streams, graph, layer)
                got = np.array([r.score for r in pipe.score_prepared(prepared[:count])])
                delta = float(np.abs(got - np.array(want[:count])).max())
                row.images, row.max_abs_delta = count, delta
                row.srcc = float(srcc(got, np.array(want[:count]))) if len(got) > 2 else None
                row.replays = getattr(pipe.device, "log", {}).get("replay")
                if precision == "fp32":
                    row.passed = delta <= FP32_TOLERANCE
                else:
                    row.within_tolerance = delta <= FP32_TOLERANCE
            except Exception as exc:
                row.passed = False
                row.error, row.traceback = _error(exc)
            finally:
                _close(pipe)
            last_s = time.perf_counter() - t0
            row.seconds = round(last_s, 2)
            rows_done.append(row)
            self.report.write()
        return all(r.passed is not False for r in rows_done)

    def phase_correctness_demo(self, entry: CorrectnessPhase) -> bool:
        return self._correctness(entry, "demo")

    def phase_correctness_paper(self, entry: CorrectnessPhase) -> bool:
        return self._correctness(entry, "paper" if not self.dry else "tiny")

    # ------------------------------------------------------------------------------------------------ bundle

    def _cli(self, name: str, args: list[str]) -> Child:
        """Start the CLI in a subprocess (output in files under the work folder, not OUT)."""
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ) | {"PYTHONPATH": root + (os.pathsep + path if path else "")}
        if self.dry:
            env |= {"OMP_NUM_THREADS": "1"}
        say(f"bundle: {name}: diffv2iqa-trt {' '.join(args)}", self.budget)
        return Child(name, args, self.work, env)

    def _finish(self, steps: list[BundleStep], child: Child) -> str:
        """Wait for a CLI subprocess within the budget; its exit, time and error tail go in the report."""
        try:
            code = child.wait(max(self.budget.left(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            steps.append(BundleStep(step=child.name, error="stopped: time budget spent",
                                    seconds=round(child.seconds(), 2)))
            raise OutOfBudget(child.name) from None
        stdout, stderr = child.output()
        steps.append(BundleStep(step=child.name, command="diffv2iqa-trt " + " ".join(child.args), exit=code,
                                seconds=round(child.seconds(), 2), stderr_tail=stderr[-1500:]))
        self.report.write()
        if code != 0:
            raise RuntimeError(f"{child.name} exited {code}: {stderr.strip()[-400:]}")
        return stdout

    def start_build(self) -> None:
        """Start building the tiny bundle at once: it runs on the CPU while the GPU phases run."""
        args = ["build", "--preset", "tiny", "--target", "onnx", "--out", str(self.bundle_dir)]
        if self.dry:
            args += ["--steps", "5"]
        self.build = self._cli("build", args)

    def phase_bundle(self, entry: BundlePhase) -> bool:
        from PIL import Image

        steps = entry.steps = []
        if self.build is None:
            self.start_build()
        assert self.build is not None
        entry.work = str(self.work)
        gpu_backend = "torch" if self.dry else "torch-cuda"  # the dry run has no CUDA: the torch CPU reference
        entry.gpu_backend = gpu_backend
        paths = []
        (self.work / "images").mkdir(exist_ok=True)
        for i, rgb in enumerate(_images(3, 96)):
            path = self.work / "images" / f"image{i}.png"
            Image.fromarray(rgb).save(path)
            paths.append(str(path))
        self._finish(steps, self.build)
        runs = {}
        for backend in (gpu_backend, "onnxruntime"):  # both at once: most of each is start-up
            args = ["score", *paths, "--bundle", str(self.bundle_dir), "--backend", backend, "--format", "json",
                    "--batch-size", "2"]
            if backend == "onnxruntime":
                args += ["--threads", str(self.threads)]
            runs[backend] = self._cli(f"score --backend {backend}", args)
        scores = {backend: _cli_scores(self._finish(steps, child)) for backend, child in runs.items()}
        on_gpu, reference = (scores[b] for b in (gpu_backend, "onnxruntime"))
        names = sorted(reference)
        deltas = [abs(on_gpu[n] - reference[n]) for n in names]
        entry.scores = {n: {b: scores[b][n] for b in scores} for n in names}
        entry.max_abs_delta = max(deltas)
        entry.passed = max(deltas) <= FP32_TOLERANCE
        return entry.passed

    # ----------------------------------------------------------------------------------------------- overlap

    def phase_overlap(self, entry: OverlapPhase) -> bool:
        """An upload on its own stream while restoration steps run on another, timed by events recorded on both
        (elapsed times between events of different streams are valid on CUDA); then the stream pipeline's own
        stage times, for which the uploads share the loop stream."""
        import numpy as np

        from ..reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher

        assert self.loaded is not None
        model = self._gpu_model(self.loaded.paper.model)
        spec = self._spec(self.loaded.paper.model, 5 if self.dry else None)
        d = dry_device() if self.dry else TorchCudaDevice()
        launcher = TorchGraphLauncher(model, "fp32")
        try:
            batch, size = (1, spec.crop_size) if self.dry else (8, spec.crop_size)
            image = (batch, 3, size, size)
            rng = np.random.default_rng(0)
            shapes = (image, image, (batch,), (batch, spec.coef.shape[1]), (1, 3, size, size))  # x, y, gamma, coef, z
            compute, copier = d.stream(), d.stream()
            staging = []  # alive until the synchronize below: the uploads read them asynchronously
            inputs = []
            for shape in shapes:
                staging.append(d.pinned(shape))
                np.copyto(staging[-1], rng.standard_normal(shape).astype(np.float32) * 0.1)
                inputs.append(d.empty(shape))
                d.upload(staging[-1], inputs[-1], compute)
            out = d.empty(image)
            copy_elems = (1 << 18) if self.dry else (1 << 24)  # 1 MiB / 64 MiB of float32
            host_big = d.pinned((copy_elems,))
            host_big.fill(1.0)
            dev_big = d.empty((copy_elems,))
            d.synchronize(compute)

            def steps(k: int) -> None:
                for _ in range(k):
                    d.enqueue(_launch(launcher.restore_step, tuple(inputs), out, compute), compute)

            # copy alone (a), compute alone (b), then together: from t0, the copy (c) and the steps (k), to t1
            a0, a1, b0, b1, t0, c0, c1, k0, k1, t1 = (d.event(timing=True) for _ in range(10))
            steps(2)  # warm-up: kernels chosen, memory cached
            d.upload(host_big, dev_big, copier)
            d.synchronize(compute)
            d.synchronize(copier)
            d.record(a0, copier)
            d.upload(host_big, dev_big, copier)
            d.record(a1, copier)
            d.synchronize(copier)
            copy_ms = d.elapsed_ms(a0, a1)
            d.record(b0, compute)
            steps(1)
            d.record(b1, compute)
            d.synchronize(compute)
            step_ms = max(d.elapsed_ms(b0, b1), 1e-3)
            k = int(min(max(math.ceil(2 * copy_ms / step_ms), 1), 50))  # compute about twice as long as the copy
            self.budget.need("overlap: timed run", needs_s=2 * (k * step_ms + copy_ms) / 1000)
            d.record(b0, compute)
            steps(k)
            d.record(b1, compute)
            d.synchronize(compute)
            compute_ms = d.elapsed_ms(b0, b1)
            # Together: both start after t0; the loop stream waits for the copy before t1.
            d.record(t0, compute)
            d.wait(copier, t0)
            d.record(c0, copier)
            d.upload(host_big, dev_big, copier)
            d.record(c1, copier)
            d.record(k0, compute)
            steps(k)
            d.record(k1, compute)
            d.wait(compute, c1)
            d.record(t1, compute)
            d.synchronize(compute)
            span = d.elapsed_ms(t0, t1)
            overlap_ms = max(copy_ms + compute_ms - span, 0.0)
            entry.timeline = [
                TimelineEvent(stream="copy", what=f"upload {4 * copy_elems / 2**20:.0f} MiB from pinned memory",
                              start_ms=round(d.elapsed_ms(t0, c0), 3), end_ms=round(d.elapsed_ms(t0, c1), 3)),
                TimelineEvent(stream="compute", what=f"{k} restore steps, batch {batch}, {size}x{size}",
                              start_ms=round(d.elapsed_ms(t0, k0), 3), end_ms=round(d.elapsed_ms(t0, k1), 3)),
                TimelineEvent(stream="compute", what="both done", start_ms=round(span, 3), end_ms=round(span, 3))]
            entry.copy_alone_ms, entry.compute_alone_ms = round(copy_ms, 3), round(compute_ms, 3)
            entry.together_ms, entry.overlap_ms = round(span, 3), round(overlap_ms, 3)
            entry.overlap_of_shorter = round(overlap_ms / max(min(copy_ms, compute_ms), 1e-9), 3)
            entry.upload_gib_per_s = round(4 * copy_elems / 2**30 / max(copy_ms / 1000, 1e-9), 2)
            self.report.write()
        finally:
            _close(launcher)
            _close(d)
        self._pipeline_stages(entry, spec)
        return True

    def _pipeline_stages(self, entry: OverlapPhase, spec: Any) -> None:
        assert self.loaded is not None
        model = self._gpu_model(self.loaded.paper.model)
        batch = 1 if self.dry else 8
        units = _units(self.loaded.paper_images, spec, 4 * batch)
        self.budget.need("overlap: pipeline stage times")
        pipe = self._stream_pipeline(model, spec, "fp32", batch, True, False)
        try:
            pipe.score_prepared(units)
            entry.pipeline_stages_ms = [_stage_times(t, graph=False) for t in pipe.timings]
            entry.pipeline_note = ("the stream pipeline uploads x on the loop stream (marks 0-1 of its events), "
                                   "so a batch's upload waits for the previous batch's loop: no copy/compute "
                                   "overlap inside the pipeline today")
        finally:
            _close(pipe)

    # ------------------------------------------------------------------------------------------------ timing

    def phase_timing(self, entry: TimingPhase) -> bool:
        from ..model.summary import summarize
        from ..reference.torch_cuda import tf32
        from ..reference.torch_executor import TorchExecutor
        from ..runtime.pipeline import Pipeline

        assert self.loaded is not None
        paper = self.loaded.paper.model
        steps = 5 if self.dry else None
        spec = self._spec(paper, steps)
        summary = summarize(paper.config, steps=spec.steps)
        step_gflop = 2 * summary.macs["restorer U-Net, one step"] / 1e9
        crop_gflop = 2 * summary.macs["total per crop"] / 1e9
        gpu_model = self._gpu_model(paper)
        batches = [int(b) for b in self.args.batches.split(",")]
        if self.dry:
            batches = [1, 2]
        entry.steps, entry.crop = spec.steps, spec.crop_size
        entry.restore_step_gflop, entry.gflop_per_crop = round(step_gflop, 3), round(crop_gflop, 3)
        rows = entry.rows = []
        configs: list[tuple[str, str, bool, bool, str]] = [
            ("stream fp16, streams + CUDA graph", "fp16", True, True, "torch-cuda"),
            ("stream fp32 (TF32 off), streams + CUDA graph", "fp32", True, True, "torch-cuda"),
            ("stream tf32, streams + CUDA graph", "tf32", True, True, "torch-cuda"),
            ("stream fp32 (TF32 off), streams", "fp32", True, False, "torch-cuda"),
            ("stream fp32 (TF32 off), no streams, no graph", "fp32", False, False, "torch-cuda"),
            ("cuda-python device fp32 (TF32 off), streams", "fp32", True, False, "cuda-python")]
        sync = _sync(self.dry)
        for batch in batches:
            label = f"naive eager fp32 (TF32 off; host pipeline, torch executor), batch {batch}"
            per_batch_s = 0.0
            if self.budget.allows(label):
                naive = Pipeline(TorchExecutor(gpu_model, "cpu" if self.dry else "cuda"), spec, batch)
                try:
                    with tf32(False):
                        seconds, n = _timed(naive.score_prepared, spec, self.loaded.paper_images, batch, 1,
                                            self.budget, sync, most=2 if self.dry else 8)
                    per_batch_s = seconds / max(n, 1)
                    rows.append(TimingRow(config=label, batch=batch, precision="fp32",
                                          crops_per_s=n * batch / seconds))
                except OutOfBudget as exc:
                    rows.append(TimingRow(config=label, batch=batch, skipped=f"time budget ({exc})"))
                self.report.write()
            for label, precision, streams, graph, layer in configs:
                if self.dry and precision == "fp16":  # 30x slower on a CPU; its wiring ran in the correctness rows
                    if entry.not_timed_on_a_dry_run is None:
                        entry.not_timed_on_a_dry_run = []
                    entry.not_timed_on_a_dry_run.append(f"{label}, batch {batch}")
                    continue
                warm = 4 if graph else 2  # both double-buffer slots run eagerly, then (graphs) are captured
                if not self.budget.allows(f"{label}, batch {batch}", needs_s=(warm + 2) * per_batch_s):
                    continue
                pipe = self._stream_pipeline(gpu_model, spec, precision, batch, streams, graph, layer)
                try:
                    seconds, n = _timed(pipe.score_prepared, spec, self.loaded.paper_images, batch, warm,
                                        self.budget, sync, most=2 if self.dry else 8)
                    row = TimingRow(config=label, batch=batch, precision=precision,
                                    crops_per_s=n * batch / seconds if n else None)
                    if pipe.timings:
                        last = pipe.timings[-1]
                        row.stages_ms = _stage_times(last, graph)
                        row.achieved = _tflops(last, graph, batch, spec.steps, step_gflop, crop_gflop, self.gpu,
                                               precision)
                    rows.append(row)
                except OutOfBudget as exc:
                    rows.append(TimingRow(config=label, batch=batch, skipped=f"time budget ({exc})"))
                except Exception as exc:
                    error, trace = _error(exc)
                    rows.append(TimingRow(config=label, batch=batch, precision=precision, error=error,
                                          traceback=trace))
                finally:
                    _close(pipe)
                self.report.write()
        naive_crops_per_s = {r.batch: r.crops_per_s for r in rows if r.config.startswith("naive")}
        for r in rows:
            b, v = naive_crops_per_s.get(r.batch), r.crops_per_s
            r.vs_naive = round(v / b, 3) if b and v else None
        return not any(r.error is not None for r in rows)


def _cli_scores(stdout: str) -> dict[str, float]:
    """Image file name -> score, from what `diffv2iqa-trt score --format json` printed (its results list)."""
    results: list[dict[str, Any]] = json.loads(stdout)["results"]
    return {Path(r["path"]).name: float(r["score"]) for r in results}


def _stage_times(stages: Any, graph: bool) -> StageTimes:
    """The stream pipeline's event-timed stages of one batch (its StageTimings), rounded to the microsecond."""
    return StageTimes(upload=round(stages.upload_ms, 3), restore=round(stages.restore_ms, 3),
                      branches=round(stages.branches_ms, 3), download=round(stages.download_ms, 3), graph=graph)


def _launch(fn: Callable[..., None], inputs: tuple[Any, ...], out: Any, stream: Any) -> Any:
    """A launcher call to enqueue: runtime.device.Launch where it exists (the strict simulated device reads its
    buffers to check their ordering), else a closure."""
    from ..runtime import device

    launch = getattr(device, "Launch", None)
    if launch is not None:
        return launch(fn, inputs, out, stream)
    return lambda: fn(*inputs, out, stream)


def _units(images: list[np.ndarray], spec: Any, count: int) -> list[Any]:
    from ..runtime.crops import prepare

    units = [prepare(rgb, spec.crops, spec.mode, spec.crop_size, spec.size_multiple) for rgb in images]
    return [units[i % len(units)] for i in range(count)]


def _sync(dry: bool) -> Callable[[], None]:
    def sync() -> None:
        if not dry:
            import torch

            torch.cuda.synchronize()

    return sync


def _timed(run: Callable[[list[Any]], Any], spec: Any, images: list[np.ndarray], batch: int, warm: int,
           budget: Budget, sync: Callable[[], None], most: int = 8) -> tuple[float, int]:
    """`warm` warm-up batches, two per call (the budget checked between calls): each call's batches alternate
    between a shape's two buffer slots, so both slots run eagerly in the first call and are captured in the second;
    then as many timed batches as fit (1 to `most`, in one call so that the double buffering overlaps them), every
    one of them a replay where graphs are on: (seconds, timed batches)."""
    per_call = 2 if warm > 1 else 1
    calls = max(warm // per_call, 1)
    t0 = time.perf_counter()
    for _ in range(calls):
        budget.need("warm-up batches")
        run(_units(images, spec, per_call * batch))
        sync()
    per_batch = (time.perf_counter() - t0) / (calls * per_call)
    n = int(min(max(budget.left() / 4 / max(per_batch, 1e-6), 1), most))
    budget.need("timed batches", needs_s=n * per_batch)
    timed = _units(images, spec, n * batch)
    t0 = time.perf_counter()
    run(timed)
    sync()
    return time.perf_counter() - t0, n


def _tflops(last: Any, graph: bool, batch: int, steps: int, step_gflop: float, crop_gflop: float, gpu: str,
            precision: str) -> Achieved | None:
    """Achieved TFLOP/s from the event-timed stages, against the peak of the row's own precision."""
    if graph:  # one replay: loop and branches together
        seconds, flops, what = last.restore_ms / 1000, batch * crop_gflop, "loop + branches"
    else:
        seconds, flops, what = last.restore_ms / 1000, batch * steps * step_gflop, "loop"
    if seconds <= 0:
        return None
    tflops = flops / seconds / 1000
    peak = peak_for(gpu, precision) if gpu else None
    return Achieved(tflops=round(tflops, 3), tflops_of=what,
                    peak=None if peak is None else Peak(kind=peak[0], tflops=peak[1]),
                    of_peak=None if peak is None else round(tflops / peak[1], 4))


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="run every phase on the CPU (host devices, tiny)")
    parser.add_argument("--budget-s", type=float, default=320.0, help="time budget, checked between rows/batches")
    parser.add_argument("--grace-s", type=float, default=30.0,
                        help="the watchdog stops the process this long after the budget")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset, run in this order")
    parser.add_argument("--inject-failure", action="append", default=[], metavar="PHASE",
                        help="make PHASE fail at its start (hang:PHASE: hang there); repeatable; also "
                             f"{INJECT_ENV}=PHASE[,PHASE]")
    args = parser.parse_args(argv)
    unknown = [p for p in args.phases.split(",") if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; use {', '.join(PHASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    command = " ".join(["gpu_check", *(sys.argv[1:] if argv is None else argv)])
    report = Report(args.out, command, budget, args.dry_run)
    inject = set(args.inject_failure) | {p for p in os.environ.get(INJECT_ENV, "").split(",") if p}
    report.data.injected = sorted(inject)
    report.write()
    watchdog = Watchdog(report, args.budget_s + args.grace_s)
    watchdog.start()
    try:
        GpuCheck(args, report, budget, inject).run(tuple(args.phases.split(",")))
    finally:
        watchdog.cancel()
    failures = report.failures()
    environment = report.data.phases.get("environment")
    env_failed = environment is None or environment.status != "ok"
    if failures:
        report.data.status = f"failed: {', '.join(failures)}"
    elif budget.skipped:
        report.data.status = "passed what ran; the time budget left some out (listed)"
    else:
        report.data.status = "passed"
    report.write()
    say(f"report: {args.out / 'gpu_check.md'} ({report.data.status})", budget)
    if env_failed and not args.dry_run:
        return 2
    return 1 if failures else 4 if budget.skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())

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

The report (gpu_check.json and gpu_check.md in OUT) is rewritten atomically after every phase and every row, so a
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

if TYPE_CHECKING:  # imported where used: a machine without NumPy still gets a report saying so
    import numpy as np

FP32_TOLERANCE = 1e-3
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


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (strings instead) and with tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # a NumPy scalar
        return _clean(value.item())
    return value


class Report:
    """The report on disk: rewritten atomically (temp file + rename) whenever `write` is called."""

    def __init__(self, out: Path, command: str, budget: Budget, dry_run: bool) -> None:
        self.out = out
        self.budget = budget
        self.lock = threading.Lock()
        self.current: str | None = None
        self.doc: dict[str, Any] = {"command": command, "dry_run": dry_run, "status": "running",
                                    "budget_s": budget.seconds, "seconds": 0.0, "skipped": budget.skipped,
                                    "environment": {}, "phases": {}}

    def phase_entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.doc["phases"].setdefault(name, {})
        return entry

    def write(self) -> None:
        with self.lock:
            self.doc["seconds"] = round(self.budget.elapsed(), 2)
            self.doc["in_phase"] = self.current
            text = json.dumps(_clean(self.doc), indent=2, default=str) + "\n"
            _atomic_write(self.out / "gpu_check.json", text)
            _atomic_write(self.out / "gpu_check.md", markdown(self.doc))

    def failures(self) -> list[str]:
        """Phases that errored or whose checks failed (skips for the budget are not failures)."""
        bad = []
        for name, entry in self.doc["phases"].items():
            if entry.get("status") in ("error", "failed") or (
                    entry.get("status") == "skipped" and entry.get("reason", "").startswith("needs")):
                bad.append(name)
        return bad


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}


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
            self.report.doc["status"] = "stopped by the watchdog"
            self.report.doc["watchdog"] = {"phase": self.report.current, "at_s": round(self.report.budget.elapsed(), 1),
                                           "stacks": stacks.name}
            if self.report.current is not None:
                entry = self.report.phase_entry(self.report.current)
                entry |= {"status": "error", "error": "stopped by the watchdog: overran the budget and its grace"}
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


def exercise_device(device: Any) -> dict[str, Any]:
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

    checks: dict[str, bool] = {}
    device.upload(host_in, a, s1)
    cross_stream_copy(2, 3, 4, events[0], events[1])
    got_b, got_c = read_back()
    checks["eager: copy across streams"] = bool(np.array_equal(got_b, data))
    checks["eager: window copy"] = bool(np.array_equal(got_c, data[2, :, 3:7, 4:9]))
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
    checks["capture did not run the copies"] = bool((got_b == SENTINEL).all() and (got_c == SENTINEL).all())
    device.replay(graph, s1)
    got_b, got_c = read_back()
    checks["replay: copy across streams"] = bool(np.array_equal(got_b, data))
    checks["replay: window copy"] = bool(np.array_equal(got_c, data[1, :, 0:4, 0:5]))
    return {"ok": all(checks.values()), "checks": checks}


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
                sys.modules["torch"].set_num_threads(self.torch_threads)

    def _ok(self, phase: str) -> bool:
        return bool(self.report.doc["phases"].get(phase, {}).get("status") == "ok")

    def phase(self, name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        entry = self.report.phase_entry(name)
        missing = [n for n in NEEDS.get(name, ()) if not self._ok(n)]
        if missing:
            entry |= {"status": "skipped", "reason": f"needs {', '.join(missing)}, which did not succeed"}
            self.report.write()
            say(f"{name}: skipped ({entry['reason']})", self.budget)
            return
        if self.budget.left() <= 0:
            self.budget.skipped.append(name)
            entry |= {"status": "skipped", "reason": "time budget spent"}
            self.report.write()
            say(f"{name}: skipped (time budget spent)", self.budget)
            return
        entry |= {"status": "running", "started_s": round(self.budget.elapsed(), 2)}
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
            entry["status"] = "ok" if ok is not False else "failed"
        except OutOfBudget as exc:
            if str(exc) not in self.budget.skipped:
                self.budget.skipped.append(str(exc))
            entry |= {"status": "ok" if entry.get("rows") else "skipped",
                      "stopped": f"time budget spent before: {exc}"}
        except Exception as exc:  # recorded, and the next phase runs
            entry |= {"status": "error", **_error(exc)}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.report.current = None
        self.report.write()
        say(f"{name}: {entry['status']} in {entry['seconds']:.1f} s"
            + (f" ({entry['error']})" if "error" in entry else ""), self.budget)

    def phase_environment(self, entry: dict[str, Any]) -> bool:
        env = self.report.doc["environment"]
        env |= {"python": platform.python_version(), "platform": platform.platform(), "dry_run": self.dry,
                "cpu_count": os.cpu_count(), "cpu_threads_used": self.threads}
        env["packages"] = packages()
        self.report.write()
        import torch

        self.torch_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        env |= {"torch": torch.__version__, "cuda": torch.version.cuda,
                "tf32_found": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                               "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}}
        if self.dry:
            return True
        if not torch.cuda.is_available():
            entry["error"] = "no CUDA GPU visible to torch: run with --dry-run on a CPU machine"
            return False
        props = torch.cuda.get_device_properties(0)
        self.gpu = props.name
        env |= {"gpu": props.name, "sm": f"{props.major}.{props.minor}",
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "peaks_tflops": {p: peak_for(props.name, p) for p in ("fp32", "tf32", "fp16")}}
        return True

    def phase_devices(self, entry: dict[str, Any]) -> bool:
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
        layers: dict[str, Any] = entry.setdefault("layers", {})
        for name, make in makers.items():
            device = None
            try:
                device = make()
                layers[name] = exercise_device(device)
            except Exception as exc:
                layers[name] = {"ok": False, **_error(exc)}
                if self.dry and "CudaDevice)" in name:
                    layers[name]["expected"] = "no GPU on a dry run"
            finally:
                _close(device)
            self.report.write()
        return all(r["ok"] for r in layers.values() if "expected" not in r)

    def phase_setup(self, entry: dict[str, Any]) -> bool:
        from ..reference.loading import load_model

        demo = load_model()
        paper = load_model(preset_name="tiny" if self.dry else "paper")
        entry["models"] = {"demo": demo.label, "paper": paper.label}
        self.report.write()
        # Enough images for three batches of one shape: a slot's third batch replays the graph its second captured.
        self.loaded = Loaded(demo, paper, _images(6 if self.dry else 16, 96), _images(3, 96 if self.dry else 320))
        entry["images"] = {"demo": len(self.loaded.demo_images), "paper": len(self.loaded.paper_images)}
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

    def _correctness(self, entry: dict[str, Any], which: str) -> bool:
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
        entry |= {"images": len(images), "steps": spec.steps, "crop": spec.crop_size, "batch": batch, "rows": []}
        reference = Pipeline(TorchExecutor(copy.deepcopy(model).cpu().eval(), "cpu"), spec, batch)
        prepared = [reference.prepare(rgb) for rgb in images]
        want: list[float] = []
        t0 = time.perf_counter()
        for i, units in enumerate(prepared):  # image by image: the budget is checked between them
            self.budget.need(f"{which}: CPU reference, image {i + 1} of {len(prepared)}")
            want.append(reference.score_prepared([units])[0].score)
        entry["cpu_reference_s"] = round(time.perf_counter() - t0, 2)
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
            if not self.budget.allows(label, needs_s=last_s):
                entry["rows"].append({"precision": precision, "streams": streams, "cuda_graph": graph,
                                      "layer": layer, "skipped": "time budget"})
                continue
            t0 = time.perf_counter()
            row: dict[str, Any] = {"precision": precision, "streams": streams, "cuda_graph": graph, "layer": layer}
            pipe = None
            # FP16 autocast on a CPU is some 30x slower than FP32: the dry run checks its wiring on one image.
            count = 1 if self.dry and precision == "fp16" else len(prepared)
            try:
                pipe = self._stream_pipeline(gpu_model, spec, precision, batch, streams, graph, layer)
                got = np.array([r.score for r in pipe.score_prepared(prepared[:count])])
                delta = float(np.abs(got - np.array(want[:count])).max())
                row |= {"images": count, "max_abs_delta": delta,
                        "srcc": float(srcc(got, np.array(want[:count]))) if len(got) > 2 else None,
                        "replays": getattr(pipe.device, "log", {}).get("replay")}
                if precision == "fp32":
                    row["pass"] = delta <= FP32_TOLERANCE
                else:
                    row["within_1e-3"] = delta <= FP32_TOLERANCE
            except Exception as exc:
                row |= {"pass": False, **_error(exc)}
            finally:
                _close(pipe)
            last_s = time.perf_counter() - t0
            row["seconds"] = round(last_s, 2)
            entry["rows"].append(row)
            self.report.write()
        return all(r.get("pass", True) for r in entry["rows"])

    def phase_correctness_demo(self, entry: dict[str, Any]) -> bool:
        return self._correctness(entry, "demo")

    def phase_correctness_paper(self, entry: dict[str, Any]) -> bool:
        return self._correctness(entry, "paper" if not self.dry else "tiny")

    # ------------------------------------------------------------------------------------------------ bundle

    def _cli(self, name: str, args: list[str]) -> Child:
        """Start the CLI in a subprocess (output in files under the work folder, not OUT)."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.dry:
            env["OMP_NUM_THREADS"] = "1"
        say(f"bundle: {name}: diffv2iqa-trt {' '.join(args)}", self.budget)
        return Child(name, args, self.work, env)

    def _finish(self, entry: dict[str, Any], child: Child) -> str:
        """Wait for a CLI subprocess within the budget; its exit, time and error tail go in the report."""
        try:
            code = child.wait(max(self.budget.left(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            entry["steps"].append({"step": child.name, "error": "stopped: time budget spent",
                                   "seconds": round(child.seconds(), 2)})
            raise OutOfBudget(child.name) from None
        stdout, stderr = child.output()
        entry["steps"].append({"step": child.name, "command": "diffv2iqa-trt " + " ".join(child.args), "exit": code,
                               "seconds": round(child.seconds(), 2), "stderr_tail": stderr[-1500:]})
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

    def phase_bundle(self, entry: dict[str, Any]) -> bool:
        from PIL import Image

        entry["steps"] = []
        if self.build is None:
            self.start_build()
        assert self.build is not None
        entry["work"] = str(self.work)
        gpu_backend = "torch" if self.dry else "torch-cuda"  # the dry run has no CUDA: the torch CPU reference
        entry["gpu_backend"] = gpu_backend
        paths = []
        (self.work / "images").mkdir(exist_ok=True)
        for i, rgb in enumerate(_images(3, 96)):
            path = self.work / "images" / f"image{i}.png"
            Image.fromarray(rgb).save(path)
            paths.append(str(path))
        self._finish(entry, self.build)
        runs = {}
        for backend in (gpu_backend, "onnxruntime"):  # both at once: most of each is start-up
            args = ["score", *paths, "--bundle", str(self.bundle_dir), "--backend", backend, "--format", "json",
                    "--batch-size", "2"]
            if backend == "onnxruntime":
                args += ["--threads", str(self.threads)]
            runs[backend] = self._cli(f"score --backend {backend}", args)
        scores: dict[str, dict[str, float]] = {}
        for backend, child in runs.items():
            doc = json.loads(self._finish(entry, child))
            scores[backend] = {Path(r["path"]).name: r["score"] for r in doc["results"]}
        names = sorted(scores["onnxruntime"])
        deltas = [abs(scores[gpu_backend][n] - scores["onnxruntime"][n]) for n in names]
        entry["scores"] = {n: {b: scores[b][n] for b in scores} for n in names}
        entry["max_abs_delta"] = max(deltas)
        entry["pass"] = max(deltas) <= FP32_TOLERANCE
        return bool(entry["pass"])

    # ----------------------------------------------------------------------------------------------- overlap

    def phase_overlap(self, entry: dict[str, Any]) -> bool:
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
            inputs = {"x": image, "y": image, "gamma": (batch,), "coef": (batch, spec.coef.shape[1]),
                      "z": (1, 3, size, size)}
            bufs = {}
            compute, copier = d.stream(), d.stream()
            staging = []  # alive until the synchronize below: the uploads read them asynchronously
            for name, shape in inputs.items():
                staging.append(d.pinned(shape))
                np.copyto(staging[-1], rng.standard_normal(shape).astype(np.float32) * 0.1)
                bufs[name] = d.empty(shape)
                d.upload(staging[-1], bufs[name], compute)
            bufs["out"] = d.empty(image)
            copy_elems = (1 << 18) if self.dry else (1 << 24)  # 1 MiB / 64 MiB of float32
            host_big = d.pinned((copy_elems,))
            host_big.fill(1.0)
            dev_big = d.empty((copy_elems,))
            d.synchronize(compute)

            def steps(k: int) -> None:
                for _ in range(k):
                    d.enqueue(_launch(launcher.restore_step, (bufs["x"], bufs["y"], bufs["gamma"], bufs["coef"],
                                                              bufs["z"]), bufs["out"], compute), compute)

            ev = {n: d.event(timing=True) for n in ("a0", "a1", "b0", "b1", "t0", "c0", "c1", "k0", "k1", "t1")}
            steps(2)  # warm-up: kernels chosen, memory cached
            d.upload(host_big, dev_big, copier)
            d.synchronize(compute)
            d.synchronize(copier)
            d.record(ev["a0"], copier)
            d.upload(host_big, dev_big, copier)
            d.record(ev["a1"], copier)
            d.synchronize(copier)
            copy_ms = d.elapsed_ms(ev["a0"], ev["a1"])
            d.record(ev["b0"], compute)
            steps(1)
            d.record(ev["b1"], compute)
            d.synchronize(compute)
            step_ms = max(d.elapsed_ms(ev["b0"], ev["b1"]), 1e-3)
            k = int(min(max(math.ceil(2 * copy_ms / step_ms), 1), 50))  # compute about twice as long as the copy
            self.budget.need("overlap: timed run", needs_s=2 * (k * step_ms + copy_ms) / 1000)
            d.record(ev["b0"], compute)
            steps(k)
            d.record(ev["b1"], compute)
            d.synchronize(compute)
            compute_ms = d.elapsed_ms(ev["b0"], ev["b1"])
            # Together: both start after t0; the loop stream waits for the copy before t1.
            d.record(ev["t0"], compute)
            d.wait(copier, ev["t0"])
            d.record(ev["c0"], copier)
            d.upload(host_big, dev_big, copier)
            d.record(ev["c1"], copier)
            d.record(ev["k0"], compute)
            steps(k)
            d.record(ev["k1"], compute)
            d.wait(compute, ev["c1"])
            d.record(ev["t1"], compute)
            d.synchronize(compute)
            span = d.elapsed_ms(ev["t0"], ev["t1"])
            overlap_ms = max(copy_ms + compute_ms - span, 0.0)
            entry["timeline"] = [
                {"stream": "copy", "what": f"upload {4 * copy_elems / 2**20:.0f} MiB from pinned memory",
                 "start_ms": round(d.elapsed_ms(ev["t0"], ev["c0"]), 3),
                 "end_ms": round(d.elapsed_ms(ev["t0"], ev["c1"]), 3)},
                {"stream": "compute", "what": f"{k} restore steps, batch {batch}, {size}x{size}",
                 "start_ms": round(d.elapsed_ms(ev["t0"], ev["k0"]), 3),
                 "end_ms": round(d.elapsed_ms(ev["t0"], ev["k1"]), 3)},
                {"stream": "compute", "what": "both done", "start_ms": round(span, 3), "end_ms": round(span, 3)}]
            entry |= {"copy_alone_ms": round(copy_ms, 3), "compute_alone_ms": round(compute_ms, 3),
                      "together_ms": round(span, 3), "overlap_ms": round(overlap_ms, 3),
                      "overlap_of_shorter": round(overlap_ms / max(min(copy_ms, compute_ms), 1e-9), 3),
                      "upload_gib_per_s": round(4 * copy_elems / 2**30 / max(copy_ms / 1000, 1e-9), 2)}
            self.report.write()
        finally:
            _close(launcher)
            _close(d)
        self._pipeline_stages(entry, spec)
        return True

    def _pipeline_stages(self, entry: dict[str, Any], spec: Any) -> None:
        assert self.loaded is not None
        model = self._gpu_model(self.loaded.paper.model)
        batch = 1 if self.dry else 8
        units = _units(self.loaded.paper_images, spec, 4 * batch)
        self.budget.need("overlap: pipeline stage times")
        pipe = self._stream_pipeline(model, spec, "fp32", batch, True, False)
        try:
            pipe.score_prepared(units)
            entry["pipeline_stages_ms"] = [
                {"upload": round(t.upload_ms, 3), "restore": round(t.restore_ms, 3),
                 "branches": round(t.branches_ms, 3), "download": round(t.download_ms, 3)} for t in pipe.timings]
            entry["pipeline_note"] = ("the stream pipeline uploads x on the loop stream (marks 0-1 of its events), "
                                      "so a batch's upload waits for the previous batch's loop: no copy/compute "
                                      "overlap inside the pipeline today")
        finally:
            _close(pipe)

    # ------------------------------------------------------------------------------------------------ timing

    def phase_timing(self, entry: dict[str, Any]) -> bool:
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
        entry |= {"steps": spec.steps, "crop": spec.crop_size, "restore_step_gflop": round(step_gflop, 3),
                  "gflop_per_crop": round(crop_gflop, 3), "rows": []}
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
                    entry["rows"].append({"config": label, "batch": batch, "precision": "fp32",
                                          "crops_per_s": n * batch / seconds})
                except OutOfBudget as exc:
                    entry["rows"].append({"config": label, "batch": batch, "skipped": f"time budget ({exc})"})
                self.report.write()
            for label, precision, streams, graph, layer in configs:
                if self.dry and precision == "fp16":  # 30x slower on a CPU; its wiring ran in the correctness rows
                    entry.setdefault("not_timed_on_a_dry_run", []).append(f"{label}, batch {batch}")
                    continue
                warm = 4 if graph else 2  # both double-buffer slots run eagerly, then (graphs) are captured
                if not self.budget.allows(f"{label}, batch {batch}", needs_s=(warm + 2) * per_batch_s):
                    continue
                pipe = self._stream_pipeline(gpu_model, spec, precision, batch, streams, graph, layer)
                try:
                    seconds, n = _timed(pipe.score_prepared, spec, self.loaded.paper_images, batch, warm,
                                        self.budget, sync, most=2 if self.dry else 8)
                    row: dict[str, Any] = {"config": label, "batch": batch, "precision": precision,
                                           "crops_per_s": n * batch / seconds if n else None}
                    if pipe.timings:
                        last = pipe.timings[-1]
                        row["stages_ms"] = {"upload": round(last.upload_ms, 3),
                                            "restore" + (" + branches (graph)" if graph else ""):
                                                round(last.restore_ms, 3),
                                            "branches": round(last.branches_ms, 3),
                                            "download": round(last.download_ms, 3)}
                        row |= _tflops(last, graph, batch, spec.steps, step_gflop, crop_gflop, self.gpu, precision)
                    entry["rows"].append(row)
                except OutOfBudget as exc:
                    entry["rows"].append({"config": label, "batch": batch, "skipped": f"time budget ({exc})"})
                except Exception as exc:
                    entry["rows"].append({"config": label, "batch": batch, "precision": precision, **_error(exc)})
                finally:
                    _close(pipe)
                self.report.write()
        base = {r["batch"]: r["crops_per_s"] for r in entry["rows"] if r["config"].startswith("naive")}
        for r in entry["rows"]:
            b, v = base.get(r["batch"]), r.get("crops_per_s")
            r["vs_naive"] = round(v / b, 3) if b and v else None
        return not any("error" in r for r in entry["rows"])


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
            precision: str) -> dict[str, Any]:
    """Achieved TFLOP/s from the event-timed stages, against the peak of the row's own precision."""
    if graph:  # one replay: loop and branches together
        seconds, flops, what = last.restore_ms / 1000, batch * crop_gflop, "loop + branches"
    else:
        seconds, flops, what = last.restore_ms / 1000, batch * steps * step_gflop, "loop"
    if seconds <= 0:
        return {}
    tflops = flops / seconds / 1000
    peak = peak_for(gpu, precision) if gpu else None
    return {"tflops": round(tflops, 3), "tflops_of": what,
            "peak": None if peak is None else {"kind": peak[0], "tflops": peak[1]},
            "of_peak": None if peak is None else round(tflops / peak[1], 4)}


# ------------------------------------------------------------------------------------------------------ markdown


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(doc: dict[str, Any]) -> str:
    phases = doc.get("phases", {})
    lines = ["# GPU check", "", f"Command: `{doc['command']}`", "",
             f"Status: **{doc['status']}**; wall time {doc.get('seconds', 0):.0f} s of a {doc['budget_s']:.0f} s "
             f"budget; skipped for the budget: {', '.join(doc['skipped']) or 'nothing'}", "",
             f"Machine: `{json.dumps(_clean({k: v for k, v in doc['environment'].items() if k != 'packages'}))}`",
             "",
             f"Packages: `{json.dumps(doc['environment'].get('packages', {}))}`", "",
             "| phase | status | seconds | note |", "|---|---|---|---|"]
    for name, entry in phases.items():
        note = entry.get("error") or entry.get("reason") or entry.get("stopped") or ""
        lines.append(f"| {name} | {entry.get('status')} | {_fmt(entry.get('seconds'))} | {note} |")
    if "watchdog" in doc:
        lines += ["", f"Watchdog: {json.dumps(doc['watchdog'])}"]
    devices = phases.get("devices", {}).get("layers", {})
    if devices:
        lines += ["", "## Device layers", "", "| layer | ok | checks or error |", "|---|---|---|"]
        for name, res in devices.items():
            detail = res.get("error") or ", ".join(f"{k}: {v}" for k, v in res.get("checks", {}).items())
            lines.append(f"| {name} | {res['ok']}{' (expected)' if 'expected' in res else ''} | {detail} |")
    for which in ("correctness-demo", "correctness-paper"):
        entry = phases.get(which, {})
        if not entry.get("rows"):
            continue
        lines += ["", f"## {which}: stream pipeline vs the PyTorch reference on the CPU ({entry['images']} images, "
                      f"{entry['steps']} steps, crop {entry['crop']}, batch {entry['batch']})", "",
                  "| layer | precision | streams | CUDA graph | max abs delta | SRCC | FP32 within 1e-3 | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in entry["rows"]:
            verdict = r.get("pass", f"({r.get('within_1e-3', '-')}, not gated)")
            if "skipped" in r:
                verdict = f"skipped: {r['skipped']}"
            if "error" in r:
                verdict = f"error: {r['error']}"
            lines.append(f"| {r['layer']} | {r['precision']} | {r['streams']} | {r['cuda_graph']} | "
                         f"{_fmt(r.get('max_abs_delta'))} | {_fmt(r.get('srcc'), '.5f')} | {verdict} | "
                         f"{_fmt(r.get('seconds'))} |")
    bundle = phases.get("bundle", {})
    if bundle.get("steps"):
        lines += ["", f"## Bundle path: score --backend {bundle.get('gpu_backend', 'torch-cuda')} vs onnxruntime", "",
                  f"max abs delta {_fmt(bundle.get('max_abs_delta'))}, within 1e-3: {bundle.get('pass', '-')}", "",
                  "| step | exit | seconds |", "|---|---|---|"]
        for step in bundle["steps"]:
            lines.append(f"| {step['step']} | {step.get('exit', step.get('error'))} | {_fmt(step.get('seconds'))} |")
        if bundle.get("scores"):
            backends = list(next(iter(bundle["scores"].values())))
            lines += ["", "| image | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
            for name, by_backend in bundle["scores"].items():
                lines.append(f"| {name} | " + " | ".join(f"{by_backend[b]:.7f}" for b in backends) + " |")
    overlap = phases.get("overlap", {})
    if overlap.get("timeline"):
        clocks = "host clocks of a simulated device: no overlap is possible" if doc["dry_run"] else "CUDA events"
        lines += ["", f"## Copy/compute overlap ({clocks})", "",
                  f"copy alone {overlap['copy_alone_ms']} ms ({overlap['upload_gib_per_s']} GiB/s), compute alone "
                  f"{overlap['compute_alone_ms']} ms, together {overlap['together_ms']} ms: overlap "
                  f"{overlap['overlap_ms']} ms = {overlap['overlap_of_shorter']} of the shorter", "",
                  "| stream | what | start ms | end ms |", "|---|---|---|---|"]
        for t in overlap["timeline"]:
            lines.append(f"| {t['stream']} | {t['what']} | {t['start_ms']} | {t['end_ms']} |")
        if overlap.get("pipeline_stages_ms"):
            lines += ["", f"Stream pipeline stages per batch (ms): {json.dumps(overlap['pipeline_stages_ms'])}; "
                          f"{overlap.get('pipeline_note', '')}"]
    timing = phases.get("timing", {})
    if timing.get("rows"):
        lines += ["", f"## Throughput ({timing['steps']} steps, crop {timing['crop']}; crops/s)", "",
                  "| config | batch | crops/s | vs naive | TFLOP/s (of) | peak | of peak | stages (ms, last batch) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in timing["rows"]:
            peak = r.get("peak") or {}
            lines.append(f"| {r['config']} | {r['batch']} | {_fmt(r.get('crops_per_s'))} | {_fmt(r.get('vs_naive'))} "
                         f"| {_fmt(r.get('tflops'))} ({r.get('tflops_of', '-')}) | "
                         f"{peak.get('kind', '-')} {peak.get('tflops', '')} | {_fmt(r.get('of_peak'))} | "
                         f"{r.get('error') or json.dumps(r.get('stages_ms', {}))} |")
    return "\n".join(lines) + "\n"


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
    report.doc["injected"] = sorted(inject)
    report.write()
    watchdog = Watchdog(report, args.budget_s + args.grace_s)
    watchdog.start()
    try:
        GpuCheck(args, report, budget, inject).run(tuple(args.phases.split(",")))
    finally:
        watchdog.cancel()
    failures = report.failures()
    env_failed = report.doc["phases"].get("environment", {}).get("status") != "ok"
    if failures:
        report.doc["status"] = f"failed: {', '.join(failures)}"
    elif budget.skipped:
        report.doc["status"] = "passed what ran; the time budget left some out (listed)"
    else:
        report.doc["status"] = "passed"
    report.write()
    say(f"report: {args.out / 'gpu_check.md'} ({report.doc['status']})", budget)
    if env_failed and not args.dry_run:
        return 2
    return 1 if failures else 4 if budget.skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())

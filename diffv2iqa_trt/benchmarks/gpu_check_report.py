"""The GPU check's report (what benchmarks/gpu_check.py writes as gpu_check.json and gpu_check.md), typed.

The harness fills these records as it goes and rewrites the files after every phase and row, so a record holds what
has run so far: a field left None was never filled and is left out of the JSON (a skipped phase is just
{"status", "reason"}). `GpuCheckReport.to_json` is the gpu_check.json layout the untyped harness wrote, key for key
and in the same order; `from_json` reads it back (also a file written before the records were typed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError

FP32_TOLERANCE = 1e-3


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


def _set(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that were filled (None: never filled, left out of the JSON)."""
    return {k: v for k, v in fields.items() if v is not None}


def _float(value: Any) -> float | None:
    """A number read back: JSON null stays None; "nan"/"inf" (how `_clean` writes them) become floats again."""
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------------- environment


@dataclass
class Environment:
    """The machine, filled in three steps: the host, then torch's build and TF32 settings, then the GPU."""

    python: str | None = None
    platform: str | None = None
    dry_run: bool | None = None
    cpu_count: int | None = None
    cpu_threads_used: int | None = None
    packages: dict[str, str] | None = None  # module -> version, "missing" or "?"
    torch: str | None = None
    cuda: str | None = None  # torch.version.cuda: None on a CPU build of torch (written as null once torch is known)
    tf32_found: dict[str, bool] | None = None  # torch setting -> its value when the check started
    gpu: str | None = None
    sm: str | None = None
    gpu_memory_gib: float | None = None
    peaks_tflops: dict[str, tuple[str, float] | None] | None = None  # precision -> (peak kind, TFLOP/s)

    def machine(self) -> dict[str, Any]:
        """Everything but the packages (the Markdown puts them on a line of their own)."""
        d = _set({"python": self.python, "platform": self.platform, "dry_run": self.dry_run,
                  "cpu_count": self.cpu_count, "cpu_threads_used": self.cpu_threads_used})
        if self.torch is not None:
            d |= {"torch": self.torch, "cuda": self.cuda, "tf32_found": self.tf32_found}
        if self.gpu is not None:
            peaks = None if self.peaks_tflops is None else {
                p: None if v is None else [v[0], v[1]] for p, v in self.peaks_tflops.items()}
            d |= _set({"gpu": self.gpu, "sm": self.sm, "gpu_memory_gib": self.gpu_memory_gib,
                       "peaks_tflops": peaks})
        return d

    def to_dict(self) -> dict[str, Any]:
        d = _set({"python": self.python, "platform": self.platform, "dry_run": self.dry_run,
                  "cpu_count": self.cpu_count, "cpu_threads_used": self.cpu_threads_used, "packages": self.packages})
        return d | self.machine()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Environment:
        peaks = d.get("peaks_tflops")
        return cls(python=d.get("python"), platform=d.get("platform"), dry_run=d.get("dry_run"),
                   cpu_count=d.get("cpu_count"), cpu_threads_used=d.get("cpu_threads_used"),
                   packages=d.get("packages"), torch=d.get("torch"), cuda=d.get("cuda"),
                   tf32_found=d.get("tf32_found"), gpu=d.get("gpu"), sm=d.get("sm"),
                   gpu_memory_gib=_float(d.get("gpu_memory_gib")),
                   peaks_tflops=None if peaks is None else {
                       p: None if v is None else (str(v[0]), float(v[1])) for p, v in peaks.items()})


# ------------------------------------------------------------------------------------------------- phase records


@dataclass
class Peak:
    """A data-sheet peak: which one (FP32 on CUDA cores, TF32 or FP16 dense) and its TFLOP/s."""

    kind: str
    tflops: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tflops": self.tflops}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Peak:
        return cls(kind=d["kind"], tflops=float(d["tflops"]))


@dataclass
class LayerResult:
    """One device layer's exercise: each check's outcome, or the error that stopped it."""

    ok: bool
    checks: dict[str, bool] | None = None  # check -> passed
    error: str | None = None
    traceback: str | None = None
    expected: str | None = None  # why the error is expected (a CUDA layer on a dry run): not a failure

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok} | _set({"checks": self.checks, "error": self.error, "traceback": self.traceback,
                                       "expected": self.expected})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerResult:
        return cls(ok=d["ok"], checks=d.get("checks"), error=d.get("error"), traceback=d.get("traceback"),
                   expected=d.get("expected"))


@dataclass
class CorrectnessRow:
    """One configuration of the stream pipeline against the CPU reference. Skipped (the budget), measured
    (images .. replays, written together: srcc and replays may be null), or failed (error)."""

    precision: str
    streams: bool
    cuda_graph: bool
    layer: str
    skipped: str | None = None
    images: int | None = None
    max_abs_delta: float | None = None
    srcc: float | None = None  # null below three images
    replays: int | None = None  # graph replays the device logged (null where it keeps no log)
    passed: bool | None = None  # "pass": FP32 rows are gated on FP32_TOLERANCE (and a failed row has False)
    within_tolerance: bool | None = None  # "within_1e-3": TF32/FP16 rows, reported, not gated
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"precision": self.precision, "streams": self.streams, "cuda_graph": self.cuda_graph,
             "layer": self.layer} | _set({"skipped": self.skipped})
        if self.images is not None:
            d |= {"images": self.images, "max_abs_delta": self.max_abs_delta, "srcc": self.srcc,
                  "replays": self.replays}
        return d | _set({"pass": self.passed, "within_1e-3": self.within_tolerance, "error": self.error,
                         "traceback": self.traceback, "seconds": self.seconds})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CorrectnessRow:
        return cls(precision=d["precision"], streams=d["streams"], cuda_graph=d["cuda_graph"], layer=d["layer"],
                   skipped=d.get("skipped"), images=d.get("images"), max_abs_delta=_float(d.get("max_abs_delta")),
                   srcc=_float(d.get("srcc")), replays=d.get("replays"), passed=d.get("pass"),
                   within_tolerance=d.get("within_1e-3"), error=d.get("error"), traceback=d.get("traceback"),
                   seconds=_float(d.get("seconds")))


@dataclass
class BundleStep:
    """One CLI subprocess of the bundle phase: its command, exit status and error tail, or why it was stopped."""

    step: str
    command: str | None = None
    exit: int | None = None
    error: str | None = None
    seconds: float | None = None
    stderr_tail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step} | _set({"command": self.command, "exit": self.exit, "error": self.error,
                                           "seconds": self.seconds, "stderr_tail": self.stderr_tail})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BundleStep:
        return cls(step=d["step"], command=d.get("command"), exit=d.get("exit"), error=d.get("error"),
                   seconds=_float(d.get("seconds")), stderr_tail=d.get("stderr_tail"))


@dataclass
class TimelineEvent:
    """A span on one stream, in ms from the timeline's first event."""

    stream: str
    what: str
    start_ms: float
    end_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "what": self.what, "start_ms": self.start_ms, "end_ms": self.end_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimelineEvent:
        return cls(stream=d["stream"], what=d["what"], start_ms=float(d["start_ms"]), end_ms=float(d["end_ms"]))


@dataclass
class StageTimes:
    """The stream pipeline's event-timed stages of one batch (ms). With a CUDA graph the restore stage is one replay
    of the loop and the branches together: its key says so."""

    upload: float
    restore: float
    branches: float
    download: float
    graph: bool = False

    RESTORE_WITH_BRANCHES: ClassVar[str] = "restore + branches (graph)"

    def to_dict(self) -> dict[str, Any]:
        return {"upload": self.upload, self.RESTORE_WITH_BRANCHES if self.graph else "restore": self.restore,
                "branches": self.branches, "download": self.download}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageTimes:
        graph = cls.RESTORE_WITH_BRANCHES in d
        return cls(upload=float(d["upload"]), restore=float(d[cls.RESTORE_WITH_BRANCHES if graph else "restore"]),
                   branches=float(d["branches"]), download=float(d["download"]), graph=graph)


@dataclass
class Achieved:
    """TFLOP/s achieved in the event-timed restore stage, against the data-sheet peak of the row's precision."""

    tflops: float
    tflops_of: str  # what the restore stage timed: "loop" or "loop + branches"
    peak: Peak | None  # None: no data sheet for this GPU
    of_peak: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"tflops": self.tflops, "tflops_of": self.tflops_of,
                "peak": None if self.peak is None else self.peak.to_dict(), "of_peak": self.of_peak}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Achieved:
        return cls(tflops=float(d["tflops"]), tflops_of=d["tflops_of"],
                   peak=None if d.get("peak") is None else Peak.from_dict(d["peak"]), of_peak=_float(d.get("of_peak")))


@dataclass
class TimingRow:
    """One throughput measurement: ran (crops/s, stages, TFLOP/s), skipped for the budget, or failed."""

    config: str
    batch: int
    precision: str | None = None
    skipped: str | None = None
    crops_per_s: float | None = None  # null when it ran but timed no batch
    stages_ms: StageTimes | None = None
    achieved: Achieved | None = None
    error: str | None = None
    traceback: str | None = None
    vs_naive: float | None = None  # crops/s over the naive row's of the same batch, filled when the phase ends

    @property
    def ran(self) -> bool:
        return self.skipped is None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = {"config": self.config, "batch": self.batch} | _set({"precision": self.precision,
                                                                 "skipped": self.skipped})
        if self.ran:
            d["crops_per_s"] = self.crops_per_s
        if self.stages_ms is not None:
            d["stages_ms"] = self.stages_ms.to_dict()
        if self.achieved is not None:
            d |= self.achieved.to_dict()
        return d | _set({"error": self.error, "traceback": self.traceback}) | {"vs_naive": self.vs_naive}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimingRow:
        return cls(config=d["config"], batch=d["batch"], precision=d.get("precision"), skipped=d.get("skipped"),
                   crops_per_s=_float(d.get("crops_per_s")),
                   stages_ms=None if d.get("stages_ms") is None else StageTimes.from_dict(d["stages_ms"]),
                   achieved=Achieved.from_dict(d) if "tflops" in d else None, error=d.get("error"),
                   traceback=d.get("traceback"), vs_naive=_float(d.get("vs_naive")))


# ----------------------------------------------------------------------------------------------------- phases


@dataclass
class PhaseEntry:
    """A phase's outcome: status ("running", "ok", "failed", "error", "skipped"), when it started and how long it
    took, and why it stopped early; the subclasses add what each phase measured (between the two in the JSON)."""

    status: str | None = None
    reason: str | None = None  # why it was skipped: a phase it needs failed, or the budget was spent
    started_s: float | None = None
    stopped: str | None = None  # the budget ran out inside it
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None

    def has_rows(self) -> bool:
        """Whether it recorded rows before the budget ran out (then it counts as ok, not skipped)."""
        return False

    def failed(self) -> bool:
        """Errored, failed its checks, or skipped because a phase it needs did (skips for the budget are not)."""
        return self.status in ("error", "failed") or (
            self.status == "skipped" and (self.reason or "").startswith("needs"))

    def measured(self) -> dict[str, Any]:
        return {}

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The subclass's own fields, as keyword arguments."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return (_set({"status": self.status, "reason": self.reason, "started_s": self.started_s}) | self.measured()
                | _set({"stopped": self.stopped, "error": self.error, "traceback": self.traceback,
                        "seconds": self.seconds}))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseEntry:
        return cls(status=d.get("status"), reason=d.get("reason"), started_s=_float(d.get("started_s")),
                   stopped=d.get("stopped"), error=d.get("error"), traceback=d.get("traceback"),
                   seconds=_float(d.get("seconds")), **cls.measured_from(d))


@dataclass
class DevicesPhase(PhaseEntry):
    layers: dict[str, LayerResult] | None = None  # device layer -> its exercise

    def measured(self) -> dict[str, Any]:
        return {} if self.layers is None else {"layers": {n: r.to_dict() for n, r in self.layers.items()}}

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        layers = d.get("layers")
        return {"layers": None if layers is None else {n: LayerResult.from_dict(r) for n, r in layers.items()}}


@dataclass
class SetupPhase(PhaseEntry):
    models: dict[str, str] | None = None  # "demo"/"paper" -> the loaded model's label
    images: dict[str, int] | None = None  # "demo"/"paper" -> how many photographs each one scores

    def measured(self) -> dict[str, Any]:
        return _set({"models": self.models, "images": self.images})

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {"models": d.get("models"), "images": d.get("images")}


@dataclass
class CorrectnessPhase(PhaseEntry):
    images: int | None = None
    steps: int | None = None
    crop: int | None = None
    batch: int | None = None
    rows: list[CorrectnessRow] | None = None
    cpu_reference_s: float | None = None

    def has_rows(self) -> bool:
        return bool(self.rows)

    def measured(self) -> dict[str, Any]:
        return _set({"images": self.images, "steps": self.steps, "crop": self.crop, "batch": self.batch,
                     "rows": None if self.rows is None else [r.to_dict() for r in self.rows],
                     "cpu_reference_s": self.cpu_reference_s})

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        rows = d.get("rows")
        return {"images": d.get("images"), "steps": d.get("steps"), "crop": d.get("crop"), "batch": d.get("batch"),
                "rows": None if rows is None else [CorrectnessRow.from_dict(r) for r in rows],
                "cpu_reference_s": _float(d.get("cpu_reference_s"))}


@dataclass
class BundlePhase(PhaseEntry):
    steps: list[BundleStep] | None = None
    work: str | None = None  # the temporary folder the bundle was built in (removed at the end)
    gpu_backend: str | None = None
    scores: dict[str, dict[str, float]] | None = None  # image file name -> backend -> score
    max_abs_delta: float | None = None
    passed: bool | None = None  # "pass": every score within FP32_TOLERANCE of onnxruntime's

    def measured(self) -> dict[str, Any]:
        return _set({"steps": None if self.steps is None else [s.to_dict() for s in self.steps], "work": self.work,
                     "gpu_backend": self.gpu_backend, "scores": self.scores, "max_abs_delta": self.max_abs_delta,
                     "pass": self.passed})

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        steps = d.get("steps")
        return {"steps": None if steps is None else [BundleStep.from_dict(s) for s in steps], "work": d.get("work"),
                "gpu_backend": d.get("gpu_backend"), "scores": d.get("scores"),
                "max_abs_delta": _float(d.get("max_abs_delta")), "passed": d.get("pass")}


@dataclass
class OverlapPhase(PhaseEntry):
    timeline: list[TimelineEvent] | None = None
    copy_alone_ms: float | None = None
    compute_alone_ms: float | None = None
    together_ms: float | None = None
    overlap_ms: float | None = None
    overlap_of_shorter: float | None = None
    upload_gib_per_s: float | None = None
    pipeline_stages_ms: list[StageTimes] | None = None  # the stream pipeline's stages, batch by batch
    pipeline_note: str | None = None

    def measured(self) -> dict[str, Any]:
        return _set({"timeline": None if self.timeline is None else [t.to_dict() for t in self.timeline],
                     "copy_alone_ms": self.copy_alone_ms, "compute_alone_ms": self.compute_alone_ms,
                     "together_ms": self.together_ms, "overlap_ms": self.overlap_ms,
                     "overlap_of_shorter": self.overlap_of_shorter, "upload_gib_per_s": self.upload_gib_per_s,
                     "pipeline_stages_ms": None if self.pipeline_stages_ms is None else [
                         s.to_dict() for s in self.pipeline_stages_ms],
                     "pipeline_note": self.pipeline_note})

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        timeline, stages = d.get("timeline"), d.get("pipeline_stages_ms")
        return {"timeline": None if timeline is None else [TimelineEvent.from_dict(t) for t in timeline],
                "copy_alone_ms": _float(d.get("copy_alone_ms")), "compute_alone_ms": _float(d.get("compute_alone_ms")),
                "together_ms": _float(d.get("together_ms")), "overlap_ms": _float(d.get("overlap_ms")),
                "overlap_of_shorter": _float(d.get("overlap_of_shorter")),
                "upload_gib_per_s": _float(d.get("upload_gib_per_s")),
                "pipeline_stages_ms": None if stages is None else [StageTimes.from_dict(s) for s in stages],
                "pipeline_note": d.get("pipeline_note")}


@dataclass
class TimingPhase(PhaseEntry):
    steps: int | None = None
    crop: int | None = None
    restore_step_gflop: float | None = None
    gflop_per_crop: float | None = None
    rows: list[TimingRow] | None = None
    not_timed_on_a_dry_run: list[str] | None = None  # the FP16 rows a dry run leaves out (too slow on a CPU)

    def has_rows(self) -> bool:
        return bool(self.rows)

    def measured(self) -> dict[str, Any]:
        return _set({"steps": self.steps, "crop": self.crop, "restore_step_gflop": self.restore_step_gflop,
                     "gflop_per_crop": self.gflop_per_crop,
                     "rows": None if self.rows is None else [r.to_dict() for r in self.rows],
                     "not_timed_on_a_dry_run": self.not_timed_on_a_dry_run})

    @classmethod
    def measured_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        rows = d.get("rows")
        return {"steps": d.get("steps"), "crop": d.get("crop"),
                "restore_step_gflop": _float(d.get("restore_step_gflop")),
                "gflop_per_crop": _float(d.get("gflop_per_crop")),
                "rows": None if rows is None else [TimingRow.from_dict(r) for r in rows],
                "not_timed_on_a_dry_run": d.get("not_timed_on_a_dry_run")}


# Each phase's record (the environment phase writes into the report's Environment, not its entry).
PHASE_TYPES: dict[str, type[PhaseEntry]] = {
    "environment": PhaseEntry, "devices": DevicesPhase, "setup": SetupPhase, "correctness-demo": CorrectnessPhase,
    "correctness-paper": CorrectnessPhase, "overlap": OverlapPhase, "bundle": BundlePhase, "timing": TimingPhase}


# ------------------------------------------------------------------------------------------------------ report


@dataclass
class WatchdogStop:
    """Where the watchdog found the check when it stopped it, and the file with every thread's stack."""

    phase: str | None
    at_s: float
    stacks: str

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "at_s": self.at_s, "stacks": self.stacks}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatchdogStop:
        return cls(phase=d["phase"], at_s=float(d["at_s"]), stacks=d["stacks"])


@dataclass
class GpuCheckReport:
    """gpu_check.json: the command, the overall status, the budget and what it left out, the machine, and each
    phase's record in the order the phases ran."""

    command: str
    dry_run: bool
    budget_s: float
    status: str = "running"
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # what the time budget left out
    environment: Environment = field(default_factory=Environment)
    phases: dict[str, PhaseEntry] = field(default_factory=dict)
    injected: list[str] | None = None  # phases made to fail (or hang) on purpose
    in_phase: str | None = None  # the phase running when the file was written
    watchdog: WatchdogStop | None = None

    def phase(self, name: str) -> PhaseEntry:
        """The phase's record, made (of its phase's type) on first use."""
        if name not in self.phases:
            self.phases[name] = PHASE_TYPES.get(name, PhaseEntry)()
        return self.phases[name]

    def failures(self) -> list[str]:
        """Phases that errored or whose checks failed (skips for the budget are not failures)."""
        return [name for name, entry in self.phases.items() if entry.failed()]

    def to_dict(self) -> dict[str, Any]:
        d = {"command": self.command, "dry_run": self.dry_run, "status": self.status, "budget_s": self.budget_s,
             "seconds": self.seconds, "skipped": list(self.skipped), "environment": self.environment.to_dict(),
             "phases": {name: entry.to_dict() for name, entry in self.phases.items()}}
        d |= _set({"injected": self.injected}) | {"in_phase": self.in_phase}
        return d | _set({"watchdog": None if self.watchdog is None else self.watchdog.to_dict()})

    def to_json(self) -> str:
        return json.dumps(_clean(self.to_dict()), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuCheckReport:
        return cls(command=d["command"], dry_run=d["dry_run"], budget_s=float(d["budget_s"]), status=d["status"],
                   seconds=float(d["seconds"]), skipped=list(d["skipped"]),
                   environment=Environment.from_dict(d["environment"]),
                   phases={name: PHASE_TYPES.get(name, PhaseEntry).from_dict(entry)
                           for name, entry in d["phases"].items()},
                   injected=d.get("injected"), in_phase=d.get("in_phase"),
                   watchdog=None if d.get("watchdog") is None else WatchdogStop.from_dict(d["watchdog"]))

    @classmethod
    def from_json(cls, text: str) -> GpuCheckReport:
        """A report from gpu_check.json (or `to_json`); ConfigError when it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ConfigError(f"not a GPU-check report ({type(exc).__name__}: {exc}); give the gpu_check.json that "
                              "scripts/gpu_check.sh wrote") from None


# ---------------------------------------------------------------------------------------------------- markdown


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _flag(value: bool | None, default: str) -> str:
    return default if value is None else str(value)


def markdown(report: GpuCheckReport) -> str:
    """gpu_check.md: the status, the machine, a line per phase, then each phase's table."""
    env = report.environment
    lines = ["# GPU check", "", f"Command: `{report.command}`", "",
             f"Status: **{report.status}**; wall time {report.seconds:.0f} s of a {report.budget_s:.0f} s "
             f"budget; skipped for the budget: {', '.join(report.skipped) or 'nothing'}", "",
             f"Machine: `{json.dumps(_clean(env.machine()))}`", "",
             f"Packages: `{json.dumps(env.packages or {})}`", "",
             "| phase | status | seconds | note |", "|---|---|---|---|"]
    for name, entry in report.phases.items():
        note = entry.error or entry.reason or entry.stopped or ""
        lines.append(f"| {name} | {entry.status} | {_fmt(entry.seconds)} | {note} |")
    if report.watchdog is not None:
        lines += ["", f"Watchdog: {json.dumps(report.watchdog.to_dict())}"]
    devices = report.phases.get("devices")
    if isinstance(devices, DevicesPhase) and devices.layers:
        lines += ["", "## Device layers", "", "| layer | ok | checks or error |", "|---|---|---|"]
        for name, res in devices.layers.items():
            detail = res.error or ", ".join(f"{k}: {v}" for k, v in (res.checks or {}).items())
            lines.append(f"| {name} | {res.ok}{' (expected)' if res.expected is not None else ''} | {detail} |")
    for which in ("correctness-demo", "correctness-paper"):
        checked = report.phases.get(which)
        if not isinstance(checked, CorrectnessPhase) or not checked.rows:
            continue
        lines += ["", f"## {which}: stream pipeline vs the PyTorch reference on the CPU ({checked.images} images, "
                      f"{checked.steps} steps, crop {checked.crop}, batch {checked.batch})", "",
                  "| layer | precision | streams | CUDA graph | max abs delta | SRCC | FP32 within 1e-3 | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in checked.rows:
            verdict = (f"({_flag(row.within_tolerance, '-')}, not gated)" if row.passed is None else str(row.passed))
            if row.skipped is not None:
                verdict = f"skipped: {row.skipped}"
            if row.error is not None:
                verdict = f"error: {row.error}"
            lines.append(f"| {row.layer} | {row.precision} | {row.streams} | {row.cuda_graph} | "
                         f"{_fmt(row.max_abs_delta)} | {_fmt(row.srcc, '.5f')} | {verdict} | {_fmt(row.seconds)} |")
    bundle = report.phases.get("bundle")
    if isinstance(bundle, BundlePhase) and bundle.steps:
        lines += ["", f"## Bundle path: score --backend {bundle.gpu_backend or 'torch-cuda'} vs onnxruntime", "",
                  f"max abs delta {_fmt(bundle.max_abs_delta)}, within 1e-3: {_flag(bundle.passed, '-')}", "",
                  "| step | exit | seconds |", "|---|---|---|"]
        for step in bundle.steps:
            lines.append(f"| {step.step} | {step.exit if step.exit is not None else step.error} | "
                         f"{_fmt(step.seconds)} |")
        if bundle.scores:
            backends = list(next(iter(bundle.scores.values())))
            lines += ["", "| image | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
            for name, by_backend in bundle.scores.items():
                lines.append(f"| {name} | " + " | ".join(f"{by_backend[b]:.7f}" for b in backends) + " |")
    overlap = report.phases.get("overlap")
    if isinstance(overlap, OverlapPhase) and overlap.timeline:
        clocks = "host clocks of a simulated device: no overlap is possible" if report.dry_run else "CUDA events"
        lines += ["", f"## Copy/compute overlap ({clocks})", "",
                  f"copy alone {overlap.copy_alone_ms} ms ({overlap.upload_gib_per_s} GiB/s), compute alone "
                  f"{overlap.compute_alone_ms} ms, together {overlap.together_ms} ms: overlap "
                  f"{overlap.overlap_ms} ms = {overlap.overlap_of_shorter} of the shorter", "",
                  "| stream | what | start ms | end ms |", "|---|---|---|---|"]
        for t in overlap.timeline:
            lines.append(f"| {t.stream} | {t.what} | {t.start_ms} | {t.end_ms} |")
        if overlap.pipeline_stages_ms:
            stages = [s.to_dict() for s in overlap.pipeline_stages_ms]
            lines += ["", f"Stream pipeline stages per batch (ms): {json.dumps(stages)}; "
                          f"{overlap.pipeline_note or ''}"]
    timing = report.phases.get("timing")
    if isinstance(timing, TimingPhase) and timing.rows:
        lines += ["", f"## Throughput ({timing.steps} steps, crop {timing.crop}; crops/s)", "",
                  "| config | batch | crops/s | vs naive | TFLOP/s (of) | peak | of peak | stages (ms, last batch) |",
                  "|---|---|---|---|---|---|---|---|"]
        for timed in timing.rows:
            got = timed.achieved
            peak = None if got is None else got.peak
            stage_ms = timed.stages_ms.to_dict() if timed.stages_ms is not None else {}
            lines.append(f"| {timed.config} | {timed.batch} | {_fmt(timed.crops_per_s)} | {_fmt(timed.vs_naive)} "
                         f"| {_fmt(None if got is None else got.tflops)} ({'-' if got is None else got.tflops_of}) | "
                         f"{'-' if peak is None else peak.kind} {'' if peak is None else peak.tflops} | "
                         f"{_fmt(None if got is None else got.of_peak)} | {timed.error or json.dumps(stage_ms)} |")
    return "\n".join(lines) + "\n"

"""`auto`: the fastest way to run a bundle on the CPU at hand, among the choices whose accuracy the bundle holds.

The candidates (`candidates`):
- ONNX Runtime FP32, always: the reference, bit-reproducible (its scores do not depend on the thread count);
- OpenVINO f32: the same FP32 graphs (scores within float rounding of the reference, not bit-identical);
- OpenVINO bf16, where the CPU has BF16 instructions and the bundle holds a bf16 record inside its budget
  (precision/bf16.py), running the measured plan (bf16, and the int8-cpu variants on OpenVINO where measured);
- the plan the bundle's build chose (FP16/INT8 variants, int8 in its int8-cpu layout), where its recorded end-to-end
  score deltas keep the budget;
each at a few thread counts (1, half and all of the CPUs this process may use; only the given one with --threads).

A short self-benchmark decides (`time_option`): per candidate, one warm-up and a few timed passes over one synthetic
crop at the bundle's crop size, a pass being `steps` restore_step calls plus one call of each branch that runs; a
candidate whose first pass is already `DROP` times slower than the best so far stops there. Seconds per candidate
are cached in <cache root>/auto/<key>.json, the key being the CPU model, its ISA flags, the bundle's graph files,
the toolkit, ONNX Runtime and OpenVINO versions and the batch: another bundle, CPU or version measures again.

A shared machine's load changes from one candidate's timing to the next (a first run on the paper bundle timed
OpenVINO f32 faster than bf16, which a rerun minutes later did not reproduce). So before deciding, the fresh
contenders (every candidate within `CONTENDERS` of the fastest) and the reference are timed once more, back to back,
and the decision is made on those timings alone (`CONFIRM_ROUNDS`).

The fastest candidate wins, except that ONNX Runtime FP32 (reproducible) is kept unless another is at least
`MARGIN` faster. `Choice.line()` says what was chosen and why in one line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__, cpu_info
from .atomic import atomic_path
from .cache_dirs import cache_root
from .contract import COEF, GAMMA, GRAPH_NAMES, RESTORE_STEP, X, Y, Z, input_shapes
from .errors import ConfigError
from .precision_plan import BF16, INT8_CPU, PrecisionPlan, parse_plan, runnable_plan

if TYPE_CHECKING:
    from .bundle.store import Bundle

AUTO = "auto"
CACHE_FOLDER = "auto"  # under the cache root
MARGIN = 1.05  # another choice must be this much faster than ONNX Runtime FP32 to replace it
DROP = 2.0  # a candidate whose first pass is this much slower than the best so far is not timed further
RUNS = 3  # timed passes per candidate
CONTENDERS = 1.25  # candidates within this factor of the fastest are timed again, back to back, before deciding
CONFIRM_ROUNDS = 1
REFERENCE = ("onnxruntime", "fp32")


@dataclass(frozen=True)
class Option:
    """One way to run the bundle: a backend, a precision plan (its label) and a thread count. `accuracy`: the
    recorded end-to-end score deltas against FP32 (None for the FP32 graphs themselves)."""

    backend: str
    precision: str
    threads: int
    accuracy: Mapping[str, Any] | None = field(default=None, compare=False)
    eligible: bool = field(default=True, compare=False)  # False: timed as the baseline only

    @property
    def key(self) -> str:
        return f"{self.backend} {self.precision} t{self.threads}"

    @property
    def reference(self) -> bool:
        return (self.backend, self.precision) == REFERENCE

    def label(self) -> str:
        return f"{self.backend} {self.precision}, {self.threads} thread{'s' if self.threads != 1 else ''}"


Timer = Callable[[Option, float | None], float]  # (option, drop limit in s) -> seconds per crop


@dataclass(frozen=True)
class Choice:
    """What `choose` picked, from which measurements (seconds per crop, by Option.key), and when."""

    option: Option
    options: tuple[Option, ...]
    seconds: Mapping[str, float]
    measured: str  # the date of the oldest measurement used
    cached: bool  # every figure came from the cache
    skipped: Mapping[str, str]  # choices left out, with the reason
    threads_only: bool = False  # the default path: only the thread count was chosen

    @property
    def baseline(self) -> Option:
        """The fastest ONNX Runtime FP32 option (the reference the speed-up is given against)."""
        refs = [o for o in self.options if o.reference] or [o for o in self.options if o.backend == self.option.backend]
        return min(refs, key=lambda o: self.seconds[o.key])

    @property
    def speedup(self) -> float:
        return self.seconds[self.baseline.key] / self.seconds[self.option.key]

    def line(self) -> str:
        """One line: what runs, how much faster than the reference, when measured, how far from FP32."""
        when = f"measured {self.measured[:10]}{', cached' if self.cached else ''}"
        o, base = self.option, self.baseline
        if self.threads_only:
            others = [x for x in self.options if x.key != o.key]
            vs = (f"{self.seconds[others[0].key] / self.seconds[o.key]:.2f}x its speed at {others[0].threads} "
                  f"thread{'s' if others[0].threads != 1 else ''}" if others else "the only thread count")
            return f"default: {o.label()}: {vs} ({when}); the thread count does not change the scores"
        if o.reference:
            return (f"auto: {o.label()}: fastest of {len(self.seconds)} timed choices ({when}); the reference, scores "
                    f"bit-identical to --precision fp32")
        head = f"auto: {o.label()}: {self.speedup:.2f}x {base.label()} ({when})"
        if o.accuracy is None:
            return f"{head}, the fp32 graphs (within float rounding of onnxruntime fp32, not bit-identical)"
        a = o.accuracy
        return (f"{head}, SRCC {a.get('srcc', float('nan')):.4f} and max |Δ| "
                f"{100 * a.get('max_abs_fraction', float('nan')):.2f} % of the score range vs fp32 "
                f"({a.get('images', '?')} evaluation images)")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.option.key, "line": self.line(), "measured": self.measured, "cached": self.cached,
                "seconds_per_crop": dict(self.seconds), "skipped": dict(self.skipped)}


# ---------------------------------------------------------------------------------------------------- candidates


def thread_options(threads: int | None, cpus: int | None = None) -> tuple[int, ...]:
    """The thread counts tried: the given one, else all CPUs, half of them (from 4) and 1; most first."""
    if threads is not None:
        return (threads,)
    n = cpus or cpu_info.logical_cpus()
    return tuple(sorted({n, max(1, n // 2) if n >= 4 else 1, 1}, reverse=True))


def _within(deltas: Mapping[str, Any] | None, budget: Any) -> bool:
    return deltas is not None and not budget.failures(deltas)


def candidates(bundle: Bundle, *, backend: str | None = None, precision: str | None = None,
               threads: int | None = None, cpus: int | None = None, bf16_problem: str | None | bool = True,
               openvino: bool | None = None) -> tuple[list[Option], dict[str, str]]:
    """The options `choose` times and the choices left out (label -> reason). `backend` / `precision` (None: any)
    narrow the choice; ONNX Runtime FP32 is always timed (ineligible when they exclude it). `bf16_problem`: why
    this CPU cannot run bf16 (None: it can; True: ask OpenVINO); `openvino`: whether OpenVINO is installed (None:
    look)."""
    from .precision.bf16 import bf16_record, bundle_budget

    if openvino is None:
        openvino = importlib.util.find_spec("openvino") is not None
    budget = bundle_budget(bundle)
    skipped: dict[str, str] = {}
    pairs: list[tuple[str, str, Mapping[str, Any] | None]] = []  # backend, plan label, accuracy
    wanted = None if precision is None else parse_plan(precision).label()

    def offer(b: str, plan: str, accuracy: Mapping[str, Any] | None) -> None:
        if (backend is None or backend == b) and (wanted is None or wanted == plan):
            pairs.append((b, plan, accuracy))

    offer("onnxruntime", "fp32", None)
    if openvino:
        offer("openvino", "fp32", None)
    else:
        skipped["openvino"] = "OpenVINO is not installed (pip install 'diffv2iqa-trt[openvino]')"
    record = bf16_record(bundle)
    if not openvino:
        bf16_problem = "OpenVINO is not installed"
    elif bf16_problem is True:
        bf16_problem = _bf16_problem_here()
    if bf16_problem:
        skipped["openvino bf16"] = str(bf16_problem)
    elif wanted is not None and wanted != "fp32" and all(parse_plan(wanted)[g] in (BF16, INT8_CPU, "fp32")
                                                         for g in GRAPH_NAMES):
        offer("openvino", wanted, None if record is None else record.plan_scores)  # asked for by name
    elif record is None:
        skipped["openvino bf16"] = ("not measured on this bundle (diffv2iqa-trt build --precision bf16 --from-bundle "
                                    "B --eval-images DIR)")
    elif not record.within_budget:
        skipped["openvino bf16"] = f"over the budget: {'; '.join(record.over_budget) or 'no graph kept it'}"
    else:
        offer("openvino", record.plan_label, record.plan_scores)
    chosen = bundle.manifest.precision
    if chosen is not None and set(chosen.plan.values()) != {"fp32"}:
        plan = runnable_plan(PrecisionPlan(dict(chosen.plan)), {g: bundle.precisions(g) for g in GRAPH_NAMES},
                             cpu=True, source=str(bundle.root)).label()
        report = chosen.report
        deltas = report.get("cpu_plan_scores") if report.get("cpu_variants") else report.get("plan_scores")
        if _within(deltas, budget):
            offer("onnxruntime", plan, deltas)
        else:
            skipped[f"onnxruntime {plan}"] = ("its end-to-end accuracy is not recorded (build it with --eval-images)"
                                              if deltas is None else "over the budget: "
                                              + "; ".join(budget.failures(deltas)))
    if wanted is not None and not pairs:  # an explicit plan: only its threads are chosen
        hinted = any(parse_plan(wanted)[g] == BF16 for g in GRAPH_NAMES)
        offer(backend or ("openvino" if hinted else "onnxruntime"), wanted, None)
    if not pairs:
        raise ConfigError(f"auto: no choice runs --backend {backend} with --precision {precision or 'auto'} on this "
                          f"machine ({'; '.join(f'{k}: {v}' for k, v in skipped.items()) or 'nothing offered'})")
    counts = thread_options(threads, cpus)
    options = [Option(b, p, t, a) for b, p, a in pairs for t in counts]
    if not any(o.reference for o in options):
        options = [Option(*REFERENCE, t, eligible=False) for t in counts] + options
    return options, skipped


def _bf16_problem_here() -> str | None:
    from .runtime.backends.openvino_backend import bf16_problem_here

    return bf16_problem_here()


# ------------------------------------------------------------------------------------------------ self-benchmark

PASS_PIXELS = 8 * 64 * 64  # crop pixels per timed pass, at most: a full batch of small crops, one large crop


def bench_batch(crop_size: int, batch_size: int = 8) -> int:
    """The batch the self-benchmark times: the scorer's batch where its crops are small (threading overheads
    differ with the batch: on the tiny bundle OpenVINO bf16 gained from a second thread at batch 8, not at 1), one
    crop where they are large (a paper pass at batch 8 would take a minute)."""
    return max(1, min(batch_size, PASS_PIXELS // (crop_size * crop_size)))



def synthetic_feeds(bundle: Bundle, batch: int = 1) -> dict[str, list[np.ndarray]]:
    """One feed of each graph at the bundle's crop size: a smooth image, a noisy sample at the middle step."""
    p = bundle.manifest.pipeline
    s = p.crop_size
    ramp = np.linspace(-1.0, 1.0, s, dtype=np.float32)
    x = np.stack([ramp[None, :] * ramp[:, None], np.broadcast_to(ramp[None, :], (s, s)),
                  np.broadcast_to(ramp[:, None], (s, s))])[None].repeat(batch, axis=0)
    rng = np.random.default_rng(0)
    mid = p.steps // 2
    y = (np.sqrt(p.gamma[mid]) * x + np.sqrt(1 - p.gamma[mid]) * rng.standard_normal(x.shape)).astype(np.float32)
    shapes = input_shapes(RESTORE_STEP, s, batch)
    feeds = {RESTORE_STEP: {X: x, Y: y, GAMMA: np.full(shapes[GAMMA], p.gamma[mid], np.float32),
                            COEF: np.broadcast_to(np.asarray(p.coef[mid], np.float32), shapes[COEF]).copy(),
                            Z: rng.standard_normal(shapes[Z]).astype(np.float32)}}
    branch = [x, x.copy(), y, y.copy()]
    return {RESTORE_STEP: [np.ascontiguousarray(feeds[RESTORE_STEP][n]) for n in input_shapes(RESTORE_STEP, s, batch)],
            "vcg": [np.ascontiguousarray(a) for a in branch], "vda": [np.ascontiguousarray(a) for a in branch]}


def pass_weights(bundle: Bundle) -> dict[str, int]:
    """Calls of each graph per crop: every step's restore_step, each branch whose fusion weight is not 0."""
    f = bundle.manifest.pipeline.fusion
    return {RESTORE_STEP: bundle.manifest.pipeline.steps, "vcg": int(f.vcg_weight != 0), "vda": int(f.vda_weight != 0)}


def time_option(bundle: Bundle, option: Option, limit: float | None, *, runs: int = RUNS, batch: int = 1,
                pause: float = 0.05) -> float:
    """Seconds per crop of `option` (median of `runs` passes after a warm-up that also compiles); one pass only
    when it is already slower than `limit`."""
    from .runtime.backends import BackendOptions, create_executor

    executor = create_executor(option.backend, bundle, BackendOptions(precision=option.precision,
                                                                      threads=option.threads))
    feeds = synthetic_feeds(bundle, batch)
    weights = {g: w for g, w in pass_weights(bundle).items() if w}
    calls = {g: (getattr(executor, g), [executor.upload(a) for a in feeds[g]]) for g in weights}

    def one_pass() -> float:
        total = 0.0
        for g, (call, args) in calls.items():
            t = time.perf_counter()
            executor.download(call(*args))
            total += weights[g] * (time.perf_counter() - t)
        return total / batch

    one_pass()  # warm-up: OpenVINO compiles for the shape, ONNX Runtime allocates
    passes: list[float] = []
    for _ in range(runs):
        time.sleep(pause)  # the previous engine's worker threads go idle first
        passes.append(one_pass())
        if limit is not None and passes[0] > limit:
            break
    return statistics.median(passes)


# ---------------------------------------------------------------------------------------------------------- cache


def versions() -> dict[str, str]:
    out = {"toolkit": __version__}
    for name in ("onnxruntime", "openvino"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            out[name] = "none"
    return out


def graphs_key(bundle: Bundle) -> str:
    """What the timings depend on in a bundle: its graph files (by the sha256 the manifest lists) and crop size. Not
    the whole manifest: a rebuild of the same graphs, or a manifest edited elsewhere, times the same."""
    graphs = sorted((name, entry.sha256) for name, entry in bundle.manifest.files.items()
                    if name.endswith((".onnx", ".plan", ".data")))
    doc = {"graphs": graphs, "crop_size": bundle.manifest.pipeline.crop_size}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(bundle: Bundle, batch: int, cpu: Mapping[str, Any] | None = None,
              versions_: Mapping[str, str] | None = None) -> str:
    cpu = cpu if cpu is not None else cpu_info.identity()
    doc = {"cpu": cpu.get("model"), "isa_flags": sorted(cpu.get("isa_flags") or ()),
           "logical_cpus": cpu.get("logical_cpus"), "graphs": graphs_key(bundle),
           "versions": dict(versions_ if versions_ is not None else versions()), "batch": batch}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    seconds = doc.get("seconds") if isinstance(doc, dict) else None
    return {k: v for k, v in seconds.items() if isinstance(v, dict) and isinstance(v.get("s"), float | int)
            and v["s"] > 0 and isinstance(v.get("measured"), str)} if isinstance(seconds, dict) else {}


def _write_cache(path: Path, key_doc: Mapping[str, Any], seconds: Mapping[str, Any]) -> None:
    try:
        merged = {**_read_cache(path), **seconds}  # another process may have added figures meanwhile
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**key_doc, "seconds": merged}, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs a measurement next time


# ---------------------------------------------------------------------------------------------------------- choose


def _confirm(eligible: Sequence[Option], seconds: dict[str, float], fresh: dict[str, Any], timer: Timer,
             rounds: int, clock: Callable[[], datetime]) -> None:
    """Time the contenders again, back to back with the best reference, and keep those timings (median over the
    `rounds`): the decision then compares figures taken under the same load. Only freshly timed options take part
    (cached figures stand for themselves); `seconds` and `fresh` are updated in place."""
    if not eligible:
        return
    best = min(seconds[o.key] for o in eligible)
    refs = [o for o in eligible if o.reference]
    contenders = [o for o in eligible if seconds[o.key] <= CONTENDERS * best and not o.reference]
    if refs:
        contenders.insert(0, min(refs, key=lambda o: seconds[o.key]))
    contenders = [o for o in contenders if o.key in fresh]
    if len(contenders) < 2:
        return
    again: dict[str, list[float]] = {o.key: [] for o in contenders}
    for _ in range(rounds):
        for o in contenders:
            again[o.key].append(float(timer(o, None)))
    stamp = clock().isoformat(timespec="seconds")
    for key, values in again.items():
        seconds[key] = statistics.median(values)
        fresh[key] = {"s": seconds[key], "measured": stamp, "first": fresh[key]["s"]}


def choose(bundle: Bundle, *, backend: str | None = None, precision: str | None = None, threads: int | None = None,
           timer: Timer | None = None, cache_dir: Path | None = None, use_cache: bool = True,
           batch: int | None = None,
           cpus: int | None = None, bf16_problem: str | None | bool = True, openvino: bool | None = None,
           cpu: Mapping[str, Any] | None = None, threads_only: bool = False,
           now: Callable[[], datetime] | None = None, confirm: int = CONFIRM_ROUNDS) -> Choice:
    """The fastest option (see the module docstring). `timer`: seconds per crop of an option (default:
    `time_option`, a real measurement); `batch`: of the timed passes (default: bench_batch); `cache_dir`: default
    <cache root>/auto; `threads_only`: the default path, which keeps the backend and plan (`backend`, `precision`)
    and picks only the thread count."""
    if threads_only:
        plan = precision if precision is not None else runnable_plan(
            bundle.run_plan(None), {g: bundle.precisions(g) for g in GRAPH_NAMES}, cpu=True).label()
        options = [Option(backend or "onnxruntime", plan, t) for t in thread_options(threads, cpus)]
        skipped: dict[str, str] = {}
    else:
        options, skipped = candidates(bundle, backend=backend, precision=precision, threads=threads, cpus=cpus,
                                      bf16_problem=bf16_problem, openvino=openvino)
    cpu = cpu if cpu is not None else cpu_info.identity()
    batch = batch if batch is not None else bench_batch(bundle.manifest.pipeline.crop_size)
    timer = timer or (lambda o, limit: time_option(bundle, o, limit, batch=batch))
    clock = now or (lambda: datetime.now(timezone.utc))
    folder = cache_dir if cache_dir is not None else cache_root() / CACHE_FOLDER
    vers = versions()
    path = folder / f"{cache_key(bundle, batch, cpu, vers)}.json"
    cached = _read_cache(path) if use_cache else {}
    seconds: dict[str, float] = {}
    dates: list[str] = []
    fresh: dict[str, Any] = {}
    # The reference first (never dropped), then the others most threads first.
    for o in sorted(options, key=lambda o: not o.reference):
        hit = cached.get(o.key)
        if hit is not None:
            seconds[o.key] = float(hit["s"])
            dates.append(hit["measured"])
            continue
        best = min((seconds[k] for k in seconds), default=None)
        s = float(timer(o, None if best is None or o.reference else DROP * best))
        if not s > 0:
            raise ConfigError(f"auto: timing {o.label()} gave {s} s")
        stamp = clock().isoformat(timespec="seconds")
        seconds[o.key] = s
        dates.append(stamp)
        fresh[o.key] = {"s": s, "measured": stamp}
    eligible = [o for o in options if o.eligible]
    if fresh and confirm > 0:
        _confirm(eligible, seconds, fresh, timer, confirm, clock)
    if fresh and use_cache:
        _write_cache(path, {"cpu": dict(cpu), "graphs": graphs_key(bundle), "versions": vers, "batch": batch}, fresh)
    fastest = min(eligible, key=lambda o: seconds[o.key])
    refs = [o for o in eligible if o.reference]
    if refs and not fastest.reference:
        ref = min(refs, key=lambda o: seconds[o.key])
        if seconds[fastest.key] * MARGIN > seconds[ref.key]:
            fastest = ref
    return Choice(fastest, tuple(options), seconds, min(dates), not fresh, skipped, threads_only)


def describe_candidates(options: Sequence[Option], seconds: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each timed option with its seconds per crop (for reports)."""
    return [{"option": o.label(), "backend": o.backend, "precision": o.precision, "threads": o.threads,
             "eligible": o.eligible, "seconds_per_crop": seconds.get(o.key)} for o in options]

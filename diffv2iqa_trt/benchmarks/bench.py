"""Throughput and latency of a bundle's pipeline on several backends, trtexec-style.

Scenarios:
- single-stream: one image at a time, latency per image (with decoding from the file, or on pre-decoded pixels);
- offline: many images at once, throughput in images/s and crops/s for each batch size.
Each measurement runs warm-up iterations, then at least `min_iters` iterations and at least `min_seconds`.
Backends alternate within every scenario so that drift of a shared machine hits them alike. A stage breakdown comes
from timing the executor calls (upload = host-to-device, download = device-to-host), or for the GPU stream backends
(torch-cuda, tensorrt) from the pipeline's CUDA events; the roofline puts each stage's MACs against the backend's
measured GEMM peak (CPU backends).

Every backend is opened through the public API (`api.Scorer.from_options`, as `score` opens it) and the scorer's own
pipeline is timed; the host backends' executor is wrapped in place by a timer for the stage breakdown. The result is a
BenchReport (typed; `to_json` is the bench_<model>.json layout, `from_json` reads it back).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Scorer
from ..bundle import Bundle
from ..errors import ConfigError
from ..runtime.backends import STREAM_BACKENDS
from ..runtime.images import load_image
from ..runtime.pipeline import Pipeline, PipelineSpec
from ..runtime.stream_pipeline import StreamPipeline
from ..scorers import ScoreOptions
from . import roofline


class TimedExecutor:
    """Adds up wall time per call kind of an executor (synchronous backends: CPU, or GPU calls that block)."""

    KINDS = {"upload": "host-to-device", "download": "device-to-host", "restore_step": "restoration steps",
             "vcg": "VCG", "vda": "VDA"}

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds: dict[str, float] = defaultdict(float)

    def __getattr__(self, attr: str) -> Any:
        fn = getattr(self.inner, attr)
        kind = self.KINDS.get(attr)
        if kind is None:
            return fn

        def timed(*args: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args)
            self.seconds[kind] += time.perf_counter() - t0
            return out

        return timed


class StreamStages:
    """The stage breakdown of a stream pipeline: device time per stage from its CUDA events (wall clocks do not see
    asynchronous work), summed over the batches since the last `clear`."""

    KINDS = {"upload_ms": "host-to-device", "restore_ms": "restoration steps", "branches_ms": "VCG + VDA",
             "download_ms": "device-to-host"}

    def __init__(self, pipe: StreamPipeline) -> None:
        self.pipe = pipe
        self.name = pipe.launcher.name
        self._seen = 0

    @property
    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for t in self.pipe.timings[self._seen:]:
            for attr, kind in self.KINDS.items():
                out[kind] += getattr(t, attr) / 1000
        return out

    def clear(self) -> None:
        self._seen = len(self.pipe.timings)


@dataclass(frozen=True)
class BenchSettings:
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    warmup: int = 1
    min_iters: int = 5
    min_seconds: float = 2.0
    threads: int | None = None
    offline_images: int = 8  # images per offline iteration (at least the batch size)

    def to_dict(self) -> dict[str, Any]:
        return {"backends": list(self.backends), "batch_sizes": list(self.batch_sizes), "warmup": self.warmup,
                "min_iters": self.min_iters, "min_seconds": self.min_seconds, "threads": self.threads,
                "offline_images": self.offline_images}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchSettings:
        return cls(backends=tuple(d["backends"]), batch_sizes=tuple(d["batch_sizes"]), warmup=d["warmup"],
                   min_iters=d["min_iters"], min_seconds=d["min_seconds"], threads=d["threads"],
                   offline_images=d["offline_images"])


# --- the report (what bench_<model>.json holds, typed) ---------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Seconds per image over the timed iterations of one measurement."""

    iterations: int
    min: float
    median: float
    mean: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, times: Sequence[float]) -> LatencyStats:
        t = np.asarray(times)
        return cls(int(len(t)), float(t.min()), float(np.median(t)), float(t.mean()), float(np.percentile(t, 90)),
                   float(np.percentile(t, 95)), float(np.percentile(t, 99)), float(t.max()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SingleStream:
    """One image at a time: latency on decoded pixels and from the file, and the mean seconds of each stage."""

    no_decode: LatencyStats
    with_decode: LatencyStats
    latencies_no_decode: tuple[float, ...]
    stage_mean_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"no_decode": self.no_decode.to_dict(), "with_decode": self.with_decode.to_dict(),
                "latencies_no_decode": list(self.latencies_no_decode), "stage_mean_s": dict(self.stage_mean_s)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SingleStream:
        return cls(LatencyStats.from_dict(d["no_decode"]), LatencyStats.from_dict(d["with_decode"]),
                   tuple(d["latencies_no_decode"]), dict(d["stage_mean_s"]))


@dataclass(frozen=True)
class OfflineRun:
    """Throughput of scoring `images` images with `batch` crops per graph call."""

    batch: int
    images: int
    median_s: float
    images_per_s: float
    crops_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OfflineRun:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


SPEEDUP_PREFIX = "speedup_vs_"  # the JSON key of a backend's speed-up names the baseline: speedup_vs_<baseline>


@dataclass(frozen=True)
class BackendBench:
    """One backend's measurements; `speedup` is the baseline's single-stream median over this one's."""

    executor: str  # the executor's name (onnxruntime-cpu, torch, ...)
    single_stream: SingleStream
    offline: tuple[OfflineRun, ...]
    baseline: str
    speedup: float

    @property
    def best_images_per_s(self) -> float:
        return max(o.images_per_s for o in self.offline)

    def to_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "single_stream": self.single_stream.to_dict(),
                "offline": [o.to_dict() for o in self.offline], SPEEDUP_PREFIX + self.baseline: self.speedup}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendBench:
        (key,) = [k for k in d if k.startswith(SPEEDUP_PREFIX)]
        return cls(d["executor"], SingleStream.from_dict(d["single_stream"]),
                   tuple(OfflineRun.from_dict(o) for o in d["offline"]), key[len(SPEEDUP_PREFIX):], d[key])


@dataclass(frozen=True)
class BackendRoofline:
    gemm_peak_gmacs: float  # the backend's measured FP32 GEMM peak
    fraction_of_peak: dict[str, float | None]  # stage -> achieved MAC/s over the peak (None: the stage did not run)

    def to_dict(self) -> dict[str, Any]:
        return {"gemm_peak_gmacs": self.gemm_peak_gmacs, "fraction_of_peak": dict(self.fraction_of_peak)}


@dataclass(frozen=True)
class Roofline:
    """MACs per crop of each stage, and each CPU backend's stages against its GEMM peak (None: MACs unknown)."""

    stage_macs: dict[str, int] | None
    backends: dict[str, BackendRoofline]

    def to_dict(self) -> dict[str, Any]:
        return {"stage_macs": None if self.stage_macs is None else dict(self.stage_macs),
                **{b: r.to_dict() for b, r in self.backends.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Roofline:
        macs = d["stage_macs"]
        return cls(None if macs is None else dict(macs),
                   {b: BackendRoofline(r["gemm_peak_gmacs"], dict(r["fraction_of_peak"]))
                    for b, r in d.items() if b != "stage_macs"})


@dataclass(frozen=True)
class BenchReport:
    """`diffv2iqa-trt bench`: every backend side by side. `to_json` is bench_<model>.json (without the
    command/date/machine header report.write adds; `from_json` ignores that header)."""

    bundle: str
    model: str
    trained: bool
    steps: int
    crops: str
    crops_per_image: int
    crop_size: int
    images: tuple[str, ...]  # file names
    settings: BenchSettings
    backends: dict[str, BackendBench]  # by backend name, the baseline first
    roofline: Roofline

    @property
    def baseline(self) -> str:
        return next(iter(self.backends))

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "model": self.model, "trained": self.trained, "steps": self.steps,
                "crops": self.crops, "crops_per_image": self.crops_per_image, "crop_size": self.crop_size,
                "images": list(self.images), "settings": self.settings.to_dict(),
                "backends": {b: v.to_dict() for b, v in self.backends.items()}, "roofline": self.roofline.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        return cls(bundle=d["bundle"], model=d["model"], trained=d["trained"], steps=d["steps"], crops=d["crops"],
                   crops_per_image=d["crops_per_image"], crop_size=d["crop_size"], images=tuple(d["images"]),
                   settings=BenchSettings.from_dict(d["settings"]),
                   backends={b: BackendBench.from_dict(v) for b, v in d["backends"].items()},
                   roofline=Roofline.from_dict(d["roofline"]))

    @classmethod
    def from_json(cls, text: str) -> BenchReport:
        """A report from bench_<model>.json (or `to_json`); ConfigError when it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a bench report ({type(exc).__name__}: {exc}); give the bench_<model>.json that "
                              "`diffv2iqa-trt bench` wrote") from None


def _repeat(fn: Callable[[], object], s: BenchSettings, after_warmup: Callable[[], object] | None = None
            ) -> list[float]:
    for _ in range(s.warmup):
        fn()
    if after_warmup is not None:
        after_warmup()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < s.min_iters or time.perf_counter() - start < s.min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def synthetic_image(folder: Path) -> Path:
    """A deterministic 256x256 test image (smooth gradients plus texture) written into `folder`, so bench runs
    without any data."""
    from PIL import Image

    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    rgb = np.stack([128 + 100 * np.sin(xx / 17), 128 + 100 * np.cos(yy / 23), (xx + yy) / 2], axis=2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench_input.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def open_timed(bundle: Bundle, backend: str, settings: BenchSettings) -> tuple[Scorer, TimedExecutor | StreamStages]:
    """A scorer of `backend` at batch 1, opened through the public API, and the timer of its stages: the host
    pipeline's executor wrapped in place (TimedExecutor), or the stream pipeline's CUDA events (StreamStages)."""
    stream = backend in STREAM_BACKENDS  # the loop on a GPU: stages come from the pipeline's CUDA events
    scorer = Scorer.from_options(ScoreOptions(bundle=bundle.root, backend=backend, batch_size=1,
                                              threads=None if stream else settings.threads))
    pipe: Any = scorer.pipeline
    if isinstance(pipe, StreamPipeline):
        return scorer, StreamStages(pipe)
    timer = TimedExecutor(pipe.executor)
    pipe.executor = timer  # the scorer's own pipeline, noise banks and batching rule included, now timed
    return scorer, timer


def run_bench(bundle: Bundle, image_paths: Sequence[Path], settings: BenchSettings,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Single-stream latency, offline throughput and the roofline of every backend, side by side. `settings.threads`
    also sets torch's thread count (the torch backend and the roofline's GEMM use it)."""
    say = progress or (lambda _m: None)
    if not image_paths:
        raise ConfigError("bench needs at least one image")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    decoded = [load_image(p) for p in image_paths]
    timers: dict[str, TimedExecutor | StreamStages] = {}
    pipes: dict[str, Pipeline | StreamPipeline] = {}
    with contextlib.ExitStack() as opened:
        for b in settings.backends:
            scorer, timers[b] = open_timed(bundle, b, settings)
            opened.enter_context(scorer)  # closed (sessions, device memory) when the bench is done
            pipes[b] = scorer.pipeline  # type: ignore[assignment]  # a Pipeline or a StreamPipeline
        spec = next(iter(pipes.values())).spec
        crops_per_image = pipes[settings.backends[0]].score(decoded[:1])[0].crops

        single: dict[str, SingleStream] = {}
        for b in settings.backends:
            say(f"single-stream {b}")
            single[b] = _single_stream(pipes[b], timers[b], image_paths[0], decoded[0], settings)
        offline: dict[str, list[OfflineRun]] = {b: [] for b in settings.backends}
        for bs in settings.batch_sizes:
            for b in settings.backends:
                say(f"offline {b} batch {bs}")
                offline[b].append(_offline(pipes[b], decoded, bs, crops_per_image, settings))
    roof = _roofline(bundle, spec, single, crops_per_image, settings, say)
    base = settings.backends[0]
    backends = {b: BackendBench(timers[b].name, single[b], tuple(offline[b]), base,
                                single[base].no_decode.median / single[b].no_decode.median)
                for b in settings.backends}
    return BenchReport(bundle=str(bundle.root), model=bundle.model_name, trained=bundle.trained, steps=spec.steps,
                       crops=spec.crops, crops_per_image=crops_per_image, crop_size=spec.crop_size,
                       images=tuple(Path(p).name for p in image_paths), settings=settings, backends=backends,
                       roofline=roof)


def bench_bundle(bundle_path: Path, images: Sequence[Path] | None, settings: BenchSettings, out_dir: Path,
                 name: str | None = None, *, invocation: str | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[BenchReport, list[Path]]:
    """`diffv2iqa-trt bench`: check that the report folder can be written (before a run that may take hours), load
    the bundle, score `images` (files or folders; None: one synthetic image written to the report folder), and write
    the report as bench_<model> (or `name`) .json/.md/.png into `out_dir`."""
    from ..bundle import load_bundle
    from ..runtime.images import expand_paths
    from .report_folder import check_report_folder

    check_report_folder(out_dir)
    bundle = load_bundle(bundle_path)
    files = expand_paths(list(images)) if images else [synthetic_image(out_dir)]
    report = run_bench(bundle, files, settings, progress=progress)
    return report, write_report(report, out_dir, name or f"bench_{report.model}", invocation=invocation)


def _single_stream(pipe: Pipeline | StreamPipeline, timer: TimedExecutor | StreamStages, path: Path,
                   decoded: np.ndarray, settings: BenchSettings) -> SingleStream:
    """One image at a time: latency on decoded pixels and from the file, and the mean time of each stage."""
    decode_seconds = [0.0]

    def one_with_decode() -> None:
        t0 = time.perf_counter()
        img = load_image(path)
        decode_seconds[0] += time.perf_counter() - t0
        pipe.score([img])

    clear = timer.clear if isinstance(timer, StreamStages) else timer.seconds.clear
    t_plain = _repeat(partial(pipe.score, [decoded]), settings, clear)
    stages = {k: v / len(t_plain) for k, v in timer.seconds.items()}
    stages["host (crops, noise, fusion)"] = max(0.0, float(np.mean(t_plain)) - sum(stages.values()))
    t_decode = _repeat(one_with_decode, settings, partial(decode_seconds.__setitem__, 0, 0.0))
    stages = {"decode + preprocess": decode_seconds[0] / len(t_decode), **stages}
    return SingleStream(LatencyStats.of(t_plain), LatencyStats.of(t_decode), tuple(t_plain), stages)


def _offline(pipe: Pipeline | StreamPipeline, decoded: Sequence[np.ndarray], batch: int, crops_per_image: int,
             settings: BenchSettings) -> OfflineRun:
    """Throughput of scoring max(batch, offline_images) images with `batch` crops per graph call."""
    n = max(batch, settings.offline_images)
    images = [decoded[i % len(decoded)] for i in range(n)]
    pipe.batch_size = batch
    try:
        med = float(np.median(_repeat(partial(pipe.score, images), settings)))
    finally:
        pipe.batch_size = 1
    return OfflineRun(batch=batch, images=n, median_s=med, images_per_s=n / med, crops_per_s=n * crops_per_image / med)


def _roofline(bundle: Bundle, spec: PipelineSpec, single: dict[str, SingleStream], crops_per_image: int,
              settings: BenchSettings, say: Callable[[str], None]) -> Roofline:
    """MACs per stage against each backend's measured FP32 GEMM peak."""
    macs = roofline.stage_macs(dict(bundle.manifest.model.config), spec.steps)
    if macs is None:
        return Roofline(None, {})
    ran = {"VCG": spec.vcg_weight != 0, "VDA": spec.vda_weight != 0, "restoration steps": True}
    backends: dict[str, BackendRoofline] = {}
    for b in settings.backends:
        if b in STREAM_BACKENDS:
            continue  # no GEMM peak measured for GPUs here; scripts/gpu_check.sh reports TFLOP/s against the sheet
        say(f"GEMM peak {b}")
        peak = roofline.gemm_peak_macs_per_s(b, threads=settings.threads)
        stages = single[b].stage_mean_s
        backends[b] = BackendRoofline(peak / 1e9, {
            k: (macs[k] * crops_per_image / stages[k] / peak) if ran[k] and stages.get(k) else None for k in macs})
    return Roofline(dict(macs), backends)


def markdown(r: BenchReport) -> str:
    base = r.baseline
    s = r.settings
    lines = [f"# Throughput and latency, model {r.model}", "", "<!--header-->",
             f"{r.steps} restoration steps, crops `{r.crops}` ({r.crops_per_image} per image, "
             f"{r.crop_size}×{r.crop_size}), threads {s.threads or 'default'}; at least "
             f"{s.min_iters} iterations and {s.min_seconds} s per measurement after "
             f"{s.warmup} warm-up.", "",
             "## Single stream (latency per image, seconds)", "",
             "| backend | decode | min | median | mean | p90 | p95 | p99 | speed-up vs " + base + " |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in r.backends.values():
        for st, label in ((v.single_stream.no_decode, "no"), (v.single_stream.with_decode, "yes")):
            ratio = f"{v.speedup:.2f}×" if label == "no" else ""
            lines.append(f"| {v.executor} | {label} | {st.min:.4f} | {st.median:.4f} | "
                         f"{st.mean:.4f} | {st.p90:.4f} | {st.p95:.4f} | {st.p99:.4f} | {ratio} |")
    stage_keys: list[str] = []
    for v in r.backends.values():
        stage_keys += [k for k in v.single_stream.stage_mean_s if k not in stage_keys]
    lines += ["", "## Stage breakdown (single stream, mean ms per image)", "",
              "| backend | " + " | ".join(stage_keys) + " |", "|---" * (len(stage_keys) + 1) + "|"]
    for v in r.backends.values():
        st_ = v.single_stream.stage_mean_s
        lines.append(f"| {v.executor} | " + " | ".join(f"{st_.get(k, 0.0) * 1e3:.2f}" for k in stage_keys) + " |")
    lines += ["", "## Offline throughput", "", "| backend | batch | images/s | crops/s |", "|---|---|---|---|"]
    for v in r.backends.values():
        for o in v.offline:
            lines.append(f"| {v.executor} | {o.batch} | {o.images_per_s:.3f} | {o.crops_per_s:.3f} |")
    roof = r.roofline
    if roof.stage_macs:
        lines += ["", "## Roofline", "", "MACs per crop: " + ", ".join(f"{k} {m / 1e9:.2f} G"
                                                                        for k, m in roof.stage_macs.items()), "",
                  "| backend | GEMM peak (GMAC/s) | " + " | ".join(roof.stage_macs) + " |",
                  "|---" * (len(roof.stage_macs) + 2) + "|"]
        for b, v in r.backends.items():
            if b in roof.backends:
                fr = roof.backends[b].fraction_of_peak
                cells = " | ".join("not run" if fr[k] is None else f"{100 * (fr[k] or 0.0):.0f} %"
                                   for k in roof.stage_macs)
                lines.append(f"| {v.executor} | {roof.backends[b].gemm_peak_gmacs:.1f} | {cells} |")
    lines += ["", "Plots: `*_throughput.png`, `*_latency_cdf.png`, `*_stages.png`."]
    return "\n".join(lines) + "\n"


def write_report(r: BenchReport, out_dir: Path, name: str, invocation: str | None = None) -> list[Path]:
    from . import plots
    from .report import write

    paths = list(write(out_dir, name, r.to_dict(), markdown(r), invocation=invocation))
    try:
        paths.append(plots.throughput_vs_batch({v.executor: [(o.batch, o.images_per_s) for o in v.offline]
                                                for v in r.backends.values()},
                                               out_dir / f"{name}_throughput.png", "images per second"))
        paths.append(plots.latency_cdf({v.executor: np.asarray(v.single_stream.latencies_no_decode)
                                        for v in r.backends.values()}, out_dir / f"{name}_latency_cdf.png"))
        paths.append(plots.stage_bars({v.executor: v.single_stream.stage_mean_s for v in r.backends.values()},
                                      out_dir / f"{name}_stages.png"))
    except OSError as exc:  # the folder was checked before the run, but a disk can still fill up
        raise ConfigError(f"cannot write the plots to {out_dir} ({exc.strerror or exc}); choose a writable --out"
                          ) from exc
    return paths

"""Throughput and latency of a bundle's pipeline on several backends, trtexec-style.

Scenarios:
- single-stream: one image at a time, latency per image (with decoding from the file, or on pre-decoded pixels);
- offline: many images at once, throughput in images/s and crops/s for each batch size.
Each measurement runs warm-up iterations, then at least `min_iters` iterations and at least `min_seconds`.
Backends alternate within every scenario so that drift of a shared machine hits them alike. A stage breakdown comes
from timing the executor calls (upload = host-to-device, download = device-to-host), or for the GPU stream backends
(torch-cuda, tensorrt) from the pipeline's CUDA events; the roofline puts each stage's MACs against the backend's
measured GEMM peak (CPU backends).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import ConfigError
from ..runtime.backends import STREAM_BACKENDS
from ..runtime.from_bundle import bundle_pipeline, bundle_stream_pipeline
from ..runtime.images import load_image
from ..runtime.pipeline import Pipeline, PipelineSpec
from ..runtime.stream_pipeline import StreamPipeline
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


def latency_stats(times: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times)
    return {"iterations": int(len(t)), "min": float(t.min()), "median": float(np.median(t)),
            "mean": float(t.mean()), "p90": float(np.percentile(t, 90)), "p95": float(np.percentile(t, 95)),
            "p99": float(np.percentile(t, 99)), "max": float(t.max())}


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


def run_bench(bundle: Bundle, image_paths: Sequence[Path], settings: BenchSettings,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
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
    for b in settings.backends:
        if b in STREAM_BACKENDS:  # the loop on a GPU: stages come from the pipeline's CUDA events
            stream = bundle_stream_pipeline(bundle, b, batch_size=1)
            timers[b], pipes[b] = StreamStages(stream), stream
            continue
        plain = bundle_pipeline(bundle, b, batch_size=1, threads=settings.threads)
        timer = TimedExecutor(plain.executor)
        timers[b], pipes[b] = timer, Pipeline(timer, plain.spec, batch_size=1)
    spec = next(iter(pipes.values())).spec
    crops_per_image = pipes[settings.backends[0]].score(decoded[:1])[0].crops

    results: dict[str, Any] = {b: {"executor": timers[b].name} for b in settings.backends}
    for b in settings.backends:
        say(f"single-stream {b}")
        results[b]["single_stream"] = _single_stream(pipes[b], timers[b], image_paths[0], decoded[0], settings)
    for b in settings.backends:
        results[b]["offline"] = []
    for bs in settings.batch_sizes:
        for b in settings.backends:
            say(f"offline {b} batch {bs}")
            results[b]["offline"].append(_offline(pipes[b], decoded, bs, crops_per_image, settings))
    roof = _roofline(bundle, spec, results, crops_per_image, settings, say)
    base = settings.backends[0]
    for b in settings.backends:
        results[b]["speedup_vs_" + base] = (results[base]["single_stream"]["no_decode"]["median"] /
                                            results[b]["single_stream"]["no_decode"]["median"])
    return {"bundle": str(bundle.root), "model": bundle.model_name, "trained": bundle.trained,
            "steps": spec.steps, "crops": spec.crops, "crops_per_image": crops_per_image,
            "crop_size": spec.crop_size, "images": [Path(p).name for p in image_paths],
            "settings": {k: v for k, v in settings.__dict__.items()}, "backends": results, "roofline": roof}


def _single_stream(pipe: Pipeline | StreamPipeline, timer: TimedExecutor | StreamStages, path: Path,
                   decoded: np.ndarray, settings: BenchSettings) -> dict[str, Any]:
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
    return {"no_decode": latency_stats(t_plain), "with_decode": latency_stats(t_decode),
            "latencies_no_decode": t_plain, "stage_mean_s": stages}


def _offline(pipe: Pipeline | StreamPipeline, decoded: Sequence[np.ndarray], batch: int, crops_per_image: int,
             settings: BenchSettings) -> dict[str, Any]:
    """Throughput of scoring max(batch, offline_images) images with `batch` crops per graph call."""
    n = max(batch, settings.offline_images)
    images = [decoded[i % len(decoded)] for i in range(n)]
    pipe.batch_size = batch
    try:
        med = float(np.median(_repeat(partial(pipe.score, images), settings)))
    finally:
        pipe.batch_size = 1
    return {"batch": batch, "images": n, "median_s": med, "images_per_s": n / med,
            "crops_per_s": n * crops_per_image / med}


def _roofline(bundle: Bundle, spec: PipelineSpec, results: dict[str, Any], crops_per_image: int,
              settings: BenchSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """MACs per stage against each backend's measured FP32 GEMM peak."""
    macs = roofline.stage_macs(dict(bundle.manifest.model.config), spec.steps)
    roof: dict[str, Any] = {"stage_macs": macs}
    if macs is None:
        return roof
    ran = {"VCG": spec.vcg_weight != 0, "VDA": spec.vda_weight != 0, "restoration steps": True}
    for b in settings.backends:
        if b in STREAM_BACKENDS:
            continue  # no GEMM peak measured for GPUs here; scripts/gpu_check.sh reports TFLOP/s against the sheet
        say(f"GEMM peak {b}")
        peak = roofline.gemm_peak_macs_per_s(b, threads=settings.threads)
        stages = results[b]["single_stream"]["stage_mean_s"]
        roof[b] = {"gemm_peak_gmacs": peak / 1e9, "fraction_of_peak": {
            k: (macs[k] * crops_per_image / stages[k] / peak) if ran[k] and stages.get(k) else None for k in macs}}
    return roof


def markdown(r: dict[str, Any]) -> str:
    bs = list(r["backends"])
    base = bs[0]
    lines = [f"# Throughput and latency, model {r['model']}", "", "<!--header-->",
             f"{r['steps']} restoration steps, crops `{r['crops']}` ({r['crops_per_image']} per image, "
             f"{r['crop_size']}×{r['crop_size']}), threads {r['settings']['threads'] or 'default'}; at least "
             f"{r['settings']['min_iters']} iterations and {r['settings']['min_seconds']} s per measurement after "
             f"{r['settings']['warmup']} warm-up.", "",
             "## Single stream (latency per image, seconds)", "",
             "| backend | decode | min | median | mean | p90 | p95 | p99 | speed-up vs " + base + " |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in bs:
        for key, label in (("no_decode", "no"), ("with_decode", "yes")):
            s = r["backends"][b]["single_stream"][key]
            ratio = f"{r['backends'][b]['speedup_vs_' + base]:.2f}×" if key == "no_decode" else ""
            lines.append(f"| {r['backends'][b]['executor']} | {label} | {s['min']:.4f} | {s['median']:.4f} | "
                         f"{s['mean']:.4f} | {s['p90']:.4f} | {s['p95']:.4f} | {s['p99']:.4f} | {ratio} |")
    stage_keys: list[str] = []
    for b in bs:
        stage_keys += [k for k in r["backends"][b]["single_stream"]["stage_mean_s"] if k not in stage_keys]
    lines += ["", "## Stage breakdown (single stream, mean ms per image)", "",
              "| backend | " + " | ".join(stage_keys) + " |", "|---" * (len(stage_keys) + 1) + "|"]
    for b in bs:
        st = r["backends"][b]["single_stream"]["stage_mean_s"]
        lines.append(f"| {r['backends'][b]['executor']} | " + " | ".join(f"{st.get(k, 0.0) * 1e3:.2f}"
                                                                       for k in stage_keys) + " |")
    lines += ["", "## Offline throughput", "", "| backend | batch | images/s | crops/s |", "|---|---|---|---|"]
    for b in bs:
        for o in r["backends"][b]["offline"]:
            lines.append(f"| {r['backends'][b]['executor']} | {o['batch']} | {o['images_per_s']:.3f} | "
                         f"{o['crops_per_s']:.3f} |")
    roof = r["roofline"]
    if roof.get("stage_macs"):
        lines += ["", "## Roofline", "", "MACs per crop: " + ", ".join(f"{k} {v / 1e9:.2f} G"
                                                                        for k, v in roof["stage_macs"].items()), "",
                  "| backend | GEMM peak (GMAC/s) | " + " | ".join(roof["stage_macs"]) + " |",
                  "|---" * (len(roof["stage_macs"]) + 2) + "|"]
        for b in bs:
            if b in roof:
                fr = roof[b]["fraction_of_peak"]
                cells = " | ".join("not run" if fr[k] is None else f"{100 * fr[k]:.0f} %" for k in roof["stage_macs"])
                lines.append(f"| {r['backends'][b]['executor']} | {roof[b]['gemm_peak_gmacs']:.1f} | {cells} |")
    lines += ["", "Plots: `*_throughput.png`, `*_latency_cdf.png`, `*_stages.png`."]
    return "\n".join(lines) + "\n"


def write_report(r: dict[str, Any], out_dir: Path, name: str, invocation: str | None = None) -> list[Path]:
    from . import plots
    from .report import write

    paths = list(write(out_dir, name, r, markdown(r), invocation=invocation))
    names = {b: v["executor"] for b, v in r["backends"].items()}
    try:
        paths.append(plots.throughput_vs_batch({names[b]: [(o["batch"], o["images_per_s"]) for o in v["offline"]]
                                                for b, v in r["backends"].items()},
                                               out_dir / f"{name}_throughput.png", "images per second"))
        paths.append(plots.latency_cdf({names[b]: np.asarray(v["single_stream"]["latencies_no_decode"])
                                        for b, v in r["backends"].items()}, out_dir / f"{name}_latency_cdf.png"))
        paths.append(plots.stage_bars({names[b]: v["single_stream"]["stage_mean_s"]
                                       for b, v in r["backends"].items()}, out_dir / f"{name}_stages.png"))
    except OSError as exc:  # the folder was checked before the run, but a disk can still fill up
        raise ConfigError(f"cannot write the plots to {out_dir} ({exc.strerror or exc}); choose a writable --out"
                          ) from exc
    return paths

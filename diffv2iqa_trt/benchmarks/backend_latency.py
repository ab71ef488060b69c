"""Per-image latency of the scoring pipeline on several backends of one bundle, measured side by side.

python -m diffv2iqa_trt.benchmarks.backend_latency --bundle DIR [--backends torch,onnxruntime] [--repeats 5]
       [--threads 2] [--image-size 256] [--out benchmarks/results] [--name NAME]

Each repeat scores the same real photograph (scikit-image's `astronaut`, resized) once per backend, alternating the
backends so that drift of a shared machine hits all of them alike. One warm-up run per backend is not counted.
A stage breakdown (restoration steps, VCG, VDA, host work) comes from timing the executor calls. Each backend is
opened through the public API (bench.open_timed: api.Scorer.from_options), as `diffv2iqa-trt score` opens it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..bundle import load_bundle
from ..data.photos import photo
from ..runtime.pipeline import Pipeline
from . import report
from .bench import BenchSettings, TimedExecutor, open_timed


def _set_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    _set_threads(args.threads)
    bundle = load_bundle(args.bundle)
    image = np.asarray(Image.fromarray(photo("astronaut")).resize((args.image_size, args.image_size),
                                                                  Image.Resampling.BICUBIC))
    backends = args.backends.split(",")
    pipelines: dict[str, Pipeline] = {}
    timers: dict[str, TimedExecutor] = {}
    scores: dict[str, float] = {}
    for name in backends:  # opened through the public API, as `score` opens them; executors timed in place
        scorer, timer = open_timed(bundle, name, BenchSettings(backends=(name,), threads=args.threads))
        if not isinstance(timer, TimedExecutor) or not isinstance(scorer.pipeline, Pipeline):
            parser.error(f"{name} is a GPU stream backend: measure it with `diffv2iqa-trt bench`")
        timers[name], pipelines[name] = timer, scorer.pipeline
        scores[name] = pipelines[name].score([image])[0].score  # warm-up
        timers[name].seconds.clear()
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name in backends:
            t0 = time.perf_counter()
            pipelines[name].score([image])
            times[name].append(time.perf_counter() - t0)

    spec = next(iter(pipelines.values())).spec
    base = backends[0]
    rows = {}
    for name in backends:
        t = np.asarray(times[name])
        total = float(t.sum())
        stages = {k: v / args.repeats for k, v in timers[name].seconds.items()}
        stages["host (crops, noise, fusion)"] = max(0.0, total / args.repeats - sum(stages.values()))
        rows[name] = {"executor": timers[name].name, "median_s": float(np.median(t)), "min_s": float(t.min()),
                      "max_s": float(t.max()), "runs_s": t.tolist(), "stage_mean_s": stages,
                      "score": scores[name], f"speedup_vs_{base}": float(np.median(times[base]) / np.median(t))}
    results = {"bundle": str(args.bundle), "model": bundle.model_name, "steps": spec.steps, "crops": spec.crops,
               "crop_size": spec.crop_size, "threads": args.threads, "repeats": args.repeats,
               "image": f"skimage astronaut resized to {args.image_size}x{args.image_size}", "backends": rows}
    lines = [f"# Backend latency, model {bundle.model_name}\n", "<!--header-->",
             f"One image ({results['image']}), crop policy `{spec.crops}` ({spec.crop_size}×{spec.crop_size}), "
             f"{spec.steps} restoration steps + VCG + VDA, batch 1, {args.threads} threads, {args.repeats} "
             "alternating runs per backend after one warm-up.\n",
             f"| backend | median s | min s | max s | speed-up vs {base} (medians) | score |",
             "|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['executor']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r[f'speedup_vs_{base}']:.2f}× | {r['score']:.6f} |")
    lines += ["", "Mean seconds per image by stage:", "",
              "| backend | " + " | ".join(rows[base]["stage_mean_s"]) + " |",
              "|---" * (1 + len(rows[base]["stage_mean_s"])) + "|"]
    for r in rows.values():
        lines.append(f"| {r['executor']} | " + " | ".join(f"{r['stage_mean_s'].get(k, 0.0):.3f}"
                                                           for k in rows[base]["stage_mean_s"]) + " |")
    name = args.name or f"backend_latency_{bundle.model_name}"
    paths = report.write(args.out, name, results, "\n".join(lines) + "\n")
    for r in rows.values():
        print(f"{r['executor']}: median {r['median_s']:.3f} s  ({r[f'speedup_vs_{base}']:.2f}x vs {base})")
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

"""Per-crop latency of the PyTorch reference pipeline (all steps + both branches) with a fixed thread count.

python -m diffv2iqa_trt.benchmarks.reference_latency [--preset tiny] [--threads 1] [--repeats 20] [--steps N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import Scorer
from ..scorers import ScoreOptions
from . import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # The reference scorer as `diffv2iqa-trt score --preset P` opens it (crops center, mode crops, seed 0).
    pipeline: Any = Scorer.from_options(ScoreOptions(preset=args.preset, steps=args.steps, batch_size=1)).pipeline
    rng = np.random.default_rng(0)
    s = pipeline.spec.crop_size
    image = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    pipeline.score([image])  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pipeline.score([image])
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    results = {"preset": args.preset, "threads": args.threads, "steps": pipeline.spec.steps, "crop": s,
               "repeats": args.repeats, "seconds_per_crop": {"min": float(t.min()), "median": float(np.median(t)),
                                                              "max": float(t.max())}}
    md = (f"# Reference latency, preset {args.preset}\n\n<!--header-->"
          f"One {s}×{s} crop, {pipeline.spec.steps} steps + VCG + VDA, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.repeats} runs after one warm-up.\n\n"
          f"| min s | median s | max s |\n|---|---|---|\n| {t.min():.4f} | {np.median(t):.4f} | {t.max():.4f} |\n")
    paths = report.write(args.out, f"reference_latency_{args.preset}_{args.threads}thread", results, md)
    print(f"median {np.median(t):.4f} s per crop; wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

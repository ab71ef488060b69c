"""FP32 against every reduced-precision variant of a bundle on ONNX Runtime's CPU provider, side by side.

python -m diffv2iqa_trt.benchmarks.precision_cpu --bundle DIR [--rounds 10] [--batch 1] [--threads 2]
       [--end-to-end-rounds 3] [--out benchmarks/results] [--name NAME]

Per graph: one session per variant, the same input (restore_step: a real photograph's crop as x, a noisy y at the
middle step; branches: the crop and three noisy snapshots), run in interleaved rounds (fp32, fp16, int8, int8-cpu,
fp32, ...) so a shared machine's drift hits every variant alike; median seconds per run and the ratio of medians
against fp32. End to end: one photograph scored with each uniform plan the bundle holds and with its chosen plan (on
the CPU: int8 graphs in their int8-cpu layout). The CPU's SIMD flags are recorded with the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..api import Scorer
from ..bundle import Bundle, load_bundle
from ..contract import (
    COEF,
    GAMMA,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    RESTORE_STEP,
    Y0,
    Y_T1,
    Y_T2,
    X,
    Y,
    Z,
    input_shapes,
    normalise_uint8,
)
from ..data.photos import photo
from ..precision_plan import runnable_plan
from ..scorers import ScoreOptions
from . import report


def graph_inputs(bundle: Bundle, graph: str, batch: int) -> dict[str, np.ndarray]:
    """One feed of `graph` at crop size, shaped by the contract (input_shapes)."""
    s = bundle.manifest.pipeline.crop_size
    shapes = input_shapes(graph, s, batch)
    rgb = np.asarray(Image.fromarray(photo("astronaut")).resize((s, s), Image.Resampling.BICUBIC))
    x = np.repeat(normalise_uint8(rgb).transpose(2, 0, 1)[None], batch, axis=0)
    rng = np.random.default_rng(0)
    p = bundle.manifest.pipeline
    mid = p.steps // 2
    noisy = (np.sqrt(p.gamma[mid]) * x + np.sqrt(1 - p.gamma[mid]) * rng.standard_normal(x.shape)).astype(np.float32)
    if graph == RESTORE_STEP:
        feed = {X: x, Y: noisy, GAMMA: np.full(shapes[GAMMA], p.gamma[mid], np.float32),
                COEF: np.broadcast_to(np.asarray(p.coef[mid], np.float32), shapes[COEF]).copy(),
                Z: rng.standard_normal(shapes[Z]).astype(np.float32)}
    else:
        feed = {X: x, Y0: x.copy(), Y_T1: noisy, Y_T2: noisy.copy()}
    return feed


def time_graphs(bundle: Bundle, rounds: int, batch: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    results: dict[str, Any] = {}
    for graph in GRAPH_NAMES:
        precisions = bundle.precisions(graph)
        sessions = {p: ort.InferenceSession(str(bundle.onnx_path(graph, p)), opts,
                                            providers=["CPUExecutionProvider"]) for p in precisions}
        feed = graph_inputs(bundle, graph, batch)
        out = GRAPH_OUTPUTS[graph][0]
        reference = sessions["fp32"].run([out], feed)[0]  # also the warm-up
        times: dict[str, list[float]] = {p: [] for p in precisions}
        errors = {}
        for p, sess in sessions.items():
            got = sess.run([out], feed)[0]
            errors[p] = float(np.max(np.abs(got.astype(np.float64) - reference)))
        for _ in range(rounds):
            for p, sess in sessions.items():
                t = time.perf_counter()
                sess.run([out], feed)
                times[p].append(time.perf_counter() - t)
        base = statistics.median(times["fp32"])
        results[graph] = {p: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                              "speedup_vs_fp32": base / statistics.median(v), "max_abs_vs_fp32": errors[p]}
                          for p, v in times.items()}
    return results


def time_end_to_end(bundle: Bundle, rounds: int, threads: int) -> dict[str, Any]:
    s = bundle.manifest.pipeline.crop_size
    image = np.asarray(Image.fromarray(photo("astronaut")).resize((s, s), Image.Resampling.BICUBIC))
    plans = list(bundle.common_precisions())
    if bundle.manifest.precision is not None:
        chosen = bundle.run_plan(None)
        plans.append(runnable_plan(chosen, {g: bundle.precisions(g) for g in GRAPH_NAMES}, cpu=True).label())
    plans = list(dict.fromkeys(plans))
    pipes: dict[str, Any] = {  # opened as `diffv2iqa-trt score` opens them
        p: Scorer.from_options(ScoreOptions(bundle=bundle.root, backend="onnxruntime", precision=p, batch_size=1,
                                            threads=threads)).pipeline for p in plans}
    scores = {p: pipe.score([image])[0].score for p, pipe in pipes.items()}  # warm-up
    times: dict[str, list[float]] = {p: [] for p in plans}
    for _ in range(rounds):
        for p, pipe in pipes.items():
            t = time.perf_counter()
            pipe.score([image])
            times[p].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    return {p: {"median_s": statistics.median(v), "speedup_vs_fp32": base / statistics.median(v),
                "score": scores[p], "score_delta_vs_fp32": scores[p] - scores["fp32"]} for p, v in times.items()}


def markdown(bundle: Bundle, results: dict[str, Any], args: argparse.Namespace) -> str:
    m = bundle.manifest
    lines = [f"# Precision variants on ONNX Runtime CPU, model {m.model.name}", "", "<!--header-->",
             f"SIMD: {' '.join(report.simd_flags()) or 'unknown'}  ",
             f"onnxruntime {results['onnxruntime']}, {args.threads} threads, batch {args.batch}, crop "
             f"{m.pipeline.crop_size}², {args.rounds} interleaved rounds per graph (median).", "",
             "| graph | variant | median ms | speed-up vs fp32 | max abs Δ vs fp32 (this input) |",
             "|---|---|---|---|---|"]
    for graph, by_p in results["graphs"].items():
        for p, r in by_p.items():
            lines.append(f"| {graph} | {p} | {1e3 * r['median_s']:.1f} | {r['speedup_vs_fp32']:.2f}× | "
                         f"{r['max_abs_vs_fp32']:.3g} |")
    if results.get("end_to_end"):
        lines += ["", f"End to end: one photograph, {m.pipeline.steps} steps + VCG + VDA, "
                      f"{args.end_to_end_rounds} interleaved rounds.", "",
                  "| plan | median s | speed-up vs fp32 | score | Δ vs fp32 |", "|---|---|---|---|---|"]
        for p, r in results["end_to_end"].items():
            lines.append(f"| {p} | {r['median_s']:.3f} | {r['speedup_vs_fp32']:.2f}× | {r['score']:.6f} | "
                         f"{r['score_delta_vs_fp32']:+.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--end-to-end-rounds", type=int, default=3, help="0 skips the end-to-end timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    import onnxruntime

    bundle = load_bundle(args.bundle)
    results: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "model": bundle.manifest.model.name,
                               "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
                               "graphs": time_graphs(bundle, args.rounds, args.batch, args.threads)}
    if args.end_to_end_rounds > 0:
        results["end_to_end"] = time_end_to_end(bundle, args.end_to_end_rounds, args.threads)
    name = args.name or f"precision_cpu_{bundle.manifest.model.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = report.write(args.out, name, results, markdown(bundle, results, args))
    print(markdown(bundle, results, args).replace("<!--header-->", ""))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

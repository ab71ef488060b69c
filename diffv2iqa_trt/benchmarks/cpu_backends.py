"""The CPU engines side by side: ONNX Runtime FP32, OpenVINO f32, OpenVINO bf16 (and int8-cpu on both engines).

python -m diffv2iqa_trt.benchmarks.cpu_backends --bundle DIR [--threads 2] [--batch 1] [--rounds 5]
       [--images 4] [--end-to-end-rounds 2] [--end-to-end-choices A,B] [--no-onnxruntime-warm-up]
       [--auto-threads N] [--no-auto] [--out benchmarks/results/cpu] [--name NAME]

Each choice is the toolkit's own executor, as `score --backend B --precision P` makes it. Per graph (restore_step,
vcg, vda): the same input for every choice (a real photograph's crop; restore_step at the middle step), one warm-up
call each (OpenVINO compiles for the shape then), then interleaved rounds (fp32, f32, bf16, the int8-cpus, fp32, ...) so
the drift of a machine shared with other work hits every choice alike; the median seconds per call, its ratio to
ONNX Runtime FP32, the max |Δ| of the output against ONNX Runtime FP32 (also as a fraction of that output's range),
and GFLOP/s from the model's MAC count. End to end: `--images` distorted photographs scored together, as `score`
does (its default batch of 8 crops), one warm-up and `--end-to-end-rounds` interleaved rounds; images/s, and the
scores' max |Δ| and SRCC against ONNX Runtime FP32 (SRCC only means something with a trained model and several
images). The CPU model, its ISA flags, the load average and the package versions are recorded with the figures; bf16
is left out, with the reason, on a CPU without BF16 instructions. Before the end-to-end run: what `score --backend
auto` picks on this machine (a fresh self-benchmark, auto_choice.py; --auto-threads N times only that thread count)
and the default path's thread count, with every candidate's timing (--no-auto skips); the end-to-end run then
includes auto's pick at its thread count (a row of its own unless a timed choice is the same). On the paper model,
where a pass takes minutes: --rounds 0 skips the per-graph timings, --end-to-end-choices narrows the end-to-end run,
--no-onnxruntime-warm-up times ONNX Runtime's first pass (it compiles nothing; OpenVINO keeps its warm-up).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import cpu_info
from ..bundle import Bundle, load_bundle
from ..contract import GRAPH_NAMES, RESTORE_STEP
from ..data.distortions import distort
from ..data.photos import PHOTO_NAMES, SET_DISTORTIONS, photo
from ..metrics import srcc
from ..precision_plan import parse_plan
from ..runtime.backends import BackendOptions, create_executor
from ..runtime.backends.openvino_backend import bf16_problem_here, ov_version
from ..runtime.from_bundle import bundle_pipeline
from . import report
from .precision_cpu import graph_inputs

BASELINE = "onnxruntime fp32"
STAGES = {RESTORE_STEP: "restoration steps", "vcg": "VCG", "vda": "VDA"}  # roofline.stage_macs' names


def choices(bundle: Bundle) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """The choices this machine and bundle allow, as label -> (backend, precision plan), and the ones left out with
    the reason."""
    chosen = {BASELINE: ("onnxruntime", "fp32"), "openvino f32": ("openvino", "fp32")}
    skipped = {}
    problem = bf16_problem_here()
    if problem is None:
        chosen["openvino bf16"] = ("openvino", "bf16")
    else:
        skipped["openvino bf16"] = problem
    int8 = [g for g in GRAPH_NAMES if "int8-cpu" in bundle.precisions(g)]
    if int8:
        plan = ",".join(f"{g}=int8-cpu" for g in int8)
        chosen["onnxruntime int8-cpu"] = ("onnxruntime", plan)
        chosen["openvino int8-cpu"] = ("openvino", plan)  # its float parts in bf16 where the CPU has BF16
    else:
        for label in ("onnxruntime int8-cpu", "openvino int8-cpu"):
            skipped[label] = "the bundle has no int8-cpu variant (build --precision int8 adds one)"
    return chosen, skipped


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int, pause: float) -> dict[str, list[float]]:
    """Seconds per call of each choice over `rounds` rounds, one call of each per round. `pause` seconds between
    calls let one engine's worker threads go idle before the next engine runs (ONNX Runtime's spin after a run)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            time.sleep(pause)
            t = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t)
    return times


def time_graphs(bundle: Bundle, executors: dict[str, Any], rounds: int, batch: int, pause: float = 0.05,
                graphs: tuple[str, ...] = GRAPH_NAMES) -> dict[str, Any]:
    from .roofline import stage_macs

    m = bundle.manifest
    macs = stage_macs(dict(m.model.config), m.pipeline.steps)
    results: dict[str, Any] = {}
    for graph in graphs:
        feed = list(graph_inputs(bundle, graph, batch).values())
        outputs = {k: np.asarray(getattr(ex, graph)(*feed), np.float64) for k, ex in executors.items()}  # warm-up
        ref = outputs[BASELINE]
        span = float(ref.max() - ref.min()) or float(np.abs(ref).max()) or 1.0
        times = _interleaved({k: functools.partial(getattr(ex, graph), *feed) for k, ex in executors.items()}, rounds,
                             pause)
        base = statistics.median(times[BASELINE])
        flop = None
        if macs is not None:
            flop = 2 * batch * macs[STAGES[graph]] / (m.pipeline.steps if graph == RESTORE_STEP else 1)
        results[graph] = {}
        for k, v in times.items():
            med = statistics.median(v)
            delta = float(np.max(np.abs(outputs[k] - ref)))
            results[graph][k] = {"median_s": med, "min_s": min(v), "max_s": max(v), "speedup": base / med,
                                 "max_abs_vs_fp32": delta, "max_abs_vs_fp32_of_range": delta / span,
                                 "gflop_per_s": None if flop is None else flop / med / 1e9}
    return results


def evaluation_images(count: int) -> list[np.ndarray]:
    """`count` distorted photographs (blur, noise, JPEG at levels 1-5), at their own sizes."""
    names = [n for n in PHOTO_NAMES if n != "stereo_motorcycle"]
    return [distort(photo(names[i % len(names)]), SET_DISTORTIONS[i % 3], 1 + (i * 2) % 5, seed=i)
            for i in range(count)]


def time_end_to_end(bundle: Bundle, chosen: dict[str, tuple[str, str, int]], images: list[np.ndarray], rounds: int,
                    pause: float = 0.05, warm: Callable[[str], bool] = lambda _k: True) -> dict[str, Any]:
    """`chosen`: label -> (backend, plan, threads). A choice for which `warm(label)` is false has no warm-up pass
    (its first timed pass gives the scores): for ONNX Runtime, which compiles nothing, on a model where one pass
    takes minutes."""
    pipes = {k: bundle_pipeline(bundle, b, precision=p, threads=t) for k, (b, p, t) in chosen.items()}
    scores = {k: np.array([r.score for r in pipe.score(images)]) for k, pipe in pipes.items() if warm(k)}
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(rounds):
        for k, pipe in pipes.items():
            time.sleep(pause)
            t = time.perf_counter()
            got = np.array([r.score for r in pipe.score(images)])
            times[k].append(time.perf_counter() - t)
            scores.setdefault(k, got)
    base = statistics.median(times[BASELINE])
    ref = scores[BASELINE]
    return {k: {"median_s": statistics.median(v), "images_per_s": len(images) / statistics.median(v),
                "speedup": base / statistics.median(v), "scores": scores[k].tolist(), "warm_up": warm(k),
                "backend": chosen[k][0], "plan": chosen[k][1], "threads": chosen[k][2],
                "max_abs_score_vs_fp32": float(np.max(np.abs(scores[k] - ref))),
                "max_abs_score_vs_fp32_of_range": float(np.max(np.abs(scores[k] - ref)) / (np.ptp(ref) or 1.0)),
                "srcc_vs_fp32": float(srcc(scores[k], ref)) if len(images) >= 3 else None}
            for k, v in times.items()}


def auto_pick(bundle: Bundle, images: int, threads: int | None = None) -> dict[str, Any]:
    """What `score --backend auto [--threads N]` picks here (a fresh self-benchmark, no cache) and what the default
    path's thread choice is, with the timed seconds per crop of every candidate (the default path's ONNX Runtime
    timings are the auto run's, not measured twice)."""
    from .. import auto_choice

    batch = auto_choice.bench_batch(bundle.manifest.pipeline.crop_size, min(8, images))
    timed: dict[str, float] = {}

    def timer(option: Any, limit: float | None) -> float:
        if option.key not in timed:
            timed[option.key] = auto_choice.time_option(bundle, option, limit, batch=batch)
        return timed[option.key]

    t = time.perf_counter()
    choice = auto_choice.choose(bundle, threads=threads, use_cache=False, batch=batch, timer=timer)
    took = time.perf_counter() - t
    default = auto_choice.choose(bundle, backend="onnxruntime", threads=threads, threads_only=True, use_cache=False,
                                 batch=batch, timer=timer)
    return {"chosen": choice.option.label(), "backend": choice.option.backend, "precision": choice.option.precision,
            "threads": choice.option.threads, "threads_asked": threads, "line": choice.line(),
            "self_benchmark_s": took, "batch": batch,
            "candidates": auto_choice.describe_candidates(choice.options, choice.seconds),
            "skipped": dict(choice.skipped), "default_threads": default.option.threads,
            "default_line": default.line()}


def _load() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "openvino": ov_version(), "numpy": np.__version__}


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# CPU backends side by side, model {r['model']}", "", "<!--header-->",
             f"CPU: {r.get('cpu_model', 'unknown')}  ",
             f"ISA flags: {' '.join(r['isa_flags']) or 'unknown'}  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}  ",
             *([f"Load average (1, 5, 15 min) before / after: {' '.join(f'{x:.2f}' for x in r['load_before'])} / "
                f"{' '.join(f'{x:.2f}' for x in r.get('load_after', []))}  "] if r.get("load_before") else []),
             f"{r['threads']} threads, batch {r['batch']}, crop {r['crop_size']}², {r['steps']} steps. "
             + (f"Each figure is the median of {r['rounds']} interleaved rounds (one call of each choice per round, "
                f"{r['pause_s']} s apart) on a machine shared with other work; ratios are against ONNX Runtime FP32 "
                "in the same rounds." if r["rounds"] else "Per-graph timings skipped (--rounds 0)."), ""]
    if r["skipped"]:
        lines += [f"Left out: {k}: {v}  " for k, v in r["skipped"].items()] + [""]
    if r["graphs"]:
        lines += ["| graph | choice | median ms | × vs ORT FP32 | max \\|Δ\\| vs FP32 | of output range | GFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
    for graph, by in r["graphs"].items():
        for k, v in by.items():
            lines.append(f"| {graph} | {k} | {1e3 * v['median_s']:.1f} | {v['speedup']:.2f}× | "
                         f"{v['max_abs_vs_fp32']:.2g} | {v['max_abs_vs_fp32_of_range']:.2g} | "
                         f"{_f(v['gflop_per_s'], '.1f')} |")
    if r.get("end_to_end"):
        e2e = r["end_to_end"]
        cold = [k for k, v in e2e.items() if not v.get("warm_up", True)]
        lines += ["", f"End to end: {r['images']} distorted photographs scored together (crops "
                      f"{r['crops']}, mode {r['mode']}, batch up to 8 crops as `score`), {r['end_to_end_rounds']} "
                      "interleaved round(s) after a warm-up"
                  + (f" (none for {', '.join(cold)}: it compiles nothing, and its first timed pass gives its "
                     "scores)" if cold else "") + ".", "",
                  "| choice | threads | median s | images/s | × vs ORT FP32 | max \\|Δ score\\| vs FP32 | of FP32's "
                  "score range | SRCC vs FP32 |", "|---|---|---|---|---|---|---|---|"]
        for k, v in e2e.items():
            lines.append(f"| {k} | {v.get('threads', r['threads'])} | {v['median_s']:.2f} | "
                         f"{v['images_per_s']:.3g} | {v['speedup']:.2f}× | {v['max_abs_score_vs_fp32']:.2g} | "
                         f"{_f(v.get('max_abs_score_vs_fp32_of_range'), '.2%')} | {_f(v['srcc_vs_fp32'], '.6f')} |")
    a = r.get("auto")
    if a:
        asked = "" if a.get("threads_asked") is None else f" (`--threads {a['threads_asked']}`: only that count timed)"
        lines += ["", f"`auto` on this CPU ({r.get('cpu_model', 'unknown')}){asked}: **{a['chosen']}**, self-benchmark "
                      f"{a['self_benchmark_s']:.1f} s (batch {a['batch']}, no cache). The line `score --backend auto` "
                      f"prints: `{a['line']}`. The default path (`score --bundle B`, ONNX Runtime) runs "
                      f"{a['default_threads']} thread(s): `{a['default_line']}`"
                  + (f" End to end, auto's pick is the row **{a['end_to_end_row']}**." if a.get("end_to_end_row")
                     else ""), "",
                  "| candidate | timed s per crop |", "|---|---|"]
        for c in a["candidates"]:
            note = "" if c["eligible"] else " (baseline only)"
            lines.append(f"| {c['option']}{note} | {_f(c['seconds_per_crop'], '.4f')} |")
        lines += [f"Left out of auto: {k}: {v}  " for k, v in a["skipped"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="batch of the per-graph timings")
    parser.add_argument("--rounds", type=int, default=5, help="per-graph rounds (0 skips the per-graph timings)")
    parser.add_argument("--images", type=int, default=4, help="images of the end-to-end run")
    parser.add_argument("--end-to-end-rounds", type=int, default=2, help="0 skips the end-to-end run")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between two timed calls")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--name", default=None)
    parser.add_argument("--no-auto", action="store_true", help="skip timing what `auto` picks")
    parser.add_argument("--auto-threads", type=int, default=None,
                        help="time auto's candidates at this thread count only (as `score --threads N`)")
    parser.add_argument("--end-to-end-choices", default=None,
                        help="comma-separated choices of the end-to-end run besides ONNX Runtime FP32 (default all)")
    parser.add_argument("--no-onnxruntime-warm-up", action="store_true",
                        help="no end-to-end warm-up pass for ONNX Runtime (it compiles nothing)")
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    chosen, skipped = choices(bundle)
    p = bundle.manifest.pipeline
    results: dict[str, Any] = {
        "model": bundle.manifest.model.name, "cpu_model": cpu_info.cpu_model(), "isa_flags": cpu_info.isa_flags(),
        "versions": versions(),
        "threads": args.threads, "batch": args.batch, "rounds": args.rounds, "crop_size": p.crop_size,
        "steps": p.steps, "crops": p.crops, "mode": p.mode, "choices": {k: list(v) for k, v in chosen.items()},
        "pause_s": args.pause, "skipped": skipped, "load_before": _load(), "graphs": {}}
    if args.rounds > 0:
        executors = {k: create_executor(b, bundle, BackendOptions(precision=p, threads=args.threads))
                     for k, (b, p) in chosen.items()}
        results["graphs"] = time_graphs(bundle, executors, args.rounds, args.batch, args.pause)
        del executors
    if not args.no_auto:
        results["auto"] = auto_pick(bundle, args.images, args.auto_threads)
    if args.end_to_end_rounds > 0:
        wanted = args.end_to_end_choices.split(",") if args.end_to_end_choices else list(chosen)
        unknown = sorted(set(wanted) - set(chosen))
        if unknown:
            raise SystemExit(f"--end-to-end-choices: {', '.join(unknown)} is not among {', '.join(chosen)}")
        runs = {k: (*chosen[k], args.threads) for k in [BASELINE, *wanted]}
        a = results.get("auto")
        if a is not None:
            same = [k for k, (b, plan, t) in runs.items()
                    if (b, parse_plan(plan).label(), t) == (a["backend"], parse_plan(a["precision"]).label(),
                                                           a["threads"])]
            a["end_to_end_row"] = same[0] if same else f"auto: {a['chosen']}"
            if not same:
                runs[a["end_to_end_row"]] = (a["backend"], a["precision"], a["threads"])
        images = evaluation_images(args.images)
        warm_ort = not args.no_onnxruntime_warm_up
        results |= {"images": args.images, "end_to_end_rounds": args.end_to_end_rounds,
                    "end_to_end": time_end_to_end(bundle, runs, images, args.end_to_end_rounds, args.pause,
                                                  lambda k: warm_ort or runs[k][0] != "onnxruntime")}
    results["load_after"] = _load()
    name = args.name or f"cpu_backends_{bundle.manifest.model.name}"
    report.publish(args.out, name, results, markdown(results))


if __name__ == "__main__":
    main()

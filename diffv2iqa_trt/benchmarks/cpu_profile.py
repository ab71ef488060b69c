"""Where a graph's time goes on the CPU: achieved GFLOP/s per choice against this machine's matrix peaks, and
OpenVINO's per-layer counters grouped by op type.

python -m diffv2iqa_trt.benchmarks.cpu_profile --bundle DIR [--graph restore_step] [--threads 2] [--batch 1]
       [--rounds 3] [--profile-runs 2] [--peak-n 2048] [--out benchmarks/results/cpu] [--name NAME]

1. Peaks: the best of a few n x n x n matrix products per engine and precision at `--threads` threads (torch.matmul
   in float32 and bfloat16; an OpenVINO MatMul compiled with the f32 and the bf16 hint; with OpenVINO, an INT8
   MatMul: uint8 activations times int8 weights, Q/DQ as in the int8-cpu variants): the machine's measured FP32,
   BF16 and INT8 matrix peaks are the best engine's figure of each precision (INT8: integer operations per second).
2. Choices: the graph on the toolkit's own executors (ONNX Runtime FP32, OpenVINO f32, OpenVINO bf16 where the CPU
   has BF16, the int8-cpu variant on ONNX Runtime and OpenVINO where the bundle holds it), the same feed,
   interleaved rounds (cpu_backends.time_graphs); GFLOP/s from the model's MAC count (roofline.stage_macs) and the
   fraction of the peak of the precision the choice computes its matrix products in.
3. Profile: the graph compiled by OpenVINO as the openvino backend compiles it (NUM_STREAMS 1, the thread count, the
   precision hint; the int8-cpu variant too, where the bundle holds it) plus PERF_COUNT; after a warm-up,
   `--profile-runs` inferences, each one's per-layer counters (request.get_profiling_info()) summed; layers grouped
   by node type and by the precision their kernel ran in (the suffix of exec_type, e.g. brgconv_avx512_BF16), with
   each group's share of the summed layer time. If every FLOP sat in the matrix op types (Convolution, MatMul,
   FullyConnected, ...), the graph's FLOPs over their time is the speed those kernels reached: the `matrix ops` line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import cpu_info
from ..bundle import Bundle, load_bundle
from ..contract import GRAPH_NAMES, RESTORE_STEP
from ..errors import ConfigError
from ..runtime.backends import BackendOptions, create_executor
from ..runtime.backends.openvino_backend import bf16_problem_here
from . import report
from .cpu_backends import STAGES, choices, time_graphs, versions
from .precision_cpu import graph_inputs
from .roofline import best_seconds

# Node types whose kernels are matrix products (OpenVINO CPU plugin names, after its graph transformations).
MATRIX_OPS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "MatMul", "FullyConnected",
                        "ScaledDotProductAttention", "GEMM", "Gemm", "BrgemmCPU"})
# exec_type suffixes -> precision names.
_PRECISIONS = {"FP32": "f32", "F32": "f32", "BF16": "bf16", "FP16": "f16", "F16": "f16", "I8": "i8", "U8": "u8",
               "I32": "i32", "I64": "i64", "U1": "u1", "BOOLEAN": "boolean"}
# The precision a choice's matrix products compute in, for its peak.
CHOICE_PEAK = {"onnxruntime fp32": "f32", "openvino f32": "f32", "openvino bf16": "bf16",
               "onnxruntime int8-cpu": "i8", "openvino int8-cpu": "i8"}
INT8_PROFILE = "int8-cpu"  # the profile of the int8-cpu variant (its float parts under the bf16 hint, or f32)


@dataclass(frozen=True)
class LayerRow:
    """One layer's counters from one inference: OpenVINO's ProfilingInfo as plain values."""

    node_name: str
    node_type: str
    exec_type: str
    status: str  # EXECUTED, NOT_RUN, OPTIMIZED_OUT
    real_ms: float
    cpu_ms: float


def kernel_precision(exec_type: str) -> str:
    """The precision a layer's kernel ran in, from the CPU plugin's exec_type (`<implementation>_<precision>`, e.g.
    brgconv_avx512_BF16 -> bf16, jit_avx512_FP32 -> f32); "n/a" when exec_type names none (undef, reshapes run as
    views)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return _PRECISIONS.get(tail, "n/a")


def group_layers(rows: Iterable[LayerRow]) -> list[dict[str, Any]]:
    """Executed layers grouped by node type, most time first: layer count, summed real time (ms), share of all the
    layers' time, and the time per kernel precision and per exec_type within the group."""
    groups: dict[str, dict[str, Any]] = {}
    total = 0.0
    for r in rows:
        if r.status != "EXECUTED":
            continue
        g = groups.setdefault(r.node_type, {"node_type": r.node_type, "layers": set(), "real_ms": 0.0,
                                            "by_precision": {}, "by_exec_type": {}})
        g["layers"].add(r.node_name)
        g["real_ms"] += r.real_ms
        p = kernel_precision(r.exec_type)
        g["by_precision"][p] = g["by_precision"].get(p, 0.0) + r.real_ms
        g["by_exec_type"][r.exec_type] = g["by_exec_type"].get(r.exec_type, 0.0) + r.real_ms
        total += r.real_ms
    out = []
    for g in sorted(groups.values(), key=lambda g: -g["real_ms"]):
        out.append({**g, "layers": len(g["layers"]), "share": g["real_ms"] / total if total else 0.0,
                    "matrix_op": g["node_type"] in MATRIX_OPS,
                    "by_precision": dict(sorted(g["by_precision"].items(), key=lambda kv: -kv[1])),
                    "by_exec_type": dict(sorted(g["by_exec_type"].items(), key=lambda kv: -kv[1]))})
    return out


def gflop_per_s(flop: float, seconds: float) -> float:
    return flop / seconds / 1e9


def matrix_summary(groups: Sequence[Mapping[str, Any]], flop: float, runs: int) -> dict[str, Any]:
    """The matrix op types' share of the layer time, their time per inference, and the graph's FLOPs over that time
    (the speed the matrix kernels reached if they did every FLOP, which they nearly do)."""
    total = sum(g["real_ms"] for g in groups)
    matrix = sum(g["real_ms"] for g in groups if g["matrix_op"])
    per_run_s = matrix / runs / 1e3
    return {"share": matrix / total if total else 0.0, "ms_per_run": matrix / runs,
            "gflop_per_s": gflop_per_s(flop, per_run_s) if per_run_s > 0 else None}


# ---------------------------------------------------------------------------------------------------------- peaks


def torch_peak(dtype: str, n: int, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` torch.matmul n x n x n products in float32 or bfloat16."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(getattr(torch, {"f32": "float32", "bf16": "bfloat16"}[dtype]))
        b = torch.randn(n, n, generator=g).to(a.dtype)
        return gflop_per_s(2 * n ** 3, best_seconds(lambda: torch.matmul(a, b), repeats))
    finally:
        torch.set_num_threads(before)


def openvino_peak(hint: str, n: int, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` n x n x n products of an OpenVINO MatMul compiled with the `hint` (f32 or
    bf16) inference precision."""
    ov = importlib.import_module("openvino")  # by name: OpenVINO ships no type information
    ops = importlib.import_module("openvino.opset13")
    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "gemm")
    compiled = ov.Core().compile_model(model, "CPU", {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return gflop_per_s(2 * n ** 3, best_seconds(lambda: request.infer({"a": x}, share_inputs=True), repeats))


def openvino_int8_peak(n: int, threads: int, repeats: int = 5) -> float:
    """Integer GOP/s of the best of `repeats` n x n x n products of an OpenVINO MatMul between uint8-quantised
    activations and int8-quantised weights (FakeQuantize on both sides, as OpenVINO reads the Q/DQ pairs of an
    int8-cpu variant), which its CPU plugin runs with integer kernels."""
    ov = importlib.import_module("openvino")
    ops = importlib.import_module("openvino.opset13")

    def fq(node: Any, low: float, high: float, levels: int) -> Any:
        lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    a = ops.parameter([n, n], np.float32, name="a")
    w = np.random.default_rng(0).uniform(-1, 1, (n, n)).astype(np.float32)
    model = ov.Model([ops.matmul(fq(a, 0.0, 4.0, 256), fq(ops.constant(w), -1.0, 1.0, 255), False, False)], [a],
                     "gemm_int8")
    compiled = ov.Core().compile_model(model, "CPU", {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).uniform(0, 4, (n, n)).astype(np.float32)
    return gflop_per_s(2 * n ** 3, best_seconds(lambda: request.infer({"a": x}, share_inputs=True), repeats))


def peaks(n: int, threads: int, openvino: bool, bf16: bool) -> dict[str, dict[str, float]]:
    """Measured GEMM GFLOP/s per precision and engine, and the best engine's as `peak` (i8: OpenVINO only)."""
    out: dict[str, dict[str, float]] = {}
    for p in ("f32", "bf16") if bf16 else ("f32",):
        engines = {"torch": torch_peak(p, n, threads)}
        if openvino:
            engines["openvino"] = openvino_peak(p, n, threads)
        out[p] = {**engines, "peak": max(engines.values())}
    if openvino:
        i8 = openvino_int8_peak(n, threads)
        out["i8"] = {"openvino": i8, "peak": i8}
    return out


# -------------------------------------------------------------------------------------------------------- profile


def profile_openvino(bundle: Bundle, graph: str, hint: str, feed: Sequence[np.ndarray], threads: int, runs: int,
                     variant: str = "fp32") -> tuple[list[LayerRow], list[float]]:
    """Every layer's counters summed over `runs` inferences (after a warm-up) of `graph`'s `variant` compiled with
    `hint` as the openvino backend compiles it, plus PERF_COUNT; and each inference's wall seconds."""
    ov = importlib.import_module("openvino")
    entry = bundle.graph(graph)
    core = ov.Core()
    model = core.read_model(bundle.onnx_path(graph, variant))
    names = list(entry.input_names)
    model.reshape({nm: ov.PartialShape(list(a.shape)) for nm, a in zip(names, feed, strict=True)})
    compiled = core.compile_model(model, "CPU", {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    inputs = dict(zip(names, feed, strict=True))
    request.infer(inputs)
    summed: dict[str, LayerRow] = {}
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        request.infer(inputs, share_inputs=True)
        walls.append(time.perf_counter() - t)
        for info in request.get_profiling_info():
            row = LayerRow(info.node_name, info.node_type, info.exec_type, str(info.status).rsplit(".", 1)[-1],
                           info.real_time.total_seconds() * 1e3, info.cpu_time.total_seconds() * 1e3)
            old = summed.get(row.node_name)
            summed[row.node_name] = row if old is None else LayerRow(
                row.node_name, row.node_type, row.exec_type, row.status, old.real_ms + row.real_ms,
                old.cpu_ms + row.cpu_ms)
    return list(summed.values()), walls


def graph_flop(bundle: Bundle, graph: str, batch: int) -> float | None:
    """FLOPs (2 x MACs) of one call of `graph` at the bundle's crop size (None without torch)."""
    from .roofline import stage_macs

    m = bundle.manifest
    macs = stage_macs(dict(m.model.config), m.pipeline.steps)
    if macs is None:
        return None
    return 2.0 * batch * macs[STAGES[graph]] / (m.pipeline.steps if graph == RESTORE_STEP else 1)


# ------------------------------------------------------------------------------------------------------- markdown


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(r: Mapping[str, Any], top: int = 12) -> str:
    g = r["graph"]
    lines = [f"# Where {g}'s time goes on the CPU, model {r['model']}", "", "<!--header-->",
             f"CPU: {r['cpu_model']}  ", f"ISA flags: {' '.join(r['isa_flags']) or 'unknown'}  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}  ",
             f"Load average before / after: {' '.join(f'{x:.2f}' for x in r['load_before'])} / "
             f"{' '.join(f'{x:.2f}' for x in r['load_after'])}  ",
             f"{r['threads']} threads, batch {r['batch']}, crop {r['crop_size']}²; one {g} call is "
             f"{r['gflop']:.1f} GFLOP (2 × MACs of the model summary).", "",
             f"## Matrix peaks ({r['peak_n']}³ matrix products, best of 5)", "",
             "| precision | torch.matmul GFLOP/s | OpenVINO MatMul GFLOP/s | peak |", "|---|---|---|---|"]
    for p, v in r["peaks"].items():
        lines.append(f"| {p} | {v.get('torch', float('nan')):.1f} | {v.get('openvino', float('nan')):.1f} | "
                     f"**{v['peak']:.1f}** |")
    lines += ["", f"## {g} per choice (median of {r['rounds']} interleaved rounds, the toolkit's executors)", "",
              "| choice | median ms | × vs ORT FP32 | GFLOP/s | of the peak |", "|---|---|---|---|---|"]
    for k, v in r["choices"].items():
        lines.append(f"| {k} | {1e3 * v['median_s']:.1f} | {v['speedup']:.2f}× | {v['gflop_per_s']:.1f} | "
                     f"{_pct(v['of_peak'])} of {v['peak_precision']} |")
    for hint, prof in r["profiles"].items():
        m = prof["matrix_ops"]
        peak = prof.get("peak_precision", hint)
        lines += ["", f"## OpenVINO {hint} profile by op type ({prof['runs']} runs, per-layer counters; "
                      f"median wall {1e3 * prof['wall_s']:.0f} ms, layers sum to {prof['layer_ms_per_run']:.0f} ms "
                      "per run)", "",
                  f"Matrix op types: {_pct(m['share'])} of the layer time, {m['ms_per_run']:.1f} ms per run: all "
                  f"of the graph's FLOPs in that time would be {m['gflop_per_s']:.1f} GFLOP/s "
                  f"({_pct(m['gflop_per_s'] / r['peaks'][peak]['peak'])} of the {peak} peak).", "",
                  "| node type | layers | ms per run | share | kernel precision (share of the type's time) | "
                  "main kernels |", "|---|---|---|---|---|---|"]
        rows = prof["by_op_type"]
        for o in rows[:top]:
            precs = ", ".join(f"{p} {100 * t / o['real_ms']:.0f} %" for p, t in o["by_precision"].items())
            kernels = ", ".join(list(o["by_exec_type"])[:2])
            lines.append(f"| {o['node_type']}{' (matrix)' if o['matrix_op'] else ''} | {o['layers']} | "
                         f"{o['real_ms'] / prof['runs']:.1f} | {_pct(o['share'])} | {precs} | {kernels} |")
        rest = rows[top:]
        if rest:
            lines.append(f"| {len(rest)} other types | {sum(o['layers'] for o in rest)} | "
                         f"{sum(o['real_ms'] for o in rest) / prof['runs']:.1f} | "
                         f"{_pct(sum(o['share'] for o in rest))} | | |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------- main


def _load() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def run(bundle: Bundle, graph: str, threads: int, batch: int, rounds: int, profile_runs: int, peak_n: int
        ) -> dict[str, Any]:
    load_before = _load()
    openvino = importlib.util.find_spec("openvino") is not None
    bf16 = openvino and bf16_problem_here() is None
    flop = graph_flop(bundle, graph, batch)
    if flop is None:
        raise ConfigError("cpu_profile needs the model summary's MAC count: install torch (pip install "
                          "'diffv2iqa-trt[torch]') to run it")
    measured_peaks = peaks(peak_n, threads, openvino, bf16)
    chosen, skipped = choices(bundle)
    if "i8" not in measured_peaks:  # no INT8 peak to compare with (it needs OpenVINO)
        chosen.pop("onnxruntime int8-cpu", None)
    executors = {k: create_executor(b, bundle, BackendOptions(precision=p, threads=threads))
                 for k, (b, p) in chosen.items()}
    timed = time_graphs(bundle, executors, rounds, batch, graphs=(graph,))[graph]
    del executors
    per_choice = {}
    for k, v in timed.items():
        p = CHOICE_PEAK[k]
        per_choice[k] = {**v, "peak_precision": p, "of_peak": v["gflop_per_s"] / measured_peaks[p]["peak"]}
    feed = list(graph_inputs(bundle, graph, batch).values())
    profiles = {}
    runs = [(hint, hint, "fp32") for hint in (("bf16", "f32") if bf16 else ("f32",))]
    if "int8-cpu" in bundle.precisions(graph):
        runs.append((INT8_PROFILE, "bf16" if bf16 else "f32", "int8-cpu"))
    for label, hint, variant in runs:
        rows, walls = profile_openvino(bundle, graph, hint, feed, threads, profile_runs, variant)
        groups = group_layers(rows)
        layer_ms = sum(o["real_ms"] for o in groups)
        profiles[label] = {"runs": profile_runs, "peak_precision": "i8" if variant == "int8-cpu" else hint,
                          "wall_s": statistics.median(walls), "walls_s": walls,
                          "layer_ms_per_run": layer_ms / profile_runs, "by_op_type": groups,
                          "matrix_ops": matrix_summary(groups, flop, profile_runs),
                          "top_layers": [{"node_name": r.node_name, "node_type": r.node_type,
                                          "exec_type": r.exec_type, "ms_per_run": r.real_ms / profile_runs}
                                         for r in sorted(rows, key=lambda r: -r.real_ms)[:15]]}
    pipeline = bundle.manifest.pipeline
    return {"model": bundle.manifest.model.name, "graph": graph, "cpu_model": cpu_info.cpu_model(),
            "isa_flags": cpu_info.isa_flags(), "versions": versions(), "threads": threads, "batch": batch,
            "rounds": rounds, "crop_size": pipeline.crop_size, "steps": pipeline.steps, "gflop": flop / 1e9,
            "peak_n": peak_n, "peaks": measured_peaks, "choices": per_choice, "skipped": skipped, "profiles": profiles,
            "load_before": load_before, "load_after": _load()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--graph", choices=GRAPH_NAMES, default=RESTORE_STEP)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds of the choices")
    parser.add_argument("--profile-runs", type=int, default=2, help="profiled OpenVINO inferences per hint")
    parser.add_argument("--peak-n", type=int, default=2048, help="size of the peak's square matrix products")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    results = run(bundle, args.graph, args.threads, args.batch, args.rounds, args.profile_runs, args.peak_n)
    name = args.name or f"cpu_profile_{bundle.manifest.model.name}_{args.graph}"
    report.publish(args.out, name, results, markdown(results))


if __name__ == "__main__":
    main()

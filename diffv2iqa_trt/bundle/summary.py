"""The human-oriented digest of a bundle that `inspect` prints: what it scores with and what it holds."""

from __future__ import annotations

from typing import Any

from ..contract import GRAPH_NAMES, TensorSpec
from .manifest import EngineEntry
from .store import Bundle


def _tensor_text(t: TensorSpec) -> str:
    return f"{t.name}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]"


def _engine_summary(bundle: Bundle, e: EngineEntry) -> dict[str, Any]:
    census = e.census
    verdict = census.get("verdict") or {}
    size = bundle.manifest.files[e.file].bytes if e.file in bundle.manifest.files else None
    return {
        "file": e.file,
        "built": f"TensorRT {e.tensorrt}, {e.gpu} (sm {e.sm})"
                 + (", version-compatible" if e.version_compatible else ""),
        "MiB": None if size is None else round(size / 2**20, 2),
        "device_memory_MiB": round(e.device_memory_bytes / 2**20, 1),
        "build_seconds": e.build_seconds,
        "census": {"compute_layers": census.get("compute_layers"),
                   "fp32_share": verdict.get("fp32_share"), "fp32_share_onnx": verdict.get("fp32_share_onnx"),
                   "int8_share": verdict.get("int8_share"), "int8_share_onnx": verdict.get("int8_share_onnx"),
                   "verdict": "ok" if verdict.get("ok") else "; ".join(verdict.get("problems") or ["not judged"])},
    }


def engine_rows(bundle: Bundle) -> list[tuple[str, ...]]:
    """One row per engine for the CLI's table: graph, precision, MiB, build seconds, FP32 and INT8 shares of compute
    layers (engine, and what the ONNX asks for), census verdict."""
    rows: list[tuple[str, ...]] = []
    for name in GRAPH_NAMES:
        g = bundle.manifest.graphs[name]
        for prec in g.engine_precisions:
            s = _engine_summary(bundle, g.engines[prec])
            c = s["census"]

            def pct(key: str, c: dict[str, Any] = c) -> str:
                return "-" if c.get(key) is None else f"{100 * float(c[key]):.1f} %"

            rows.append((name, prec, f"{s['MiB']}", f"{s['build_seconds']}",
                         f"{pct('fp32_share')} ({pct('fp32_share_onnx')})",
                         f"{pct('int8_share')} ({pct('int8_share_onnx')})", c["verdict"]))
    return rows


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    p = m.pipeline
    warnings = [] if m.model.trained else ["UNTRAINED: random weights, scores are not quality ratings"]
    graphs: dict[str, Any] = {}
    for name in GRAPH_NAMES:
        g = m.graphs[name]
        prof = g.profiles
        graphs[name] = {
            "inputs": [_tensor_text(t) for t in g.inputs],
            "outputs": [_tensor_text(t) for t in g.outputs],
            "profiles": {inp: f"min {list(prof.min[inp])} opt {list(prof.opt[inp])} max {list(prof.max[inp])}"
                         for inp in prof.min},
            "onnx": {prec: g.variants[prec].file for prec in g.precisions},
            "engines": {prec: _engine_summary(bundle, g.engines[prec]) for prec in g.engine_precisions},
        }
    return {
        "path": str(bundle.root),
        "model": m.model.name,
        "trained": m.model.trained,
        "description": m.model.description,
        "checkpoint_sha256": m.model.checkpoint_sha256,
        "created": m.created,
        "toolkit_version": m.toolkit_version,
        "warnings": warnings,
        "pipeline": {
            "steps": p.steps,
            "snapshots": f"y0 after step 0, y_t1 after step {p.capture_t1}, y_t2 after step {p.capture_t2}",
            "crops": p.crops,
            "mode": p.mode,
            "crop_size": p.crop_size,
            "size_multiple": p.size_multiple,
            "fusion": f"{p.fusion.vcg_weight:g} * vcg + {p.fusion.vda_weight:g} * vda",
            "noise": f"{p.noise.generator}, seed {p.noise.seed}",
            "normalisation": p.normalisation.formula,
            "uint8_roundtrip": p.uint8_roundtrip,
        },
        "graphs": graphs,
        "files": {"count": len(m.files), "bytes": sum(f.bytes for f in m.files.values())},
        "environment": dict(m.environment),
        "lint": m.lint,
        "parity": m.parity,
        "precision": None if m.precision is None else {
            "plan": dict(m.precision.plan), "requested": m.precision.requested,
            "plan_scores": m.precision.report.get("plan_scores"),
            "cpu_variants": m.precision.report.get("cpu_variants"),
            "candidates": {f"{row[0]} {row[1]}": f"tensor max |Δ| {row[2]}, score max |Δ| {row[4]} ({row[5]} % of "
                                                  f"range), SRCC {row[6]}: {row[7]}"
                           for row in precision_rows(m.precision.report)}},
    }


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def precision_rows(report: Any) -> list[list[str]]:
    """One row per measured candidate variant of a build's precision report: graph, recipe, tensor max |Δ| and
    cosine on recorded inputs, end-to-end max |Δscore| (absolute and % of the FP32 range), SRCC, budget verdict."""
    rows = []
    for graph, cands in ((report or {}).get("candidates") or {}).items():
        for c in cands:
            scores = c.get("scores") or {}
            frac = scores.get("max_abs_fraction")
            verdict = ("over: " + "; ".join(c["over_budget"])) if c.get("over_budget") else (
                "within" if scores else "not measured")
            rows.append([graph, str(c.get("recipe")), _num(c["tensor"]["max_abs"], ".3g"),
                         _num(c["tensor"]["cosine"], ".6f"), _num(scores.get("max_abs"), ".3g"),
                         _num(100 * frac if isinstance(frac, (int, float)) else None, ".2f"),
                         _num(scores.get("srcc"), ".5f"), verdict])
    return rows

"""The human-oriented digest of a bundle that `inspect` prints: what it scores with and what it holds."""

from __future__ import annotations

from typing import Any

from ..contract import GRAPH_NAMES, TensorSpec
from .store import Bundle


def _tensor_text(t: TensorSpec) -> str:
    return f"{t.name}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]"


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
            "engines": {prec: f"{e.file} (TensorRT {e.tensorrt}, {e.gpu}, sm {e.sm})"
                        for prec in g.engine_precisions for e in [g.engines[prec]]},
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
    }

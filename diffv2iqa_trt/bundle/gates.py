"""Parity gates: how close each precision of a bundle must score to the torch fp32 reference.

`build` writes them into the manifest (`parity.gates`) and `parity` enforces them, so they belong to the bundle.
Score units: the demo model scores on the [0, 1] pseudo-MOS scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# fp32 end to end cannot be held much below 1e-4: the snapshots pass through the uint8 round trip (the authors' PNG
# save and load), so a 1e-6 difference in the restored image flips some pixels by a whole quantisation step, and
# the trained demo model's score then moves by ~1e-4 (tests/test_parity_gates.py measures this on the torch
# reference alone). The fp32 score gate leaves room for that; `max_graph_abs` holds each graph, fed identical
# inputs, to 1e-4.
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-3, "min_srcc": 0.999, "max_rank_flip_fraction": 0.002, "max_graph_abs": 1e-4},
    "fp16": {"max_abs": 1e-2, "min_srcc": 0.99, "max_rank_flip_fraction": 0.01},
    "int8": {"max_abs": 3e-2, "min_srcc": 0.98, "max_rank_flip_fraction": 0.03},
    "int8-cpu": {"max_abs": 3e-2, "min_srcc": 0.98, "max_rank_flip_fraction": 0.03},
}


def gates_for(precision: str, parity_doc: Mapping[str, Any] | None) -> dict[str, float]:
    """The defaults for `precision`, overridden by the manifest's `parity.gates.<precision>`."""
    stored = ((parity_doc or {}).get("gates") or {}).get(precision, {})
    return {**DEFAULT_GATES.get(precision, DEFAULT_GATES["int8"]), **stored}


def gate_failures(metrics: Mapping[str, Any], gates: Mapping[str, float], n: int,
                  graph_errors: Mapping[str, float] | None = None) -> list[str]:
    """Why a variant fails its gates (empty when it passes). `metrics`: abs_error.max, srcc, rank_flips over `n`
    images; `graph_errors`: max |Δ| per graph when both backends got identical inputs."""
    failures = []
    if graph_errors is not None and "max_graph_abs" in gates:
        failures += [f"{g} graph max |Δ| {e:.3g} > gate {gates['max_graph_abs']:g}"
                     for g, e in graph_errors.items() if not e <= gates["max_graph_abs"]]
    if not metrics["abs_error"]["max"] <= gates["max_abs"]:  # NaN fails too
        failures.append(f"max |Δ| {metrics['abs_error']['max']:.3g} > gate {gates['max_abs']:g}")
    if not metrics["srcc"] >= gates["min_srcc"]:
        failures.append(f"SRCC {metrics['srcc']:.6f} < gate {gates['min_srcc']:g}")
    pairs = n * (n - 1) / 2
    if pairs and metrics["rank_flips"] / pairs > gates["max_rank_flip_fraction"]:
        failures.append(f"{metrics['rank_flips']} rank flips of {int(pairs)} pairs > gate "
                        f"{gates['max_rank_flip_fraction']:g}")
    return failures

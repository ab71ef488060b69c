"""How far a precision variant moves the model: per-graph tensor errors on recorded inputs, and end-to-end score
deltas of a whole plan on an evaluation set, against the FP32 graphs, checked against an accuracy budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import CalibrationSet
from ..contract import GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_OUTPUT, RESTORE_STEP, X
from ..errors import ConfigError
from ..metrics import abs_error_summary, krcc, plcc, rank_flips, srcc
from ..runtime.backends.onnxruntime_backend import OnnxRuntimeExecutor
from ..runtime.crops import WorkUnit
from ..runtime.executor import Executor
from ..runtime.pipeline import Pipeline, PipelineSpec


@dataclass(frozen=True)
class Budget:
    """The accuracy a reduced plan must keep against the FP32 scores (defaults from the precision issue)."""

    min_srcc: float = 0.995
    max_abs_fraction: float = 0.02  # of the FP32 scores' range on the evaluation set

    def __post_init__(self) -> None:
        if not 0 < self.min_srcc <= 1 or not 0 < self.max_abs_fraction <= 1:
            raise ConfigError(f"the budget needs 0 < --min-srcc <= 1 and 0 < --max-delta <= 1, got {self.min_srcc} "
                              f"and {self.max_abs_fraction}")

    def failures(self, deltas: Mapping[str, Any]) -> list[str]:
        out = []
        if not deltas["srcc"] >= self.min_srcc:  # NaN fails
            out.append(f"SRCC {deltas['srcc']:.5f} < {self.min_srcc}")
        if not deltas["max_abs_fraction"] <= self.max_abs_fraction:
            out.append(f"max |Δ| {deltas['max_abs']:.3g} = {100 * deltas['max_abs_fraction']:.2f} % of the score "
                       f"range > {100 * self.max_abs_fraction:g} %")
        return out

    def to_dict(self) -> dict[str, float]:
        return {"min_srcc": self.min_srcc, "max_abs_fraction": self.max_abs_fraction}


def score_deltas(reference: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    span = float(np.ptp(reference)) if reference.size else 0.0
    err = abs_error_summary(reference, scores)
    return {"images": int(reference.size), "max_abs": err["max"], "mean_abs": err["mean"], "p99_abs": err["p99"],
            "max_abs_fraction": err["max"] / span if span > 0 else float("inf"),
            "srcc": srcc(reference, scores), "plcc": plcc(reference, scores), "krcc": krcc(reference, scores),
            "rank_flips": rank_flips(reference, scores)}


def _cpu_sessions(paths: Sequence[Path], threads: int | None) -> list[Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths]


def tensor_errors(fp32: Path, variant: Path, graph: str, cs: CalibrationSet, *, batch_size: int = 8,
                  max_batches: int = 4, threads: int | None = None) -> dict[str, float]:
    """Max |Δ|, mean |Δ| and cosine similarity of the graph's output, variant against FP32, on recorded inputs
    (batches spread over the set: for restore_step, over the steps)."""
    sessions = _cpu_sessions((fp32, variant), threads)
    feeds = list(cs.feeds(graph, batch_size))
    feeds = feeds[:: max(1, len(feeds) // max_batches)][:max_batches]
    out = GRAPH_OUTPUTS[graph][0]
    a, b = ([np.asarray(s.run([out], f)[0], np.float64).ravel() for f in feeds] for s in sessions)
    ref, got = np.concatenate(list(a)), np.concatenate(list(b))
    d = np.abs(ref - got)
    cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))) if ref.any() and got.any() else 1.0
    # Rows: one score per row for the branches; restore_step's output is an image per row (its batch axis).
    rows = ref.size if graph != RESTORE_STEP else sum(f[X].shape[0] for f in feeds)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "cosine": cos,
            "reference_max_abs": float(np.abs(ref).max()), "rows": int(rows)}


def step_errors(fp32: Path, variant: Path, cs: CalibrationSet, *, rows_per_step: int = 4,
                threads: int | None = None) -> list[dict[str, float]]:
    """restore_step's output error per loop step (first step run first), on up to `rows_per_step` recorded rows of
    each step: does one set of INT8 scales fit the noisy first steps and the nearly clean last ones? `rel` is the
    max |Δ| over the step's largest |y_next|."""
    sessions = _cpu_sessions((fp32, variant), threads)
    out = []
    for step in sorted({int(s) for s in cs.step}, reverse=True):
        rows = np.flatnonzero(cs.step == step)
        rows = rows[cs.z_index[rows] == cs.z_index[rows[0]]][:rows_per_step]  # one z per call
        feed = cs.feed(RESTORE_STEP, rows)
        ref, got = (np.asarray(s.run([RESTORE_OUTPUT], feed)[0], np.float64) for s in sessions)
        err = float(np.max(np.abs(ref - got)))
        out.append({"step": step, "max_abs": err, "rel": err / max(float(np.max(np.abs(ref))), 1e-12)})
    return out


@dataclass
class EvalSet:
    """Evaluation images prepared once (crops cut, normalised) and scored by any plan of ONNX files."""

    spec: PipelineSpec
    prepared: Sequence[Sequence[WorkUnit]]
    io: Mapping[str, Any]  # graph -> (inputs, outputs) tensor specs from the manifest
    batch_size: int = 8
    threads: int | None = None

    def scores(self, paths: Mapping[str, Path]) -> np.ndarray:
        """Fused scores of every evaluation image with the graphs in `paths` (graph -> ONNX file)."""
        executor = OnnxRuntimeExecutor(
            {g: paths[g] for g in GRAPH_NAMES}, {g: [t.name for t in self.io[g][0]] for g in GRAPH_NAMES},
            {g: GRAPH_OUTPUTS[g][0] for g in GRAPH_NAMES}, device="cpu", threads=self.threads,
            io={g: self.io[g] for g in GRAPH_NAMES})
        return self.scores_with(executor)

    def scores_with(self, executor: Executor) -> np.ndarray:
        """Fused scores of every evaluation image on `executor` (any backend's, or a wrapper of one)."""
        results = Pipeline(executor, self.spec, self.batch_size).score_prepared(self.prepared)
        return np.array([r.score for r in results], dtype=np.float64)

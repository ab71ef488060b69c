"""BF16 as a measured precision: how far OpenVINO's bf16 hint moves the bundle's scores, recorded in the manifest;
with it, the bundle's int8-cpu variants as OpenVINO runs them.

bf16 has no ONNX variant of its own: OpenVINO runs the bundle's FP32 graphs with BF16 matrix kernels (precision_plan
HINTS). Its accuracy is measured like an FP16/INT8 variant's, against ONNX Runtime FP32 on an evaluation set:

1. the evaluation set is scored with ONNX Runtime FP32 (the reference), and a few calls of each graph are recorded on
   the way (restore_step's spread over the loop steps);
2. per graph: the tensor errors of OpenVINO bf16 on those recorded inputs, and the end-to-end score deltas of the plan
   that runs only that graph in bf16 (the others on the reference); the same for the graph's int8-cpu variant on
   OpenVINO where the bundle holds one (`build --precision GRAPH=int8-cpu` made it, from the toolkit's calibration
   set): OpenVINO's integer kernels round differently from ONNX Runtime's, so the variant's own record (measured on
   ONNX Runtime) does not stand for them;
3. the OpenVINO plan: search.choose over (int8-cpu, bf16, fp32) per graph, so the plan holds the budget as a whole
   (the lowest precision each graph keeps it with, raised where the combination breaks it);
4. the record goes into `precision.report["bf16"]` of a new bundle (the files are copied unchanged): the per-graph
   measurements, the plan and its score deltas, the budget, and the machine that measured it (CPU model, ISA flags,
   OpenVINO version), since BF16 kernels differ between AVX-512 BF16 and AMX.

`bf16_record(bundle)` reads it back; the runtime's `auto` offers bf16 only with a record inside the budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import cpu_info
from ..bundle import Bundle, write_bundle
from ..bundle.manifest import PrecisionSection
from ..contract import GRAPH_NAMES, GRAPH_OUTPUTS, RESTORE_STEP
from ..errors import ConfigError
from ..precision_plan import BF16, INT8, INT8_CPU, PrecisionPlan
from ..runtime.backends import BackendOptions, create_executor
from ..runtime.executor import Executor
from .evaluate import Budget, EvalSet, score_deltas
from .search import FP32_CANDIDATE, Candidate, choose

REPORT_KEY = BF16  # precision.report[REPORT_KEY]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Bf16Record:
    """The bf16 measurement a bundle holds: the plan (graph -> bf16 or fp32), its end-to-end score deltas against
    FP32, the budget it was held to, and where it was measured."""

    plan: Mapping[str, str]
    plan_scores: Mapping[str, Any]
    over_budget: Sequence[str]
    budget: Budget
    measured: str  # ISO date
    cpu: Mapping[str, Any]  # model, isa_flags
    graphs: Mapping[str, Any]
    int8: Mapping[str, Any] = field(default_factory=dict)  # graph -> its int8-cpu variant on OpenVINO, where measured

    @property
    def within_budget(self) -> bool:
        return not self.over_budget and any(self.plan[g] != "fp32" for g in GRAPH_NAMES)

    @property
    def plan_label(self) -> str:
        return PrecisionPlan(dict(self.plan)).label()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bf16Record:
        b = d.get("budget") or {}
        return cls(plan=dict(d["plan"]), plan_scores=dict(d.get("plan_scores") or {}),
                   over_budget=tuple(d.get("over_budget") or ()),
                   budget=Budget(float(b.get("min_srcc", Budget.min_srcc)),
                                 float(b.get("max_abs_fraction", Budget.max_abs_fraction))),
                   measured=str(d.get("measured", "")), cpu=dict(d.get("cpu") or {}),
                   graphs=dict(d.get("graphs") or {}), int8=dict(d.get("int8") or {}))


def bf16_record(bundle: Bundle) -> Bf16Record | None:
    """The bundle's bf16 record, or None when bf16 was never measured on it."""
    chosen = bundle.manifest.precision
    doc = None if chosen is None else chosen.report.get(REPORT_KEY)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("plan"), Mapping):
        return None
    return Bf16Record.from_dict(doc)


def bundle_budget(bundle: Bundle) -> Budget:
    """The budget the bundle's variants were held to (its precision report), else the default."""
    chosen = bundle.manifest.precision
    b = None if chosen is None else chosen.report.get("budget")
    if isinstance(b, Mapping) and "min_srcc" in b and "max_abs_fraction" in b:
        return Budget(float(b["min_srcc"]), float(b["max_abs_fraction"]))
    return Budget()


def bf16_note(bundle: Bundle, plan: PrecisionPlan, backend: str | None = None) -> str | None:
    """What a user running `plan` should know about its accuracy: bf16 graphs unmeasured, or over budget; on the
    openvino `backend`, int8 graphs whose variant OpenVINO's run was never measured (their record is ONNX
    Runtime's). None when the bundle's record covers the plan and keeps its budget."""
    fix = (f"measure it with `diffv2iqa-trt build --precision bf16 --from-bundle {bundle.root} --eval-images DIR "
           f"--out OUT`")
    record = bf16_record(bundle)
    notes = []
    if any(plan[g] == BF16 for g in GRAPH_NAMES):
        extra = [g for g in GRAPH_NAMES if plan[g] == BF16 and (record is None or record.plan[g] != BF16)]
        if record is None:
            notes.append(f"bf16 is not measured on this bundle: its scores' distance from fp32 is unknown; {fix}")
        elif record.over_budget or extra:
            why = "; ".join(record.over_budget) if record.over_budget else (
                f"{', '.join(extra)} in bf16 broke the budget when measured")
            notes.append(f"bf16 on this bundle is over its accuracy budget ({why}); the measured bf16 plan is "
                         f"{record.plan_label}")
    if backend == "openvino":
        measured = set() if record is None else set(record.int8)
        unmeasured = [g for g in GRAPH_NAMES if plan[g] in (INT8, INT8_CPU) and g not in measured]
        if unmeasured:
            notes.append(f"int8-cpu on OpenVINO is not measured on this bundle for {', '.join(unmeasured)} (the "
                         f"variant's recorded accuracy is ONNX Runtime's run of it); {fix}")
    return "; ".join(notes) or None


class _Recorder:
    """An executor that passes every call to `inner` and keeps up to `keep` calls of each graph (arguments and
    output as host arrays): restore_step's every `stride`-th call, so the kept calls spread over the loop steps."""

    def __init__(self, inner: Executor, keep: int, stride: int) -> None:
        self.inner, self.keep, self.stride = inner, keep, max(1, stride)
        self.name = inner.name
        self.calls: dict[str, list[tuple[list[np.ndarray], np.ndarray]]] = {g: [] for g in GRAPH_NAMES}
        self._seen = dict.fromkeys(GRAPH_NAMES, 0)

    def upload(self, array: np.ndarray) -> Any:
        return self.inner.upload(array)

    def download(self, handle: Any) -> np.ndarray:
        return self.inner.download(handle)

    def _call(self, graph: str, *args: Any) -> Any:
        out = getattr(self.inner, graph)(*args)
        n = self._seen[graph]
        self._seen[graph] += 1
        stride = self.stride if graph == RESTORE_STEP else 1
        if n % stride == 0 and len(self.calls[graph]) < self.keep:
            self.calls[graph].append(([np.array(self.inner.download(a)) for a in args],
                                      np.array(self.inner.download(out))))
        return out

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        return self._call(RESTORE_STEP, x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._call("vcg", x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._call("vda", x, y0, yt1, yt2)


class _Mixed:
    """Each graph on the executor its plan names (`executors`: precision -> executor; fp32 is the reference)."""

    def __init__(self, plan: Mapping[str, str], executors: Mapping[str, Executor]) -> None:
        self.name = "mixed"
        self._by = {g: executors[plan[g]] for g in GRAPH_NAMES}

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def download(self, handle: Any) -> np.ndarray:
        return handle if isinstance(handle, np.ndarray) else np.asarray(handle)

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        return self._by[RESTORE_STEP].restore_step(x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._by["vcg"].vcg(x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        return self._by["vda"].vda(x, y0, yt1, yt2)


def _tensor_errors(executor: Executor, graph: str, calls: Sequence[tuple[list[np.ndarray], np.ndarray]]
                   ) -> dict[str, float]:
    """The keys of evaluate.tensor_errors, for `executor`'s graph against the recorded FP32 outputs."""
    ref = np.concatenate([np.asarray(out, np.float64).ravel() for _, out in calls])
    got = np.concatenate([np.asarray(executor.download(getattr(executor, graph)(*args)), np.float64).ravel()
                          for args, _ in calls])
    d = np.abs(ref - got)
    cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))) if ref.any() and got.any() else 1.0
    rows = sum(int(args[0].shape[0]) for args, _ in calls)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "cosine": cos,
            "reference_max_abs": float(np.abs(ref).max()), "rows": rows}


def measure_bf16(bundle: Bundle, evaluation: EvalSet, *, budget: Budget | None = None, keep_calls: int = 4,
                 threads: int | None = None, say: Say | None = None) -> dict[str, Any]:
    """The bf16 record of `bundle` measured on `evaluation` (see the module docstring); a ConfigError, with the
    reason, on a CPU without BF16 instructions."""
    say = say or (lambda _m: None)
    budget = budget or bundle_budget(bundle)
    fp32_names = {g: bundle.onnx_path(g, "fp32") for g in GRAPH_NAMES}
    from ..runtime.backends.onnxruntime_backend import OnnxRuntimeExecutor
    from ..runtime.backends.openvino_backend import ov_version

    reference = OnnxRuntimeExecutor(
        fp32_names, {g: [t.name for t in evaluation.io[g][0]] for g in GRAPH_NAMES},
        {g: GRAPH_OUTPUTS[g][0] for g in GRAPH_NAMES}, device="cpu", threads=threads,
        io={g: evaluation.io[g] for g in GRAPH_NAMES})
    executors: dict[str, Executor] = {
        "fp32": reference, BF16: create_executor("openvino", bundle, BackendOptions(precision=BF16, threads=threads))}
    quantised = [g for g in GRAPH_NAMES if INT8_CPU in bundle.precisions(g)]
    if quantised:
        int8_plan = PrecisionPlan({g: INT8_CPU if g in quantised else "fp32" for g in GRAPH_NAMES})
        executors[INT8_CPU] = create_executor("openvino", bundle, BackendOptions(precision=int8_plan.label(),
                                                                                 threads=threads))
    say("scoring the evaluation set with ONNX Runtime FP32")
    recorder = _Recorder(reference, keep_calls, max(1, evaluation.spec.steps // keep_calls))
    ref_scores = evaluation.scores_with(recorder)

    def deltas(plan: Mapping[str, str]) -> dict[str, Any]:
        return score_deltas(ref_scores, evaluation.scores_with(_Mixed(plan, executors)))

    def alone(g: str, precision: str) -> dict[str, Any]:
        say(f"{g}: measuring {precision} on OpenVINO")
        scores = deltas({h: precision if h == g else "fp32" for h in GRAPH_NAMES})
        return {"tensor": _tensor_errors(executors[precision], g, recorder.calls[g]), "scores": scores,
                "over_budget": budget.failures(scores)}

    graphs: dict[str, Any] = {}
    int8: dict[str, Any] = {}
    cands: dict[str, list[Candidate]] = {}
    for g in GRAPH_NAMES:
        if not recorder.calls[g]:  # a branch with fusion weight 0: the pipeline never runs it, bf16 cannot matter
            graphs[g] = {"tensor": None, "scores": None, "over_budget": [],
                         "not_run": "the pipeline never calls this graph (its fusion weight is 0)"}
            cands[g] = [Candidate(FP32_CANDIDATE, "fp32")]
            continue
        cands[g] = []
        if g in quantised:
            int8[g] = alone(g, INT8_CPU)
            int8[g]["hint"] = executors[INT8_CPU].inference_precision(g)  # type: ignore[attr-defined]
            cands[g].append(Candidate(INT8_CPU, INT8_CPU, int8[g]["scores"], int8[g]["over_budget"]))
        graphs[g] = alone(g, BF16)
        cands[g] += [Candidate(BF16, BF16, graphs[g]["scores"], graphs[g]["over_budget"]),
                     Candidate(FP32_CANDIDATE, "fp32")]

    def measure_plan(plan: Mapping[str, Candidate]) -> Mapping[str, Any]:
        return deltas({g: c.precision for g, c in plan.items()})

    say("OpenVINO plan: measuring end to end")
    result = choose(cands, budget, measure_plan)
    plan = {g: c.precision for g, c in result.chosen.items()}
    return {"precision": BF16, "backend": "openvino", "openvino": ov_version(), "cpu": cpu_info.identity(),
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget": budget.to_dict(),
            "evaluation": {"images": len(evaluation.prepared), "reference": "onnxruntime fp32"},
            "graphs": graphs, "int8": int8, "plan": plan, "plan_scores": dict(result.plan_deltas),
            "over_budget": budget.failures(result.plan_deltas), "search": result.rounds}


def with_record(bundle: Bundle, record: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's manifest document with `record` as its bf16 record (a bundle without a precision section gets
    one that keeps its fp32 plan)."""
    doc = bundle.manifest.to_dict()
    for key in ("files", "created", "environment", "toolkit_version"):
        doc.pop(key)
    chosen = bundle.manifest.precision
    section = chosen if chosen is not None else PrecisionSection(
        plan=dict.fromkeys(GRAPH_NAMES, "fp32"), requested="fp32", report={})
    doc["precision"] = PrecisionSection(plan=section.plan, requested=section.requested,
                                        report={**section.report, REPORT_KEY: dict(record)}).to_dict()
    return doc


def add_bf16(bundle: Bundle, out: str | Path, evaluation_images: Sequence[Path], *, budget: Budget | None = None,
             batch_size: int = 8, threads: int | None = None, overwrite: bool = False,
             say: Say | None = None) -> Path:
    """`build --precision bf16 --from-bundle B --eval-images DIR`: write `out`, the bundle with its bf16 record.
    Needs OpenVINO and a CPU with BF16 instructions (ConfigError naming the reason otherwise)."""
    from .variants import VariantOptions, _eval_set

    say = say or (lambda _m: None)
    if not evaluation_images:
        raise ConfigError("--precision bf16 is measured on an evaluation set: pass --eval-images DIR (at least 8 "
                          "images, 50 or more recommended)")
    for p in evaluation_images:
        if not Path(p).exists():
            raise ConfigError(f"{p} does not exist: --eval-images takes image files or folders")
    from ..runtime.backends.openvino_backend import bf16_problem_here

    problem = bf16_problem_here()
    if problem:
        raise ConfigError(problem.replace("Run --precision fp32 here", "measure bf16 on a machine that has them"))
    options = VariantOptions(evaluation_images=tuple(evaluation_images), batch_size=batch_size, threads=threads,
                             budget=budget or bundle_budget(bundle))
    evaluation, names = _eval_set(bundle, evaluation_images, set(), options, say)
    record = measure_bf16(bundle, evaluation, budget=options.budget, threads=threads, say=say)
    record["evaluation"]["images_sha256"] = hashlib.sha256("".join(sorted(names)).encode()).hexdigest()
    files = {name: bundle.file_path(name) for name in bundle.manifest.files}
    return write_bundle(out, with_record(bundle, record), files, overwrite=overwrite)

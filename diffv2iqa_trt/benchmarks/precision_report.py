"""The precision report of a bundle (what `build --precision` measured) as Markdown and JSON, for results/.

python -m diffv2iqa_trt.benchmarks.precision_report --bundle DIR [--out benchmarks/results] [--name NAME]
       [--built-with "diffv2iqa-trt build ..."]

The figures are the build's own (its calibration set, its evaluation set); this only lays them out, with the
command that built the bundle when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Bundle, load_bundle
from ..bundle.manifest import PrecisionSection
from ..contract import GRAPH_NAMES
from ..errors import ConfigError
from . import report

# --- the report (what precision_<model>.json holds, typed) --------------------------------------------------------
# The build writes its precision report into the manifest (precision/variants.py) as JSON; these types read it. A
# record's `to_dict` gives back the JSON it was read from (keys a type does not know are kept in `extra`).


def _opt(cls: Any, d: Any) -> Any:
    return None if d is None else cls.from_dict(d)


def _flat_to_dict(record: Any) -> dict[str, Any]:
    """A flat record's fields that are set (None: the key was absent), then its `extra` keys."""
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "extra"}
    return {k: v for k, v in out.items() if v is not None} | dict(getattr(record, "extra", {}))


def _flat_from_dict(cls: Any, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})


@dataclass(frozen=True)
class ScoreDeltas:
    """Scores of a plan or variant against the FP32 scores on the evaluation set (precision.evaluate.score_deltas).
    The search's all-FP32 round has no `images` and says `reference`."""

    images: int | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    p99_abs: float | None = None
    max_abs_fraction: float | None = None
    srcc: float | None = None
    plcc: float | None = None
    krcc: float | None = None
    rank_flips: int | None = None
    reference: bool | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.images is not None

    def text(self) -> str:
        return (f"max |Δ| {self.max_abs:.3g} ({100 * (self.max_abs_fraction or 0.0):.2f} % of the FP32 range), mean "
                f"|Δ| {self.mean_abs:.3g}, SRCC {self.srcc:.5f}, PLCC {self.plcc:.5f}, KRCC {self.krcc:.5f}, "
                f"{self.rank_flips} rank flips, {self.images} images")

    to_dict = _flat_to_dict

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreDeltas:
        return _flat_from_dict(cls, d)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class StepError:
    step: int
    max_abs: float
    rel: float  # max |Δ| over the largest |y_next| of that step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TensorError:
    """A graph's output against the FP32 graph's on recorded calibration inputs."""

    max_abs: float
    mean_abs: float
    cosine: float
    reference_max_abs: float
    rows: int
    per_step: tuple[StepError, ...] | None = None  # restore_step only

    def to_dict(self) -> dict[str, Any]:
        out = {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "cosine": self.cosine,
               "reference_max_abs": self.reference_max_abs, "rows": self.rows}
        return out if self.per_step is None else out | {"per_step": [s.to_dict() for s in self.per_step]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorError:
        steps = d.get("per_step")
        return cls(d["max_abs"], d["mean_abs"], d["cosine"], d["reference_max_abs"], d["rows"],
                   None if steps is None else tuple(StepError(s["step"], s["max_abs"], s["rel"]) for s in steps))


@dataclass(frozen=True)
class Recipe:
    """How a variant was made: its precision, the node groups kept FP32, the INT8 calibration method."""

    precision: str
    exclude: tuple[str, ...]
    method: str | None
    excluded_nodes: int
    qdq_nodes: int
    seconds: float

    @property
    def label(self) -> str:
        text = "/".join(x for x in (self.precision, self.method) if x)
        return text + (f" [fp32: {'+'.join(self.exclude)}]" if self.exclude else "")

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "exclude": list(self.exclude), "method": self.method,
                "excluded_nodes": self.excluded_nodes, "qdq_nodes": self.qdq_nodes, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(d["precision"], tuple(d["exclude"]), d["method"], d["excluded_nodes"], d["qdq_nodes"],
                   d["seconds"])


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


@dataclass(frozen=True)
class Candidate:
    """One candidate variant the build measured alone (the other graphs FP32)."""

    recipe: str  # its label, e.g. int8/entropy[fp32: pipeline]
    made: Recipe
    tensor: TensorError
    scores: ScoreDeltas | None  # None without an evaluation set
    over_budget: tuple[str, ...]

    def row(self, graph: str) -> list[str]:
        """graph, recipe, tensor max |Δ|, cosine, score max |Δ|, % of range, SRCC, budget verdict (as
        bundle.summary.precision_rows lays them out)."""
        s = self.scores
        verdict = ("over: " + "; ".join(self.over_budget)) if self.over_budget else (
            "within" if s is not None else "not measured")
        frac = None if s is None or s.max_abs_fraction is None else 100 * s.max_abs_fraction
        return [graph, self.recipe, _num(self.tensor.max_abs, ".3g"), _num(self.tensor.cosine, ".6f"),
                _num(None if s is None else s.max_abs, ".3g"), _num(frac, ".2f"),
                _num(None if s is None else s.srcc, ".5f"), verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, **self.made.to_dict(), "tensor": self.tensor.to_dict(),
                "scores": None if self.scores is None else self.scores.to_dict(),
                "over_budget": list(self.over_budget)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(d["recipe"], Recipe.from_dict(d), TensorError.from_dict(d["tensor"]), _opt(ScoreDeltas, d["scores"]),
                   tuple(d["over_budget"]))


@dataclass(frozen=True)
class SearchRound:
    """One round of `best`'s search: the plan tried (graph -> candidate), its deltas, the budget's failures."""

    plan: dict[str, str]
    deltas: ScoreDeltas
    failures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": dict(self.plan), "deltas": self.deltas.to_dict(), "failures": list(self.failures)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchRound:
        return cls(dict(d["plan"]), ScoreDeltas.from_dict(d["deltas"]), tuple(d["failures"]))


@dataclass(frozen=True)
class BudgetRecord:
    min_srcc: float
    max_abs_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibrationRecord:
    key: str
    files: int
    images: int
    crops: int
    restore_rows: int
    noise_rows: int
    sha256: str | None = None  # the calibration arrays' hash; absent in reports written before it was recorded

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.sha256 is None:
            del out["sha256"]
        return out


@dataclass(frozen=True)
class EvaluationRecord:
    images: int
    disjoint_from_calibration: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BuildPrecision:
    """The build's precision report (the manifest's precision.report), typed."""

    plan_scores: ScoreDeltas | None
    cpu_variants: dict[str, str]  # graph -> int8-cpu variant offered to the CPU backend
    budget: BudgetRecord
    calibration: CalibrationRecord | None
    evaluation: EvaluationRecord | None
    candidates: dict[str, tuple[Candidate, ...]]
    failed: dict[str, dict[str, str]]  # graph -> recipe -> why it could not be made
    search: tuple[SearchRound, ...] | None = None  # `best` only
    cpu_plan_scores: ScoreDeltas | None = None
    cpu_variants_withheld: dict[str, str] | None = None

    def rows(self) -> list[list[str]]:
        return [c.row(g) for g, cands in self.candidates.items() for c in cands]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.search is not None:
            out["search"] = [r.to_dict() for r in self.search]
        out["plan_scores"] = None if self.plan_scores is None else self.plan_scores.to_dict()
        if self.cpu_plan_scores is not None:
            out["cpu_plan_scores"] = self.cpu_plan_scores.to_dict()
        if self.cpu_variants_withheld is not None:
            out["cpu_variants_withheld"] = dict(self.cpu_variants_withheld)
        return out | {"cpu_variants": dict(self.cpu_variants), "budget": self.budget.to_dict(),
                      "calibration": None if self.calibration is None else self.calibration.to_dict(),
                      "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
                      "candidates": {g: [c.to_dict() for c in cs] for g, cs in self.candidates.items()},
                      "failed": {g: dict(f) for g, f in self.failed.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildPrecision:
        search, calibration, evaluation = d.get("search"), d.get("calibration"), d.get("evaluation")
        return cls(plan_scores=_opt(ScoreDeltas, d.get("plan_scores")), cpu_variants=dict(d.get("cpu_variants") or {}),
                   budget=BudgetRecord(**d["budget"]),
                   calibration=None if calibration is None else CalibrationRecord(**calibration),
                   evaluation=None if evaluation is None else EvaluationRecord(**evaluation),
                   candidates={g: tuple(Candidate.from_dict(c) for c in cs)
                               for g, cs in (d.get("candidates") or {}).items()},
                   failed={g: dict(f) for g, f in (d.get("failed") or {}).items()},
                   search=None if search is None else tuple(SearchRound.from_dict(r) for r in search),
                   cpu_plan_scores=_opt(ScoreDeltas, d.get("cpu_plan_scores")),
                   cpu_variants_withheld=d.get("cpu_variants_withheld"))


@dataclass(frozen=True)
class VariantAccuracy:
    tensor: TensorError | None
    scores: ScoreDeltas | None
    over_budget: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": None if self.tensor is None else self.tensor.to_dict(),
                "scores": None if self.scores is None else self.scores.to_dict(),
                "over_budget": list(self.over_budget)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantAccuracy:
        return cls(_opt(TensorError, d.get("tensor")), _opt(ScoreDeltas, d.get("scores")),
                   tuple(d.get("over_budget") or ()))


@dataclass(frozen=True)
class VariantRecord:
    """One ONNX variant the bundle holds: its file, how it was made and its accuracy (None for the export)."""

    file: str
    opset: int
    precision: str
    sha256: str
    calibration: str | None  # the calibration set's key
    recipe: Recipe | None
    accuracy: VariantAccuracy | None

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "recipe": None if self.recipe is None else self.recipe.to_dict(),
                "accuracy": None if self.accuracy is None else self.accuracy.to_dict(), "file": self.file,
                "opset": self.opset, "precision": self.precision, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantRecord:
        return cls(d["file"], d["opset"], d["precision"], d.get("sha256", ""), d.get("calibration"),
                   _opt(Recipe, d.get("recipe")), _opt(VariantAccuracy, d.get("accuracy")))


@dataclass(frozen=True)
class PrecisionReport:
    """A bundle's precision variants as the build measured them. `to_json` is precision_<model>.json (without the
    command/date/machine header report.write adds; `from_json` ignores that header)."""

    built_with: str | None  # the command that built the bundle, for the record
    plan: dict[str, str]  # graph -> precision the build chose
    requested: str
    report: BuildPrecision
    variants: dict[str, dict[str, VariantRecord]]  # graph -> precision -> variant

    @classmethod
    def from_section(cls, section: PrecisionSection, variants: dict[str, dict[str, VariantRecord]] | None = None,
                     built_with: str | None = None) -> PrecisionReport:
        return cls(built_with, dict(section.plan), section.requested, BuildPrecision.from_dict(dict(section.report)),
                   variants or {})

    @classmethod
    def from_bundle(cls, bundle: Bundle, built_with: str | None = None) -> PrecisionReport:
        chosen = bundle.manifest.precision
        if chosen is None:
            raise ConfigError(f"{bundle.root} holds no precision variants; build them with `build --precision`")
        return cls.from_section(chosen, {g: {p: VariantRecord.from_dict(v.to_dict())
                                             for p, v in bundle.graph(g).variants.items()} for g in GRAPH_NAMES},
                                built_with)

    def to_dict(self) -> dict[str, Any]:
        return {"built_with": self.built_with,
                "precision": {"plan": dict(self.plan), "requested": self.requested, "report": self.report.to_dict()},
                "variants": {g: {p: v.to_dict() for p, v in by_p.items()} for g, by_p in self.variants.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionReport:
        section = PrecisionSection.from_dict(d["precision"])
        return cls.from_section(section, {g: {p: VariantRecord.from_dict(v) for p, v in by_p.items()}
                                          for g, by_p in d["variants"].items()}, d["built_with"])

    @classmethod
    def from_json(cls, text: str) -> PrecisionReport:
        """A report from precision_<model>.json (or `to_json`); ConfigError when it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a precision report ({type(exc).__name__}: {exc}); give the precision_<model>.json "
                              "that benchmarks.precision_report wrote") from None


def _scores(d: ScoreDeltas | None) -> str:
    return "not measured (no evaluation set)" if d is None or not d.measured else d.text()


def markdown(p: PrecisionReport, model_label: str) -> str:
    r = p.report
    cal = r.calibration
    lines = [f"# Precision variants of {model_label}", "", "<!--header-->"]
    if p.built_with:
        lines += [f"Bundle built with: `{p.built_with}`  "]
    lines += [f"Requested: `{p.requested}`; plan: "
              f"`{', '.join(f'{g}={p.plan[g]}' for g in GRAPH_NAMES)}`; CPU variants: "
              f"{', '.join(f'{g}: {v}' for g, v in r.cpu_variants.items()) or 'none'}.  ",
              f"Budget: SRCC ≥ {r.budget.min_srcc} and max |Δscore| ≤ "
              f"{100 * r.budget.max_abs_fraction:g} % of the FP32 scores' range.  ",
              f"Calibration set {(cal.key if cal else '?')[:16]}: {cal.images if cal else '?'} images, "
              f"{cal.crops if cal else '?'} crops, {cal.restore_rows if cal else '?'} restore_step rows "
              "(every step).  ",
              f"Evaluation: {r.evaluation.images if r.evaluation else 0} images, disjoint from the calibration set.",
              "", "Plan end to end: " + _scores(r.plan_scores) + ".  "]
    if r.cpu_plan_scores:
        lines += ["Plan with the int8-cpu variants: " + _scores(r.cpu_plan_scores) + "."]
    if r.cpu_variants_withheld:
        lines += ["  int8-cpu variants withheld (the combination breaks the budget the plan keeps): "
                  + ", ".join(f"{g}: {v}" for g, v in r.cpu_variants_withheld.items()) + "."]
    lines += ["", "Every candidate, measured alone (the other graphs FP32). Tensor errors: the graph's output against "
              "the FP32 graph on recorded calibration inputs.", "",
              "| graph | variant | tensor max abs Δ | cosine | score max abs Δ | % of range | SRCC | budget |",
              "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in r.rows()]
    lines += ["", "Every variant the bundle holds (it may come from earlier builds with --from-bundle): its recipe and "
              "tensor error against the FP32 graph on recorded inputs.", "",
              "| graph | precision | recipe | tensor max abs Δ | largest FP32 output | cosine |",
              "|---|---|---|---|---|---|"]
    for g in GRAPH_NAMES:
        for prec, v in p.variants.get(g, {}).items():
            tensor = v.accuracy.tensor if v.accuracy else None
            label = v.recipe.label if v.recipe else "export"
            if tensor is None:
                lines.append(f"| {g} | {prec} | {label} | - | - | - |")
                continue
            lines.append(f"| {g} | {prec} | {label} | {tensor.max_abs:.3g} | {tensor.reference_max_abs:.3g} | "
                         f"{tensor.cosine:.6f} |")
    for graph, cands in r.candidates.items():
        for c in cands:
            if c.tensor.per_step:
                lines += ["", f"{graph} {c.recipe}: output error per step (first step run first), max |Δ| / max "
                              "|y_next|: " + ", ".join(f"{s.step}: {s.rel:.3g}" for s in c.tensor.per_step)]
    for i, rnd in enumerate(r.search or ()):
        if i == 0:
            lines += ["", "Search rounds (`best`):", ""]
        plan = ", ".join(f"{g}={k}" for g, k in rnd.plan.items())
        lines.append(f"{i + 1}. {plan}: {_scores(rnd.deltas) if rnd.deltas.measured else 'all FP32'}"
                     f"{' — over: ' + '; '.join(rnd.failures) if rnd.failures else ' — within budget'}")
    for g, fails in r.failed.items():
        for recipe, why in fails.items():
            lines.append(f"- {g} {recipe} could not be made: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None)
    parser.add_argument("--built-with", default=None, help="the command that built the bundle, for the record")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    typed = PrecisionReport.from_bundle(bundle, args.built_with)
    text = markdown(typed, bundle.manifest.model.label)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = report.write(args.out, args.name or f"precision_{bundle.manifest.model.name}", typed.to_dict(), text)
    print(text.replace("<!--header-->", ""))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

"""Score parity of every backend x precision a bundle offers against the torch fp32 reference.

For each variant: |score - reference| (max, mean, p99), SRCC / PLCC / KRCC with the reference, rank flips; with
labels, SRCC / PLCC against them for the reference and the variant; per-graph tensor errors on one real input;
pass / fail against the gates in the manifest (`parity.gates.<precision>`; bundle.gates).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as stats
from ..bundle import Bundle
from ..bundle.gates import gate_failures, gates_for
from ..contract import GRAPH_NAMES
from ..errors import ConfigError, ImageDecodeError
from ..precision_plan import PrecisionPlan, lowest_precision, parse_plan, runnable_plan
from ..runtime.crops import prepare
from ..runtime.executor import Executor
from ..runtime.from_bundle import bundle_pipeline
from ..runtime.images import load_image
from ..runtime.noise import noise_bank
from ..runtime.pipeline import Pipeline
from ..runtime.scoring import path_text


@dataclass
class VariantResult:
    backend: str
    precision: str
    scores: np.ndarray
    metrics: dict[str, Any]
    tensor_errors: dict[str, float]
    gates: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @property
    def passed(self) -> bool:
        return not self.failures


# --- the report (what parity.json holds, typed) -------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorSummary:
    """|score - reference| over the images (metrics.abs_error_summary)."""

    max: float
    mean: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return {"max": self.max, "mean": self.mean, "p99": self.p99}


@dataclass(frozen=True)
class AgreementMetrics:
    """A variant's scores against the reference's: absolute errors, rank correlations, rank flips."""

    abs_error: ErrorSummary
    srcc: float
    plcc: float
    krcc: float
    rank_flips: int

    def to_dict(self) -> dict[str, Any]:
        return {"abs_error": self.abs_error.to_dict(), "srcc": self.srcc, "plcc": self.plcc, "krcc": self.krcc,
                "rank_flips": self.rank_flips}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgreementMetrics:
        e = d["abs_error"]
        return cls(ErrorSummary(e["max"], e["mean"], e["p99"]), d["srcc"], d["plcc"], d["krcc"], d["rank_flips"])


@dataclass(frozen=True)
class VariantParity:
    """One backend x precision plan against the reference, and its verdict against the bundle's gates."""

    backend: str
    precision: str
    metrics: AgreementMetrics
    tensor_errors: dict[str, float]  # graph -> max |Δ| on one real crop
    gates: dict[str, float]
    passed: bool
    failures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "metrics": self.metrics.to_dict(),
                "tensor_errors": dict(self.tensor_errors), "gates": dict(self.gates), "passed": self.passed,
                "failures": list(self.failures)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantParity:
        return cls(d["backend"], d["precision"], AgreementMetrics.from_dict(d["metrics"]), dict(d["tensor_errors"]),
                   dict(d["gates"]), d["passed"], tuple(d["failures"]))


@dataclass(frozen=True)
class LabelAgreement:
    srcc: float
    plcc: float

    def to_dict(self) -> dict[str, float]:
        return {"srcc": self.srcc, "plcc": self.plcc}


@dataclass(frozen=True)
class LabelReport:
    """SRCC / PLCC against the labels, on the `images` images that have one: the reference's and each variant's."""

    images: int
    reference: LabelAgreement
    variants: dict[str, LabelAgreement]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "reference": self.reference.to_dict(),
                **{name: m.to_dict() for name, m in self.variants.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelReport:
        agreement = {k: LabelAgreement(v["srcc"], v["plcc"]) for k, v in d.items() if k != "images"}
        return cls(d["images"], agreement.pop("reference"), agreement)


@dataclass(frozen=True)
class ParityReport:
    """`diffv2iqa-trt parity`: every variant's scores against the torch fp32 reference. `to_json` is parity.json
    (without the command/date/machine header report.write adds; `from_json` ignores that header)."""

    bundle: str
    model: str
    trained: bool
    images: int
    unreadable: dict[str, str]  # file -> why it could not be decoded
    crops: str
    mode: str
    steps: int
    score_range: tuple[float, float]  # of the reference's scores
    variants: dict[str, VariantParity]  # by VariantResult.name
    labels: LabelReport | None
    per_image: tuple[dict[str, Any], ...]  # {"image", "reference", <variant name>: score, ...}
    reference_backend: str = "torch"
    reference_precision: str = "fp32"

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.variants.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle, "model": self.model, "trained": self.trained, "images": self.images,
            "unreadable": dict(self.unreadable), "crops": self.crops, "mode": self.mode, "steps": self.steps,
            "reference": {"backend": self.reference_backend, "precision": self.reference_precision,
                          "score_range": list(self.score_range)},
            "variants": {name: v.to_dict() for name, v in self.variants.items()},
            "labels": None if self.labels is None else self.labels.to_dict(),
            "passed": self.passed,
            "per_image": [dict(row) for row in self.per_image],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityReport:
        ref = d["reference"]
        lo, hi = ref["score_range"]
        return cls(bundle=d["bundle"], model=d["model"], trained=d["trained"], images=d["images"],
                   unreadable=dict(d["unreadable"]), crops=d["crops"], mode=d["mode"], steps=d["steps"],
                   score_range=(lo, hi), variants={k: VariantParity.from_dict(v) for k, v in d["variants"].items()},
                   labels=None if d["labels"] is None else LabelReport.from_dict(d["labels"]),
                   per_image=tuple(dict(row) for row in d["per_image"]), reference_backend=ref["backend"],
                   reference_precision=ref["precision"])

    @classmethod
    def from_json(cls, text: str) -> ParityReport:
        """A report from parity.json (or `to_json`); ConfigError when it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a parity report ({type(exc).__name__}: {exc}); give the parity.json that "
                              "`diffv2iqa-trt parity` wrote") from None


def read_labels(path: str | os.PathLike[str]) -> dict[str, float]:
    """CSV with a header holding `image` (file name) and `score` (or `mos`) columns."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        value_col = "score" if "score" in cols else "mos" if "mos" in cols else None
        if "image" not in cols or value_col is None:
            raise ConfigError(f"{path}: labels need the columns image and score (or mos); found {cols}")
        return {Path(row["image"]).name: float(row[value_col]) for row in reader}


def variants(bundle: Bundle) -> list[tuple[str, str]]:
    """(backend, precision plan) pairs the bundle can run besides the reference: every precision all graphs have,
    the plan the build chose, and that plan in its CPU layout (int8 graphs as int8-cpu) when it differs."""
    plans = list(bundle.common_precisions())
    chosen = bundle.manifest.precision
    if chosen is not None:
        plan = PrecisionPlan(dict(chosen.plan))
        available = {g: bundle.precisions(g) for g in GRAPH_NAMES}
        plans += [plan.label(), runnable_plan(plan, available, cpu=True).label()]
    return [("onnxruntime", p) for p in dict.fromkeys(plans)]


def tensor_errors(reference: Executor, other: Executor, x: np.ndarray, spec_gamma: np.ndarray,
                  spec_coef: np.ndarray, seed: int) -> dict[str, float]:
    """Max |Δ| of each graph on one real crop: restore_step at the middle step, then vcg and vda on the reference's
    restore_step output (both executors get the same branch inputs, so each error belongs to one graph)."""
    steps = len(spec_gamma)
    i = steps // 2
    bank = noise_bank(seed, steps, x.shape[2], x.shape[3])
    b = x.shape[0]
    args = [x, np.ascontiguousarray(np.broadcast_to(bank[steps], x.shape)), np.full((b,), spec_gamma[i], np.float32),
            np.ascontiguousarray(np.broadcast_to(spec_coef[i], (b, spec_coef.shape[1])).astype(np.float32)),
            bank[i][None]]
    ys = [ex.download(ex.restore_step(*[ex.upload(a) for a in args])) for ex in (reference, other)]
    out = {"restore_step": float(np.max(np.abs(ys[0].astype(np.float64) - ys[1])))}
    for name in ("vcg", "vda"):
        got = []
        for ex in (reference, other):
            branch_in = [ex.upload(a) for a in (x, ys[0], args[1], args[1])]
            got.append(ex.download(getattr(ex, name)(*branch_in)))
        out[name] = float(np.max(np.abs(got[0].astype(np.float64) - got[1])))
    return out


def run_parity(bundle: Bundle, image_paths: Sequence[Path], labels: dict[str, float] | None = None, *,
               batch_size: int = 8, threads: int | None = None,
               progress: Callable[[str], None] | None = None) -> ParityReport:
    say = progress or (lambda _m: None)
    images, names, errors = [], [], {}
    for p in image_paths:
        try:
            images.append(load_image(p))
            names.append(path_text(Path(p).name))  # reports are UTF-8: undecodable name bytes become \xNN
        except ImageDecodeError as exc:
            errors[path_text(p)] = exc.reason
    if len(images) < 2:
        raise ConfigError(f"parity needs at least 2 readable images, found {len(images)}")
    say("torch fp32 reference")
    ref_pipe: Pipeline = bundle_pipeline(bundle, "torch", batch_size=batch_size)
    ref = np.array([r.score for r in ref_pipe.score(images)])
    first_x = prepare(images[0], ref_pipe.spec.crops, "crops", ref_pipe.spec.crop_size,
                      ref_pipe.spec.size_multiple)[0].x[None]
    results: list[VariantResult] = []
    for backend, precision in variants(bundle):
        say(f"{backend} {precision}")
        pipe = bundle_pipeline(bundle, backend, precision=precision, batch_size=batch_size, threads=threads)
        scores = np.array([r.score for r in pipe.score(images)])
        metrics: dict[str, Any] = {
            "abs_error": stats.abs_error_summary(ref, scores), "srcc": stats.srcc(ref, scores),
            "plcc": stats.plcc(ref, scores), "krcc": stats.krcc(ref, scores),
            "rank_flips": stats.rank_flips(ref, scores),
        }
        gates = gates_for(lowest_precision(parse_plan(precision)), bundle.manifest.parity)
        errs = tensor_errors(ref_pipe.executor, pipe.executor, first_x, pipe.spec.gamma, pipe.spec.coef,
                             pipe.spec.noise_seed)
        results.append(VariantResult(backend, precision, scores, metrics, errs, gates,
                                     gate_failures(metrics, gates, len(images), errs)))
    label_report = None
    if labels:
        known = [i for i, n in enumerate(names) if n in labels]
        if len(known) >= 2:
            y = np.array([labels[names[i]] for i in known])

            def agreement(scores: np.ndarray) -> LabelAgreement:
                return LabelAgreement(stats.srcc(scores[known], y), stats.plcc(scores[known], y))

            label_report = LabelReport(len(known), agreement(ref), {r.name: agreement(r.scores) for r in results})
    return ParityReport(
        bundle=str(bundle.root), model=bundle.model_name, trained=bundle.trained, images=len(images),
        unreadable=errors, crops=ref_pipe.spec.crops, mode=ref_pipe.spec.mode, steps=ref_pipe.spec.steps,
        score_range=(float(ref.min()), float(ref.max())),
        variants={r.name: VariantParity(r.backend, r.precision, AgreementMetrics.from_dict(r.metrics),
                                        r.tensor_errors, r.gates, r.passed, tuple(r.failures)) for r in results},
        labels=label_report,
        per_image=tuple({"image": n, "reference": float(ref[i]), **{r.name: float(r.scores[i]) for r in results}}
                        for i, n in enumerate(names)),
    )


def _gate_text(g: dict[str, float]) -> str:
    text = f"max {g['max_abs']:g}, SRCC ≥ {g['min_srcc']:g}"
    return text + (f", graphs ≤ {g['max_graph_abs']:g}" if "max_graph_abs" in g else "")


def markdown(report: ParityReport) -> str:
    lines = [f"# Score parity, model {report.model}" + ("" if report.trained else " (UNTRAINED weights)"),
             "", "<!--header-->",
             f"{report.images} images, crops `{report.crops}`, mode `{report.mode}`, {report.steps} steps. "
             f"Reference: torch fp32, scores in [{report.score_range[0]:.4f}, {report.score_range[1]:.4f}].", "",
             "| variant | max abs err | mean abs err | p99 abs err | SRCC | PLCC | KRCC | rank flips | gates "
             "| result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in report.variants.items():
        m = v.metrics
        lines.append(f"| {name} | {m.abs_error.max:.3g} | {m.abs_error.mean:.3g} | "
                     f"{m.abs_error.p99:.3g} | {m.srcc:.6f} | {m.plcc:.6f} | {m.krcc:.6f} | "
                     f"{m.rank_flips} | {_gate_text(v.gates)} | "
                     f"{'PASS' if v.passed else 'FAIL: ' + '; '.join(v.failures)} |")
    lines += ["", "Per-graph max abs tensor error on one real crop (restore_step at the middle step; both backends' "
              "branches on the reference's restore_step output):", "", f"| variant | {' | '.join(GRAPH_NAMES)} |",
              "|---|---|---|---|"]
    for name, v in report.variants.items():
        lines.append(f"| {name} | " + " | ".join(f"{v.tensor_errors[g]:.3g}" for g in GRAPH_NAMES) + " |")
    if report.labels is not None:
        lines += ["", f"Against labels ({report.labels.images} images):", "", "| scores | SRCC | PLCC |",
                  "|---|---|---|"]
        for name, a in {"reference": report.labels.reference, **report.labels.variants}.items():
            lines.append(f"| {name} | {a.srcc:.4f} | {a.plcc:.4f} |")
    if report.unreadable:
        lines += ["", "Unreadable files (skipped): " + ", ".join(sorted(report.unreadable))]
    lines += ["", "Plots: `parity_scatter.png` (variant against reference), `parity_errors.png` (|Δ| histogram)."]
    return "\n".join(lines) + "\n"


def write_report(report: ParityReport, out_dir: Path, name: str = "parity", invocation: str | None = None
                 ) -> list[Path]:
    from . import plots
    from .report import write

    json_path, md_path = write(out_dir, name, report.to_dict(), markdown(report), invocation=invocation)
    ref = np.array([r["reference"] for r in report.per_image])
    scores = {v: np.array([r[v] for r in report.per_image]) for v in report.variants}
    try:
        pngs = [plots.scatter_vs_reference(ref, scores, out_dir / f"{name}_scatter.png"),
                plots.error_histogram({v: np.abs(s - ref) for v, s in scores.items()},
                                      out_dir / f"{name}_errors.png")]
    except OSError as exc:  # the folder was checked before the run, but a disk can still fill up
        raise ConfigError(f"cannot write the plots to {out_dir} ({exc.strerror or exc}); choose a writable --out"
                          ) from exc
    return [json_path, md_path, *pngs]

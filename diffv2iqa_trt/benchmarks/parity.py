"""Score parity of every backend x precision a bundle offers against the torch fp32 reference.

For each variant: |score - reference| (max, mean, p99), SRCC / PLCC / KRCC with the reference, rank flips; with
labels, SRCC / PLCC against them for the reference and the variant; per-graph tensor errors on one real input;
pass / fail against the gates in the manifest (`parity.gates.<precision>`; bundle.gates).
"""

from __future__ import annotations

import csv
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
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
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
    label_metrics = None
    if labels:
        known = [i for i, n in enumerate(names) if n in labels]
        if len(known) >= 2:
            y = np.array([labels[names[i]] for i in known])
            label_metrics = {"images": len(known), "reference": {"srcc": stats.srcc(ref[known], y),
                                                                  "plcc": stats.plcc(ref[known], y)}}
            for r in results:
                label_metrics[r.name] = {"srcc": stats.srcc(r.scores[known], y), "plcc": stats.plcc(r.scores[known], y)}
    return {
        "bundle": str(bundle.root), "model": bundle.model_name, "trained": bundle.trained,
        "images": len(images), "unreadable": errors, "crops": ref_pipe.spec.crops, "mode": ref_pipe.spec.mode,
        "steps": ref_pipe.spec.steps, "reference": {"backend": "torch", "precision": "fp32",
                                                    "score_range": [float(ref.min()), float(ref.max())]},
        "variants": {r.name: {"backend": r.backend, "precision": r.precision, "metrics": r.metrics,
                              "tensor_errors": r.tensor_errors, "gates": r.gates, "passed": r.passed,
                              "failures": r.failures} for r in results},
        "labels": label_metrics,
        "passed": all(r.passed for r in results),
        "per_image": [{"image": n, "reference": float(ref[i]), **{r.name: float(r.scores[i]) for r in results}}
                      for i, n in enumerate(names)],
    }


def _gate_text(g: dict[str, float]) -> str:
    text = f"max {g['max_abs']:g}, SRCC ≥ {g['min_srcc']:g}"
    return text + (f", graphs ≤ {g['max_graph_abs']:g}" if "max_graph_abs" in g else "")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Score parity, model {report['model']}" + ("" if report["trained"] else " (UNTRAINED weights)"),
             "", "<!--header-->",
             f"{report['images']} images, crops `{report['crops']}`, mode `{report['mode']}`, {report['steps']} steps. "
             f"Reference: torch fp32, scores in [{report['reference']['score_range'][0]:.4f}, "
             f"{report['reference']['score_range'][1]:.4f}].", "",
             "| variant | max abs err | mean abs err | p99 abs err | SRCC | PLCC | KRCC | rank flips | gates "
             "| result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        m, g = v["metrics"], v["gates"]
        lines.append(f"| {name} | {m['abs_error']['max']:.3g} | {m['abs_error']['mean']:.3g} | "
                     f"{m['abs_error']['p99']:.3g} | {m['srcc']:.6f} | {m['plcc']:.6f} | {m['krcc']:.6f} | "
                     f"{m['rank_flips']} | {_gate_text(g)} | "
                     f"{'PASS' if v['passed'] else 'FAIL: ' + '; '.join(v['failures'])} |")
    lines += ["", "Per-graph max abs tensor error on one real crop (restore_step at the middle step; both backends' "
              "branches on the reference's restore_step output):", "", "| variant | restore_step | vcg | vda |",
              "|---|---|---|---|"]
    for name, v in report["variants"].items():
        t = v["tensor_errors"]
        lines.append(f"| {name} | {t['restore_step']:.3g} | {t['vcg']:.3g} | {t['vda']:.3g} |")
    if report["labels"]:
        lines += ["", f"Against labels ({report['labels']['images']} images):", "", "| scores | SRCC | PLCC |",
                  "|---|---|---|"]
        for name, m in report["labels"].items():
            if isinstance(m, dict):
                lines.append(f"| {name} | {m['srcc']:.4f} | {m['plcc']:.4f} |")
    if report["unreadable"]:
        lines += ["", "Unreadable files (skipped): " + ", ".join(sorted(report["unreadable"]))]
    lines += ["", "Plots: `parity_scatter.png` (variant against reference), `parity_errors.png` (|Δ| histogram)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, name: str = "parity", invocation: str | None = None
                 ) -> list[Path]:
    from . import plots
    from .report import write

    json_path, md_path = write(out_dir, name, report, markdown(report), invocation=invocation)
    ref = np.array([r["reference"] for r in report["per_image"]])
    scores = {v: np.array([r[v] for r in report["per_image"]]) for v in report["variants"]}
    try:
        pngs = [plots.scatter_vs_reference(ref, scores, out_dir / f"{name}_scatter.png"),
                plots.error_histogram({v: np.abs(s - ref) for v, s in scores.items()},
                                      out_dir / f"{name}_errors.png")]
    except OSError as exc:  # the folder was checked before the run, but a disk can still fill up
        raise ConfigError(f"cannot write the plots to {out_dir} ({exc.strerror or exc}); choose a writable --out"
                          ) from exc
    return [json_path, md_path, *pngs]

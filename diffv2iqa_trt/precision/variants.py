"""`build --precision`: add FP16 / INT8 variants to a bundle, measured, with the plan the runtime runs by default.

1. Record (or reuse) the calibration set on the calibration images.
2. For each graph the request reduces, make the candidate variants (see `candidate_recipes`) and measure each:
   tensor errors against the FP32 graph on recorded inputs, and, with an evaluation set, the end-to-end score deltas
   of the plan that reduces only that graph.
3. Choose per graph: for `best`, the lowest passing candidate (search.choose); for an explicit precision, its first
   candidate that keeps the budget (else the last one, reported as over budget). Wherever int8 is chosen, an
   int8-cpu variant (ONNX Runtime's CPU layout, same calibration) is made and measured too.
4. Write a new bundle (atomically; the source bundle's files copied) whose manifest lists each variant with its
   sha256, recipe, calibration key and accuracy, and the chosen plan with the whole report.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, write_bundle
from ..bundle.manifest import PrecisionSection, VariantEntry
from ..calibration import MIN_IMAGES, CalibrationSet, calibration_set
from ..calibration.record import image_files
from ..contract import GRAPH_NAMES, RESTORE_STEP
from ..errors import ConfigError, ExportError, ImageDecodeError
from ..precision_plan import BF16, INT8, INT8_CPU, PrecisionPlan
from ..runtime.crops import prepare
from ..runtime.images import load_image
from ..runtime.pipeline import PipelineSpec
from .evaluate import Budget, EvalSet, score_deltas, step_errors, tensor_errors
from .groups import LEVELS
from .quantize import FP16, INT8_METHODS, MadeVariant, Recipe, make_variant
from .search import FP32_CANDIDATE, Candidate, choose

Say = Callable[[str], None]


@dataclass(frozen=True)
class VariantOptions:
    calibration_images: Sequence[Path] = ()
    evaluation_images: Sequence[Path] = ()
    max_crops: int = 64
    rows_per_step: int | None = None
    batch_size: int = 8
    methods: tuple[str, ...] = INT8_METHODS  # int8 calibration methods tried; the better one is kept
    budget: Budget = Budget()
    threads: int | None = None
    cache_dir: Path | None = None
    overwrite: bool = False


def candidate_recipes(graph: str, precision: str, methods: Sequence[str]) -> list[Recipe]:
    """The variants tried for one graph at one precision, fewest FP32 node groups first."""
    if precision == FP16:
        return [Recipe(FP16, level) for level in LEVELS[graph]]
    if precision == INT8:
        return [Recipe(INT8, level, m) for level in LEVELS[graph] for m in methods]
    if precision == INT8_CPU:
        return [Recipe(INT8_CPU, level, m) for level in LEVELS[graph] for m in methods]
    raise ConfigError(f"no recipes for {precision!r}")


@dataclass
class Measured:
    recipe: Recipe
    made: MadeVariant
    tensor: dict[str, Any]
    alone: dict[str, Any] | None
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.label, **self.made.to_dict(), "tensor": self.tensor, "scores": self.alone,
                "over_budget": self.failures}


class _Work:
    """The state of one run: bundle, calibration set, evaluation set, scratch, measured variants."""

    def __init__(self, bundle: Bundle, cs: CalibrationSet, evaluation: EvalSet | None, reference: np.ndarray | None,
                 scratch: Path, options: VariantOptions, say: Say) -> None:
        self.bundle, self.cs, self.evaluation, self.reference = bundle, cs, evaluation, reference
        self.scratch, self.options, self.say = scratch, options, say
        self.fp32 = {g: bundle.onnx_path(g, "fp32") for g in GRAPH_NAMES}
        self.measured: dict[str, dict[str, Measured]] = {g: {} for g in GRAPH_NAMES}
        self.cpu: dict[str, Measured] = {}  # int8-cpu variants made for the graphs that run int8
        self.failed: dict[str, dict[str, str]] = {}  # graph -> recipe -> why the tool failed
        self.made = 0

    def deltas(self, paths: Mapping[str, Path]) -> dict[str, Any] | None:
        if self.evaluation is None or self.reference is None:
            return None
        return score_deltas(self.reference, self.evaluation.scores(paths))

    def measure(self, graph: str, recipe: Recipe) -> Measured:
        if recipe.label in self.measured[graph]:
            return self.measured[graph][recipe.label]
        self.say(f"{graph}: making {recipe.label}")
        self.made += 1
        dst = self.scratch / f"{graph}.{recipe.precision}.{self.made}.onnx"
        work = self.scratch / f"work-{self.made}"
        try:
            made = make_variant(self.fp32[graph], dst, graph, recipe, self.cs, work,
                                batch_size=self.options.batch_size)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the tools' copies and intermediates: paper, ~1 GB each
        tensor: dict[str, Any] = tensor_errors(self.fp32[graph], dst, graph, self.cs,
                                               batch_size=self.options.batch_size, threads=self.options.threads)
        if graph == RESTORE_STEP and recipe.precision != FP16:
            tensor["per_step"] = step_errors(self.fp32[graph], dst, self.cs, threads=self.options.threads)
        if self.evaluation is not None:
            self.say(f"{graph}: measuring {recipe.label} end to end")
        alone = self.deltas({**self.fp32, graph: dst})
        failures = self.options.budget.failures(alone) if alone is not None else []
        m = Measured(recipe, made, tensor, alone, failures)
        self.measured[graph][recipe.label] = m
        return m

    def try_measure(self, graph: str, recipe: Recipe) -> Measured | None:
        """`measure`, or None (reported) when the tool cannot make this variant."""
        try:
            return self.measure(graph, recipe)
        except ExportError as exc:
            self.say(f"{graph}: {recipe.label} could not be made: {exc}")
            self.failed.setdefault(graph, {})[recipe.label] = str(exc)
            return None

    def pick(self, graph: str, recipes: Sequence[Recipe]) -> Measured | None:
        """With an evaluation set: the recipes are tried level by level (fewest FP32 node groups first; all
        calibration methods of a level), and the first level with a recipe inside the budget gives its smallest
        score error; if none keeps the budget, the smallest score error overall. Without one: the first level's
        smallest tensor error. None when no recipe could be made."""
        levels: dict[tuple[str, ...], list[Recipe]] = {}
        for r in recipes:
            levels.setdefault(r.exclude, []).append(r)
        tried: list[Measured] = []
        # Without an evaluation set nothing can show that keeping a group in FP32 helps the scores: the first level
        # (fewest groups) only.
        for level in list(levels.values())[: None if self.evaluation is not None else 1]:
            made = [m for r in level if (m := self.try_measure(graph, r)) is not None]
            tried += made
            ok = [m for m in made if not m.failures]
            if self.evaluation is not None and ok:
                return min(ok, key=_score_error)
        if not tried:
            return None
        if self.evaluation is None:
            return min(tried, key=lambda m: m.tensor["max_abs"])
        return min(tried, key=_score_error)


def _eval_set(bundle: Bundle, paths: Sequence[Path], calibration_images: set[str], options: VariantOptions,
              say: Say) -> tuple[EvalSet, list[str]]:
    files, skipped = image_files(paths)
    overlap = [f for f in files if f.sha256 in calibration_images]
    if overlap:
        raise ConfigError(f"{len(overlap)} evaluation image(s) are also calibration images (e.g. {overlap[0].path}); "
                          "the evaluation set must be disjoint: use other images for --eval-images")
    spec = PipelineSpec.from_manifest(bundle.manifest.pipeline)
    prepared, names = [], []
    for f in files:
        try:
            rgb = load_image(f.path)
        except ImageDecodeError as exc:
            skipped.append((str(f.path), exc.reason))
            continue
        prepared.append(prepare(rgb, spec.crops, spec.mode, spec.crop_size, spec.size_multiple))
        names.append(f.sha256)
    if len(prepared) < MIN_IMAGES:
        raise ConfigError(f"the evaluation set needs at least {MIN_IMAGES} distinct images that decode (50 or more "
                          f"recommended), got {len(prepared)} from {', '.join(map(str, paths))}")
    say(f"evaluation set: {len(prepared)} images")
    io = {g: (bundle.graph(g).inputs, bundle.graph(g).outputs) for g in GRAPH_NAMES}
    return EvalSet(spec, prepared, io, options.batch_size, options.threads), names


def check_request(request: PrecisionPlan, options: VariantOptions) -> None:
    """The cheap checks of a variant request (ConfigError naming the option), before any model work."""
    reduced = [g for g in GRAPH_NAMES if request[g] != "fp32"]
    if not reduced:
        raise ConfigError("--precision fp32 adds nothing: the bundle's FP32 graphs are already there")
    if not options.calibration_images:
        raise ConfigError(f"--precision {request.label()} needs calibration images: pass --calib-images DIR "
                          f"(at least {MIN_IMAGES} images)")
    if request.searched and not options.evaluation_images:
        raise ConfigError("--precision best needs an evaluation set disjoint from the calibration images: pass "
                          "--eval-images DIR (at least 50 images recommended)")
    unknown = [m for m in options.methods if m not in INT8_METHODS]
    if not options.methods or unknown:
        raise ConfigError(f"--calib-methods must be among {', '.join(INT8_METHODS)}, got "
                          f"{', '.join(options.methods) or 'none'}")
    if isinstance(options.max_crops, bool) or options.max_crops < MIN_IMAGES:
        raise ConfigError(f"--calib-crops must be at least {MIN_IMAGES}, got {options.max_crops}")
    for p in [*options.calibration_images, *options.evaluation_images]:
        if not Path(p).exists():
            raise ConfigError(f"{p} does not exist: --calib-images and --eval-images take image files or folders")


def add_variants(bundle: Bundle, request: PrecisionPlan, out: str | Path, options: VariantOptions,
                 say: Say | None = None) -> Path:
    """Write `out`: `bundle` plus the variants `request` asks for (see the module docstring)."""
    say = say or (lambda _m: None)
    check_request(request, options)
    reduced = [g for g in GRAPH_NAMES if request[g] != "fp32"]
    for g in reduced:
        bundle.check_onnx_references(g, "fp32")

    cs, reused = calibration_set(bundle, list(options.calibration_images), max_crops=options.max_crops,
                                 rows_per_step=options.rows_per_step, batch_size=options.batch_size,
                                 threads=options.threads, cache_dir=options.cache_dir,
                                 progress=lambda stage, done, total: None)
    say(f"calibration set {cs.key}: {cs.crops} crops ({'reused' if reused else 'recorded'})")
    evaluation: EvalSet | None = None
    reference: np.ndarray | None = None
    eval_names: list[str] = []
    if options.evaluation_images:
        evaluation, eval_names = _eval_set(bundle, options.evaluation_images, set(cs.meta["images"]), options, say)
        say("scoring the evaluation set with the FP32 graphs")
        reference = evaluation.scores({g: bundle.onnx_path(g, "fp32") for g in GRAPH_NAMES})

    with tempfile.TemporaryDirectory(prefix="diffv2iqa-precision-") as tmp:
        work = _Work(bundle, cs, evaluation, reference, Path(tmp), options, say)
        chosen, report = _choose(work, request)
        return _write(bundle, request, chosen, work, report, eval_names, Path(out), options)


def _choose(work: _Work, request: PrecisionPlan) -> tuple[dict[str, Measured | None], dict[str, Any]]:
    methods = work.options.methods
    chosen: dict[str, Measured | None] = {}
    report: dict[str, Any] = {}
    searched = request.searched
    if searched:
        cands: dict[str, list[Candidate]] = {}
        for g in searched:
            order: list[Candidate] = []
            for precision in (INT8, FP16):
                for r in candidate_recipes(g, precision, methods):
                    m = work.try_measure(g, r)
                    if m is not None:
                        order.append(Candidate(r.label, precision, m.alone, m.failures))
            order.append(Candidate(FP32_CANDIDATE, "fp32"))
            cands[g] = order
        fixed = {g: _explicit(work, g, request[g]) for g in GRAPH_NAMES if g not in searched}

        def measure_plan(plan: Mapping[str, Candidate]) -> Mapping[str, Any]:
            paths = dict(work.fp32)
            for g, c in plan.items():
                if c.key != FP32_CANDIDATE:
                    paths[g] = work.measured[g][c.key].made.path
            for g, m in fixed.items():
                if m is not None:
                    paths[g] = m.made.path
            return work.deltas(paths) or {}

        result = choose(cands, work.options.budget, measure_plan,
                        others_reduced=any(m is not None for m in fixed.values()))
        chosen.update(fixed)
        chosen.update({g: None if c.key == FP32_CANDIDATE else work.measured[g][c.key]
                       for g, c in result.chosen.items()})
        report["search"] = result.rounds
    else:
        chosen = {g: _explicit(work, g, request[g]) for g in GRAPH_NAMES}
    plan_paths = {g: (m.made.path if m is not None else work.fp32[g]) for g, m in chosen.items()}
    report["plan_scores"] = work.deltas(plan_paths)
    # The CPU layout of every graph that runs int8, from the same calibration set.
    cpu: dict[str, Measured] = {}
    for g, m in chosen.items():
        if m is not None and m.recipe.precision == INT8:
            made = work.pick(g, candidate_recipes(g, INT8_CPU, [m.recipe.method or "max"]))
            # Offered to the CPU backend when it keeps the budget, or moves the scores no more than the int8
            # variant the plan already runs (an explicit int8 request over budget).
            if made is not None and (not made.failures or work.evaluation is None
                                     or _score_error(made) <= _score_error(m)):
                cpu[g] = made
    if cpu:
        cpu_paths = {**plan_paths, **{g: m.made.path for g, m in cpu.items()}}
        report["cpu_plan_scores"] = cpu_scores = work.deltas(cpu_paths)
        plan_ok = report["plan_scores"] is not None and not work.options.budget.failures(report["plan_scores"])
        if cpu_scores is not None and plan_ok and work.options.budget.failures(cpu_scores):
            # Each int8-cpu variant passed alone, but together they break a budget the plan keeps: the CPU runs the
            # plan's own variants instead.
            report["cpu_variants_withheld"] = {g: m.recipe.label for g, m in cpu.items()}
            cpu = {}
    report["cpu_variants"] = {g: m.recipe.label for g, m in cpu.items()}
    work.cpu = cpu
    return chosen, report


def _score_error(m: Measured) -> float:
    return float((m.alone or {}).get("max_abs", float("inf")))


def _explicit(work: _Work, graph: str, precision: str) -> Measured | None:
    if precision == "fp32":
        return None
    made = work.pick(graph, candidate_recipes(graph, precision, work.options.methods))
    if made is None:
        raise ExportError(f"no {precision} variant of {graph} could be made: "
                          + "; ".join(work.failed.get(graph, {}).values()))
    return made


def _write(bundle: Bundle, request: PrecisionPlan, chosen: Mapping[str, Measured | None], work: _Work,
           report: dict[str, Any], eval_names: Sequence[str], out: Path, options: VariantOptions) -> Path:
    doc = bundle.manifest.to_dict()
    for key in ("files", "created", "environment", "toolkit_version"):
        doc.pop(key)
    files: dict[str, Path] = {name: bundle.file_path(name) for name in bundle.manifest.files}
    cpu = work.cpu
    plan = {}
    for g in GRAPH_NAMES:
        m = chosen[g]
        plan[g] = m.recipe.precision if m is not None else "fp32"
        for variant in [v for v in (m, cpu.get(g)) if v is not None]:
            precision = variant.recipe.precision
            name = f"{g}.{precision}.onnx"
            files[name] = variant.made.path
            entry = VariantEntry(file=name, opset=bundle.graph(g).variants["fp32"].opset, precision=precision,
                                 extra={"calibration": work.cs.key,
                                        "calibration_sha256": work.cs.meta.get("arrays_sha256"),
                                        "recipe": variant.made.to_dict(),
                                        "accuracy": {"tensor": variant.tensor, "scores": variant.alone,
                                                     "over_budget": variant.failures}})
            doc["graphs"][g]["variants"][precision] = entry.to_dict()
            stale: dict[str, Any] = doc["graphs"][g]["engines"].pop(precision, None) or {}
            for key in ("file", "layer_information"):  # an engine built from the variant just replaced goes too
                files.pop(str(stale.get(key)), None)
    report.update({
        "budget": options.budget.to_dict(),
        "calibration": {"key": work.cs.key, "sha256": work.cs.meta.get("arrays_sha256"),
                        **work.cs.meta.get("counts", {})},
        "evaluation": {"images": len(eval_names), "disjoint_from_calibration": True} if eval_names else None,
        "candidates": {g: [m.to_dict() for m in ms.values()] for g, ms in work.measured.items() if ms},
        "failed": work.failed,
    })
    prior = bundle.manifest.precision
    remade = {g for g in GRAPH_NAMES if any(v is not None and v.recipe.precision == INT8_CPU
                                            for v in (chosen[g], cpu.get(g)))}
    if prior is not None and BF16 in prior.report and not remade & set(prior.report[BF16].get("int8") or {}):
        # The bf16 record measures the FP32 graphs, which this build copies unchanged, and int8-cpu variants on
        # OpenVINO: it stays valid unless this build replaced one of those (then `build --precision bf16` again).
        report[BF16] = prior.report[BF16]
    doc["precision"] = PrecisionSection(plan=plan, requested=request.label(), report=report).to_dict()
    return write_bundle(out, doc, files, overwrite=options.overwrite)

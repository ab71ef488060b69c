"""Bundle assembly (`build`): export the three graphs, lint them for TensorRT, check them against torch, describe
them in a manifest and write the bundle; then, on request, add precision variants (precision/) and TensorRT engines
(engine/).

It sits above export/ (which makes one ONNX file) and bundle/ (which knows the format and writes directories).
Everything is staged in a temporary directory and handed to `bundle.write_bundle`, which publishes the bundle
atomically: an interrupted or failed build never leaves a directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import write_bundle
from .bundle.gates import DEFAULT_GATES
from .bundle.manifest import (
    FusionSection,
    GraphEntry,
    ModelSection,
    NoiseSection,
    NormalisationSection,
    PipelineSection,
    Profiles,
    VariantEntry,
)
from .bundle.schema import sha256_file
from .bundle.store import check_replaceable
from .config import MAX_STEPS, ModelConfig, ScoringConfig
from .contract import (
    COEF_NAMES,
    GRAPH_NAMES,
    GRAPH_OUTPUTS,
    NORM_DIVISOR,
    NORM_FORMULA,
    NORM_MEAN,
    NORM_STD,
    TRT_MAJORS,
    input_shapes,
)
from .errors import BuildError, BundleError, ConfigError
from .export.graphs import example_inputs, graph_spec
from .export.onnx_export import export_graph
from .export.trt_lint import LintReport, lint_onnx
from .export.validate import compare_with_torch
from .model.checkpoint import CheckpointInfo, save_checkpoint
from .model.diffv2iqa import DiffV2IQA
from .runtime.noise import GENERATOR, row_test_vectors
from .runtime.pipeline import PipelineSpec
from .runtime.resize import RESIZE

if TYPE_CHECKING:
    from .bundle import Bundle
    from .engine.builder import BuildSettings
    from .precision.variants import VariantOptions
    from .precision_plan import PrecisionPlan

CHECKPOINT_FILE = "model.safetensors"
CHECK_BATCH = 2  # batch of the torch-vs-ONNX Runtime check of each exported graph
# Disk a build needs on each file system it writes (the output's and the staging TMPDIR), in multiples of the model's
# state-dict bytes: the fp32 ONNX graphs (about 1x), the checkpoint (1x), and staging/move headroom (1x); plus slack
# for manifest, lint reports and file-system overhead.
SPACE_FACTOR = 3
SPACE_SLACK = 16 * 2**20


@dataclass(frozen=True)
class BuildOptions:
    scoring: ScoringConfig = ScoringConfig()
    opset: int = 18
    opt_batch: int = 8
    max_batch: int = 16
    max_size: int = 512  # largest restoration height/width in the TensorRT profile (faithful mode)
    steps: int | None = None  # denoising steps of the bundle (default: the model's schedule)
    include_checkpoint: bool = True
    allow_lint_failures: bool = False
    overwrite: bool = False

    def check(self, crop_size: int, size_multiple: int) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"need 1 <= --opt-batch ({self.opt_batch}) <= --max-batch ({self.max_batch})")
        if self.max_size < crop_size or self.max_size % size_multiple:
            raise ConfigError(f"--max-size {self.max_size} must be at least the crop size {crop_size} and a "
                              f"multiple of {size_multiple}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"--steps {self.steps} must be in [1, {MAX_STEPS}]")


@dataclass(frozen=True)
class GraphBuild:
    """One exported graph: its manifest entry, files, lint per TensorRT major and errors against torch."""

    entry: GraphEntry
    files: dict[str, Path]
    lint: dict[int, LintReport]
    check: dict[str, Any]


@dataclass(frozen=True)
class BuildResult:
    path: Path
    lint: dict[str, dict[int, LintReport]]
    parity: dict[str, Any]


Progress = Callable[[str], None]


def profiles(graph: str, crop: int, o: BuildOptions) -> Profiles:
    """TensorRT profile: batch 1 at crop size, the optimal batch at crop size, the largest batch at max size."""
    def shapes(batch: int, hw: int) -> dict[str, tuple[int, ...]]:
        return input_shapes(graph, crop, batch, hw, hw)  # the branch graphs' crops stay at crop size

    return Profiles(min=shapes(1, crop), opt=shapes(o.opt_batch, crop), max=shapes(o.max_batch, o.max_size))


def pipeline_section(config: ModelConfig, spec: PipelineSpec) -> PipelineSection:
    """The manifest's pipeline section: the spec the runtime will rebuild with PipelineSpec.from_manifest."""
    return PipelineSection(
        steps=spec.steps, capture_t1=spec.capture_t1, capture_t2=spec.capture_t2,
        gamma=tuple(spec.gamma.tolist()), coef=tuple(tuple(row) for row in spec.coef.tolist()),
        coef_names=COEF_NAMES,
        noise=NoiseSection(GENERATOR, spec.noise_seed,
                           row_test_vectors(spec.noise_seed, spec.steps, spec.crop_size, spec.crop_size)),
        resize=RESIZE, crop_size=spec.crop_size,
        size_multiple=spec.size_multiple, crops=spec.crops, mode=spec.mode,
        fusion=FusionSection(spec.vcg_weight, spec.vda_weight),
        normalisation=NormalisationSection(NORM_FORMULA, NORM_DIVISOR, NORM_MEAN, NORM_STD),
        uint8_roundtrip=config.uint8_roundtrip,
    )


def export_checked_graph(model: DiffV2IQA, graph: str, stage: Path, options: BuildOptions,
                         say: Progress) -> GraphBuild:
    """Export one graph into `stage`, lint it for every TensorRT major, and compare it with torch."""
    config = model.config
    say(f"exporting {graph}")
    name = f"{graph}.fp32.onnx"
    result = export_graph(model, graph, stage / name, opset=options.opset)
    files = {name: result.path}
    if result.external_data is not None:
        files[result.external_data.name] = result.external_data
    say(f"linting {graph} for TensorRT {', '.join(map(str, TRT_MAJORS))}")
    lint = {major: lint_onnx(result.path, major) for major in TRT_MAJORS}
    say(f"checking {graph} against torch")
    inputs = example_inputs(config, graph, batch=CHECK_BATCH)
    check = {"batch": CHECK_BATCH, **compare_with_torch(model, graph, result.path, inputs)}
    spec = graph_spec(graph, config)
    entry = GraphEntry(inputs=spec.inputs, outputs=spec.outputs,
                       profiles=profiles(graph, config.crop_size, options),
                       variants={"fp32": VariantEntry(file=name, opset=result.opset, precision="fp32",
                                                      extra={"calibration": None, "recipe": None,
                                                             "accuracy": None})})
    return GraphBuild(entry=entry, files=files, lint=lint, check=check)


def _check_lint(lint: dict[str, dict[int, LintReport]], allow_failures: bool) -> None:
    failures = [f"{g} (TensorRT {m})" for g, by_major in lint.items() for m, rep in by_major.items() if not rep.ok]
    if failures and not allow_failures:
        raise BuildError("TensorRT compatibility lint failed for " + ", ".join(failures) +
                         "; see the lint table, or pass --allow-lint-failures to write the bundle anyway")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**10:,.1f} KB"


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (where a build would create directories)."""
    while not (path.exists() or path.is_symlink()) and path.parent != path:
        path = path.parent
    return path


def check_output(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output the build could not write, before minutes of export: an existing path (unless it is a bundle
    or an empty directory and `overwrite`), a parent below a file, or a location where no file can be created
    (read-only file system, permissions; probed by creating and removing a temporary file). Returns the absolute
    output path."""
    out = Path(os.path.abspath(out_dir))
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise BundleError(f"{out_dir} already exists; choose another --out or pass --overwrite to replace it",
                              path=out)
        check_replaceable(out, elsewhere="choose another --out")
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise BundleError(f"cannot create {out}: {base} is not a directory; choose another --out", path=out)
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffv2iqa-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BundleError(f"cannot write the bundle {out}: {base} is not writable ({exc.strerror or exc}); choose "
                          "another --out or fix the permissions", path=out) from None
    return out


def check_free_space(out: Path, weight_bytes: int) -> None:
    """Refuse a build that cannot fit on the output's or the staging file system (estimate: SPACE_FACTOR times the
    weights plus SPACE_SLACK on each)."""
    need = SPACE_FACTOR * weight_bytes + SPACE_SLACK
    places = ((_nearest_existing(out.parent), "--out"), (Path(tempfile.gettempdir()), "TMPDIR, for staging"))
    for where, role in places:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            continue  # cannot tell (an exotic file system): the writes themselves will say
        if free < need:
            raise BundleError(
                f"not enough free space in {where} ({role}): {_mb(free)} free, the build needs about {_mb(need)} "
                f"({SPACE_FACTOR}x the model's {_mb(weight_bytes)} of weights: ONNX graphs, checkpoint, staging); "
                "free some space or choose another location", path=where)


def _os_failure(exc: OSError, out: Path, step: str) -> BuildError:
    """An OSError during the build as a message: the file, the cause, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space (where --out points, and TMPDIR) or choose another --out"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose a writable --out (and TMPDIR)"
    else:
        advice = "check the file system and try again"
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename is not None else ""  # the file the OS refused, when it says
    return BuildError(f"building {out} failed while {step}: {where}{cause}; no bundle was written: {advice}")


def build_onnx_bundle(model: DiffV2IQA, info: CheckpointInfo, out_dir: str | os.PathLike[str], options: BuildOptions,
                      *, init_seed: int | None = None, checkpoint_path: str | os.PathLike[str] | None = None,
                      progress: Progress | None = None) -> BuildResult:
    config = model.config
    # Cheap checks first: each of these used to fail only after minutes of export.
    config.validate()
    options.check(config.crop_size, config.unet.size_multiple)
    out = check_output(out_dir, options.overwrite)
    if options.steps is not None:
        config = config.replace(schedule=dataclasses.replace(config.schedule, steps=options.steps))
    spec = PipelineSpec.from_config(config, options.scoring)  # also checks the step count and capture steps
    check_free_space(out, sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    step = ["starting"]

    def say(msg: str) -> None:
        step[0] = msg
        if progress is not None:
            progress(msg)

    try:
        return _build(model, info, config, spec, out_dir, options, say, init_seed, checkpoint_path)
    except OSError as exc:  # disk full, read-only, ... while exporting or writing: a message, not a traceback
        raise _os_failure(exc, out, step[0]) from exc


def _build(model: DiffV2IQA, info: CheckpointInfo, config: ModelConfig, spec: PipelineSpec,
           out_dir: str | os.PathLike[str], options: BuildOptions, say: Progress, init_seed: int | None,
           checkpoint_path: str | os.PathLike[str] | None) -> BuildResult:
    """Export, check and write; everything is staged in a temporary directory that is removed on any outcome."""
    with tempfile.TemporaryDirectory(prefix="diffv2iqa-build-") as tmp:
        stage = Path(tmp)
        builds: dict[str, GraphBuild] = {}
        for graph in GRAPH_NAMES:
            builds[graph] = export_checked_graph(model, graph, stage, options, say)
            _check_lint({graph: builds[graph].lint}, options.allow_lint_failures)  # stop at the first failure
        lint = {g: b.lint for g, b in builds.items()}
        files = {name: path for b in builds.values() for name, path in b.files.items()}
        # Gates that `diffv2iqa-trt parity` enforces for each precision of this bundle.
        parity: dict[str, Any] = {"reference": "torch fp32 (cpu)", "fp32": {g: b.check for g, b in builds.items()},
                                  "gates": {p: dict(g) for p, g in DEFAULT_GATES.items()}}
        checkpoint_file = None
        if options.include_checkpoint:
            say("writing the checkpoint")
            save_checkpoint(model, stage / CHECKPOINT_FILE, trained=info.trained, description=info.description)
            files[CHECKPOINT_FILE] = stage / CHECKPOINT_FILE
            checkpoint_file = CHECKPOINT_FILE
        say("scoring the golden test inputs")
        golden = _golden(builds, files, spec, stage)
        if checkpoint_path:
            say("hashing the source checkpoint")
        model_section = ModelSection(
            name=config.name, config=config.to_dict(), trained=info.trained, description=info.description,
            checkpoint_sha256=sha256_file(checkpoint_path) if checkpoint_path else None,
            checkpoint=checkpoint_file, init_seed=init_seed)
        manifest = {
            "model": model_section.to_dict(),
            "pipeline": pipeline_section(config, spec).to_dict(),
            "graphs": {g: b.entry.to_dict() for g, b in builds.items()},
            # Lint reports name the file as the bundle does: the staging path is machine- and build-specific.
            "lint": {g: {str(m): {**rep.to_dict(), "path": Path(rep.path).name} for m, rep in by_major.items()}
                     for g, by_major in lint.items()},
            "parity": parity,
            "golden": golden,
        }
        say("writing the bundle")
        path = write_bundle(out_dir, manifest, files, overwrite=options.overwrite, move=True)
    return BuildResult(path=path, lint=lint, parity=parity)


def _golden(builds: dict[str, GraphBuild], files: dict[str, Path], spec: PipelineSpec, stage: Path) -> dict[str, Any]:
    """Copy the golden inputs into the stage (adding them to `files`) and score them on the staged FP32 graphs with
    ONNX Runtime, exactly as `score --bundle` will (golden.py)."""
    from .golden import BUNDLE_DIR, golden_inputs, score_golden
    from .runtime.backends.onnxruntime_backend import OnnxRuntimeExecutor

    paths = {g: files[b.entry.variants["fp32"].file] for g, b in builds.items()}
    executor = OnnxRuntimeExecutor(paths, {g: list(b.entry.input_names) for g, b in builds.items()},
                                   {g: GRAPH_OUTPUTS[g][0] for g in builds})
    inputs = golden_inputs()
    (stage / BUNDLE_DIR).mkdir()
    for src in inputs:
        name = f"{BUNDLE_DIR}/{src.name}"
        files[name] = stage / name
        shutil.copyfile(src, files[name])
    return score_golden(executor, spec, inputs)


def build_bundle(model: DiffV2IQA, info: CheckpointInfo, out_dir: str | os.PathLike[str], options: BuildOptions,
                 request: PrecisionPlan, variants: VariantOptions | None = None, *, init_seed: int | None = None,
                 checkpoint_path: str | os.PathLike[str] | None = None, engines: BuildSettings | None = None,
                 progress: Progress | None = None) -> BuildResult:
    """`build`: the FP32 bundle, plus the reduced-precision variants `request` asks for, plus TensorRT engines when
    `engines` is given. With variants or engines, the FP32 bundle is staged in a temporary directory next to
    `out_dir` and the final bundle written from it, so `out_dir` only ever holds a complete bundle."""
    if request.uniform == "fp32" and engines is None:
        return build_onnx_bundle(model, info, out_dir, options, init_seed=init_seed,
                                 checkpoint_path=checkpoint_path, progress=progress)
    from .bundle import load_bundle

    out = check_output(out_dir, options.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.fp32-", dir=out.parent) as tmp:
        staged = Path(tmp) / "fp32"
        result = build_onnx_bundle(model, info, staged, dataclasses.replace(options, overwrite=False),
                                   init_seed=init_seed, checkpoint_path=checkpoint_path, progress=progress)
        path = extend_bundle(load_bundle(staged), out, request, variants, engines, overwrite=options.overwrite,
                             workdir=Path(tmp), say=progress)
    return dataclasses.replace(result, path=path)


def extend_bundle(bundle: Bundle, out: Path, request: PrecisionPlan, variants: VariantOptions | None,
                  engines: BuildSettings | None, *, overwrite: bool, workdir: Path,
                  say: Progress | None = None) -> Path:
    """Write `bundle` to `out` with the variants `request` asks for, then engines for every variant (when `engines`
    is given). The bundle with variants is staged in `workdir` when engines follow."""
    from .bundle import load_bundle
    from .engine.bundle_engines import add_engines
    from .precision.variants import VariantOptions, add_variants

    if request.uniform != "fp32":
        target = out if engines is None else workdir / "variants"
        path = add_variants(bundle, request, target,
                            dataclasses.replace(variants or VariantOptions(), overwrite=overwrite and engines is None),
                            say=say)
        if engines is None:
            return path
        bundle = load_bundle(path)
    if engines is None:
        raise ConfigError("nothing to add to the bundle: ask for --precision other than fp32 or for --target tensorrt")
    return add_engines(bundle, out, engines, overwrite=overwrite, say=say)


# --- `diffv2iqa-trt build`: the request, checked before any work, then run ----------------------------------------


@dataclass(frozen=True)
class OutputError:
    """One output of one exported graph against torch (the build's check at batch CHECK_BATCH)."""

    graph: str
    output: str
    max_abs: float
    max_rel: float


def output_errors(result: BuildResult) -> list[OutputError]:
    """The FP32 graphs' outputs against torch, one row per graph output, from the build's check."""
    return [OutputError(graph, name, float(err["max_abs"]), float(err["max_rel"]))
            for graph, check in result.parity["fp32"].items() for name, err in check.items() if isinstance(err, dict)]


@dataclass(frozen=True)
class VariantRequest:
    """`build`'s precision-variant options as given (VariantOptions is what variant_options makes of them)."""

    calibration_images: tuple[Path, ...] = ()
    evaluation_images: tuple[Path, ...] = ()
    max_crops: int = 64
    methods: str = "entropy,max"  # comma-separated INT8 calibration methods
    min_srcc: float = 0.995
    max_delta: float = 0.02  # max |Δscore| as a fraction of the FP32 scores' range


def variant_options(request: PrecisionPlan, v: VariantRequest, overwrite: bool) -> VariantOptions | None:
    """The variant settings of a build, or None for an FP32 plan; checked before anything is exported (ConfigError
    naming the option)."""
    from .precision.evaluate import Budget
    from .precision.variants import VariantOptions, check_request

    if request.uniform == "fp32":
        if v.calibration_images or v.evaluation_images:
            raise ConfigError("--calib-images and --eval-images only apply with a --precision other than fp32")
        return None
    budget = Budget(v.min_srcc, v.max_delta)  # checks its range
    methods = tuple(m.strip() for m in v.methods.split(",") if m.strip())
    options = VariantOptions(calibration_images=v.calibration_images, evaluation_images=v.evaluation_images,
                             max_crops=v.max_crops, methods=methods, budget=budget,
                             overwrite=overwrite)
    check_request(request, options)
    return options


@dataclass(frozen=True)
class BuildRequest:
    """Everything `diffv2iqa-trt build` asks for."""

    out: Path
    options: BuildOptions = BuildOptions()
    precision: str = "fp32"  # a precision plan, `best` included
    variants: VariantRequest = VariantRequest()
    target: str = "onnx"  # onnx, tensorrt or auto (engine_settings_for_target)
    engines: BuildSettings | None = None  # engine options as given (None: the defaults)
    checkpoint: Path | None = None
    preset: str | None = None
    from_bundle: Path | None = None  # add variants or engines to this bundle instead of exporting


@dataclass(frozen=True)
class BuildOutcome:
    path: Path
    exported: BuildResult | None  # the export's lint and checks; None when an existing bundle was extended
    variants: bool  # precision variants were added
    engines: bool  # TensorRT engines were added
    bf16: bool = False  # OpenVINO's bf16 was measured and recorded (precision.bf16)


@dataclass(frozen=True)
class PreparedBuild:
    """A checked build request: `run` does the work (minutes to hours). `label` says what it does (a spinner's
    text); `untrained` names a model whose scores mean nothing (a warning to print), None otherwise."""

    request: BuildRequest
    plan: PrecisionPlan
    variants: VariantOptions | None
    engines: BuildSettings | None
    label: str
    untrained: str | None
    source: Any = None  # the model to export (reference.loading.LoadedModel) or the Bundle to extend

    def run(self, progress: Progress | None = None) -> BuildOutcome:
        from .reference.loading import LoadedModel

        r = self.request
        if self.label == BF16_LABEL:
            from .precision.bf16 import add_bf16
            from .precision.evaluate import Budget

            v = r.variants
            path = add_bf16(self.source, r.out, list(v.evaluation_images), budget=Budget(v.min_srcc, v.max_delta),
                            overwrite=r.options.overwrite, say=progress)
            return BuildOutcome(path, None, False, False, bf16=True)
        if isinstance(self.source, LoadedModel):
            m = self.source
            result = build_bundle(m.model, m.info, r.out, r.options, self.plan, self.variants, init_seed=m.init_seed,
                                  checkpoint_path=m.path, engines=self.engines, progress=progress)
            return BuildOutcome(result.path, result, self.plan.uniform != "fp32", self.engines is not None)
        target = Path(os.path.abspath(r.out))
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.work-", dir=target.parent) as work:
            path = extend_bundle(self.source, target, self.plan, self.variants, self.engines,
                                 overwrite=r.options.overwrite, workdir=Path(work), say=progress)
        return BuildOutcome(path, None, self.variants is not None, self.engines is not None)


BF16_LABEL = "measuring bf16"


def _prepare_bf16(request: BuildRequest) -> PreparedBuild:
    """`--precision bf16`: no graphs are built (bf16 is OpenVINO's run-time hint on the FP32 graphs); the source
    bundle's FP32 graphs are measured with it on --eval-images and the record is written into --out."""
    from .bundle import load_bundle
    from .precision_plan import PrecisionPlan

    if request.from_bundle is None:
        raise ConfigError("--precision bf16 measures OpenVINO's bf16 hint on a bundle's FP32 graphs: build the bundle "
                          "first, then pass --from-bundle B --eval-images DIR")
    if not request.variants.evaluation_images:
        raise ConfigError("--precision bf16 is measured on an evaluation set: pass --eval-images DIR (at least 8 "
                          "images, 50 or more recommended)")
    from .precision.evaluate import Budget

    Budget(request.variants.min_srcc, request.variants.max_delta)  # checks its range
    bundle = load_bundle(request.from_bundle)
    if os.path.abspath(request.out) != str(bundle.root):
        check_output(request.out, request.options.overwrite)
    elif not request.options.overwrite:
        raise ConfigError(f"--out is the source bundle {request.out}: pass --overwrite to replace it in place")
    return PreparedBuild(request, PrecisionPlan.uniform_plan("fp32"), None, None, BF16_LABEL, None, bundle)


def prepare_build(request: BuildRequest, note: Callable[[str], None] | None = None) -> PreparedBuild:
    """Check a build request before any work: the plan, the variant options, the engine target (`note` hears that
    --target auto skips engines), the output (in place only with --overwrite), then load the model (or the bundle to
    extend) and check the options against it. ConfigError, BundleError, DependencyError name the option to change."""
    from .engine.builder import BuildSettings
    from .engine.bundle_engines import settings_for_target
    from .precision_plan import parse_plan

    overwrite = request.options.overwrite
    if request.precision.strip() == "bf16":
        return _prepare_bf16(request)
    plan = parse_plan(request.precision, allow_best=True)
    variants = variant_options(plan, request.variants, overwrite)
    engines = settings_for_target(request.target, request.engines or BuildSettings(), note or (lambda _m: None))
    if request.from_bundle is not None:
        from .bundle import load_bundle

        if variants is None and engines is None:
            raise ConfigError("--from-bundle adds variants or engines: give a --precision other than fp32, or "
                              "--target tensorrt")
        bundle = load_bundle(request.from_bundle)
        if os.path.abspath(request.out) != str(bundle.root):
            check_output(request.out, overwrite)
        elif not overwrite:
            raise ConfigError(f"--out is the source bundle {request.out}: pass --overwrite to replace it in place")
        label = "adding variants" if engines is None else "adding engines"
        return PreparedBuild(request, plan, variants, engines, label, None, bundle)
    from .reference.loading import load_model

    check_output(request.out, overwrite)  # seconds, before a paper checkpoint takes minutes to load
    loaded = load_model(request.checkpoint, request.preset)
    request.options.check(loaded.model.config.crop_size, loaded.model.config.unet.size_multiple)
    return PreparedBuild(request, plan, variants, engines, "building", None if loaded.info.trained else loaded.label,
                         loaded)

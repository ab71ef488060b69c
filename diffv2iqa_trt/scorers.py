"""The scorer behind `diffv2iqa-trt score`: a pipeline chosen from the user's options, with the model's label.

With a bundle, the pipeline runs the bundle's graphs on a registered backend (ONNX Runtime by default, or the torch
reference from the weights the bundle carries); without one, the PyTorch reference runs a checkpoint, a preset or
the embedded demo model. The reference side (torch) is imported only in the second case.

How the CPU backend, precision and threads are decided with a bundle (auto_choice.py measures):
- no --backend, no --precision (or an explicit one): ONNX Runtime with the bundle's plan (fp32 unless the build
  chose another), bit-reproducible. Without --threads, the thread count comes from a cached self-benchmark of that
  backend and plan (ONNX Runtime's scores do not depend on it; on a 2-core machine one thread was 2x faster than
  two for the tiny bundle, two faster for the paper one).
- `--backend auto` or `--precision auto`: the fastest choice inside the bundle's accuracy budget (auto_choice), said
  in one line (`Scorer.notes`). `--backend auto --precision P`: the fastest backend running P; `--backend B
  --precision auto`: the fastest plan on B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ScoringConfig, check_seed, grid_size
from .errors import ConfigError, DiffV2IQAError
from .precision_plan import parse_plan
from .reference import backends as _reference_backends  # noqa: F401  (registers torch, torch-cuda; imports no torch)
from .runtime.backends import STREAM_BACKENDS
from .runtime.pipeline import ScoringPipeline, check_steps

DEFAULT_CROPS = "center"
DEFAULT_MODE = "crops"
DEFAULT_NOISE_SEED = 0
AUTO = "auto"  # --backend / --precision: let auto_choice decide (the default backend alone: choose_backend)

if TYPE_CHECKING:
    from .auto_choice import Choice


@dataclass(frozen=True)
class ScoreOptions:
    bundle: Path | None = None
    backend: str | None = None  # None: the default backend (choose_backend); "auto": auto_choice decides
    precision: str | None = None  # a precision plan; None: the bundle's chosen plan; "auto": auto_choice decides
    checkpoint: Path | None = None
    preset: str | None = None
    crops: str | None = None  # default: the bundle's, else DEFAULT_CROPS
    mode: str | None = None
    steps: int | None = None
    seed: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    threads: int | None = None
    streams: bool | None = None  # GPU stream backends: VCG and VDA on their own streams (default on)
    cuda_graph: bool | None = None  # GPU stream backends: capture and replay CUDA graphs (default on)
    lean_runtime: Path | None = None  # tensorrt: the lean runtime library --exclude-lean-runtime engines need


@dataclass(frozen=True)
class Scorer:
    pipeline: ScoringPipeline
    label: str  # the model, as users should see it (says UNTRAINED for random weights)
    trained: bool
    choice: Choice | None = None  # what auto_choice picked (auto, or the default path's thread count)
    notes: tuple[str, ...] = ()  # one line each for the user (stderr): the auto choice, an unmeasured bf16 plan

    @property
    def backend(self) -> str:
        return str(getattr(self.pipeline.executor, "name", "?"))

    @property
    def precision(self) -> str:
        """The precision plan the executor runs (fp32 for the torch reference)."""
        return str(getattr(self.pipeline.executor, "plan", "fp32"))


def choose_backend(backend: str | None, bundle: Path | None) -> str:
    """The backend that runs when none is named (None or "auto"): onnxruntime with a bundle, the torch reference
    without one. The one place this choice is made (the CLI's `score`, `load(backend="auto")`)."""
    if backend is not None and backend != AUTO:
        return backend
    return "onnxruntime" if bundle is not None else "torch"


def check_options(o: ScoreOptions) -> None:
    """The cheap checks, before a model or bundle is loaded and before any table is allocated: every option that
    would make the work unbounded or crash later is refused here with a ConfigError that names the option."""
    if o.steps is not None:
        check_steps(o.steps)
    if o.seed is not None:
        check_seed(o.seed)
    if o.crops is not None:
        grid_size(o.crops)
    if o.precision is not None:
        if o.precision != AUTO:
            parse_plan(o.precision)
        if o.bundle is None and o.precision != "fp32":
            raise ConfigError("--precision needs --bundle: without one the torch reference runs fp32")
    if AUTO in (o.backend, o.precision) and o.device != "cpu":
        raise ConfigError(f"auto chooses among the CPU backends (--device cpu); with --device {o.device} name "
                          "--backend and --precision")
    if o.mode is not None and o.mode not in ("crops", "faithful"):
        raise ConfigError(f"unknown mode {o.mode!r}; use crops or faithful (--mode)")
    if isinstance(o.batch_size, bool) or not isinstance(o.batch_size, int) or o.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {o.batch_size!r}")
    gpu_stream = o.backend in STREAM_BACKENDS
    if not gpu_stream and (o.streams is not None or o.cuda_graph is not None):
        raise ConfigError(f"--streams and --cuda-graph apply to the GPU backends ({', '.join(STREAM_BACKENDS)}), "
                          f"not to {o.backend or 'the default backend'}")
    if o.lean_runtime is not None and o.backend != "tensorrt":
        raise ConfigError("--lean-runtime applies to --backend tensorrt only")
    if gpu_stream and o.bundle is None:
        raise ConfigError(f"--backend {o.backend} needs --bundle (build one with `diffv2iqa-trt build`)")
    if gpu_stream and (o.device not in ("cpu", "cuda") or o.threads is not None):
        raise ConfigError(f"--backend {o.backend} runs on the current CUDA GPU (select it with CUDA_VISIBLE_DEVICES); "
                          "--device and --threads do not apply")


def open_scorer(o: ScoreOptions) -> Scorer:
    check_options(o)
    if o.bundle is not None:
        return _bundle_scorer(o)
    if choose_backend(o.backend, o.bundle) != "torch":
        raise ConfigError(f"--backend {o.backend} needs --bundle (build one with `diffv2iqa-trt build`)")
    from .reference.loading import load_model, reference_pipeline

    scoring = ScoringConfig(crops=o.crops or DEFAULT_CROPS, mode=o.mode or DEFAULT_MODE,
                            noise_seed=DEFAULT_NOISE_SEED if o.seed is None else o.seed)
    loaded = load_model(o.checkpoint, o.preset)
    pipeline = reference_pipeline(loaded.model, scoring, o.steps, o.batch_size, o.device)
    return Scorer(pipeline, loaded.label, loaded.info.trained)


def _bundle_scorer(o: ScoreOptions) -> Scorer:
    from . import auto_choice
    from .bundle import load_bundle
    from .precision.bf16 import bf16_note
    from .runtime.from_bundle import bundle_pipeline, bundle_stream_pipeline

    if o.checkpoint is not None or o.preset is not None or o.steps is not None:
        raise ConfigError("--checkpoint, --preset and --steps do not apply with --bundle: the bundle fixes the "
                          "model and its schedule")
    assert o.bundle is not None
    bundle = load_bundle(o.bundle)
    p = bundle.manifest.pipeline
    scoring = ScoringConfig(crops=o.crops or p.crops, mode=o.mode or p.mode,
                            noise_seed=p.noise.seed if o.seed is None else o.seed)
    pipeline: ScoringPipeline
    if o.backend in STREAM_BACKENDS:
        extra = {} if o.lean_runtime is None else {"lean_runtime": o.lean_runtime}
        pipeline = bundle_stream_pipeline(bundle, o.backend, precision=o.precision, scoring=scoring,
                                          batch_size=o.batch_size, streams=o.streams is not False,
                                          cuda_graph=o.cuda_graph is not False, **extra)
        return Scorer(pipeline, bundle.manifest.model.label, bundle.trained)
    backend, precision, threads, choice = o.backend, o.precision, o.threads, None
    notes: list[str] = []
    if AUTO in (o.backend, o.precision):
        choice = auto_choice.choose(bundle, backend=None if o.backend in (None, AUTO) else o.backend,
                                    precision=None if o.precision in (None, AUTO) else o.precision,
                                    threads=o.threads, batch=auto_choice.bench_batch(p.crop_size, o.batch_size))
        backend, precision, threads = choice.option.backend, choice.option.precision, choice.option.threads
        notes.append(choice.line())
    elif o.backend is None and o.threads is None and o.device == "cpu" and len(auto_choice.thread_options(None)) > 1:
        # (one CPU: one thread count, nothing to time)
        backend = choose_backend(None, o.bundle)
        try:
            choice = auto_choice.choose(bundle, backend=backend, precision=o.precision, threads_only=True,
                                        batch=auto_choice.bench_batch(p.crop_size, o.batch_size))
            threads = choice.option.threads
        except DiffV2IQAError:
            pass  # the backend's own thread default; the pipeline reports what is wrong where it always did
    backend = choose_backend(backend, o.bundle)
    pipeline = bundle_pipeline(bundle, backend, precision=precision, device=o.device, scoring=scoring,
                               batch_size=o.batch_size, threads=threads)
    note = bf16_note(bundle, bundle.run_plan(precision), backend)
    if note is not None:
        notes.append(f"note: {note}")
    return Scorer(pipeline, bundle.manifest.model.label, bundle.trained, choice, tuple(notes))

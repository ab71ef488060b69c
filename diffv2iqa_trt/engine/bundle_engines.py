"""`build --target tensorrt`: an engine for every ONNX variant TensorRT runs, written into a new bundle atomically.

For each graph and each of its fp32/fp16/int8 variants (int8-cpu is laid out for ONNX Runtime's CPU kernels and gets
no engine): build the engine, take its precision census and judge it against the ONNX (only a measured fallback of
known compute layers fails; unknown layers such as Myelin's are counted and reported), and record it in the
manifest with everything a loader needs to refuse it elsewhere. Any failure (parser, builder, census) stops the build
and writes nothing: the output is either the complete bundle with every engine or untouched.

Never run here: TensorRT cannot be installed on this project's machines. The decisions around the calls (which
jobs, what is recorded, the census rule, refusals) are plain Python and tested.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Bundle, EngineEntry, write_bundle
from ..bundle.manifest import ShapeRange
from ..bundle.schema import environment_versions, utc_timestamp
from ..contract import GRAPH_NAMES
from ..errors import BuildError, ConfigError, DependencyError, DiffV2IQAError
from .builder import BuildSettings, build_engine
from .census import judge, onnx_intent, parse_census
from .compatibility import Machine
from .gpu import GpuInfo, current_gpu
from .loader import lean_runtime_kind
from .profiles import InputProfile, input_profiles, polygraphy_command, trtexec_command
from .tensorrt_api import INSTALL_HINT, require_tensorrt, tensorrt_missing, tensorrt_version
from .timing_cache import TimingCacheFile, default_cache_path

Say = Callable[[str], None]
# Variants an engine is built from. int8-cpu is ONNX Runtime's CPU layout (uint8 activations, QDQ around every
# Conv/MatMul): the int8 variant is the TensorRT one.
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineJob:
    graph: str
    precision: str
    onnx_file: str

    @property
    def engine_file(self) -> str:
        return f"engines/{self.graph}.{self.precision}.plan"

    @property
    def layers_file(self) -> str:
        return f"engines/{self.graph}.{self.precision}.layers.json"


def engine_jobs(bundle: Bundle, precisions: Sequence[str] | None = None) -> list[EngineJob]:
    """The engines `build --target tensorrt` makes for a bundle: every variant in ENGINE_PRECISIONS (or in
    `precisions`), graph by graph."""
    wanted = ENGINE_PRECISIONS if precisions is None else tuple(p for p in ENGINE_PRECISIONS if p in precisions)
    return [EngineJob(g, p, bundle.graph(g).variants[p].file)
            for g in GRAPH_NAMES for p in bundle.precisions(g) if p in wanted]


def engines_unavailable() -> str | None:
    """Why no engine can be built here (no TensorRT, with how to install it; no usable GPU), or None."""
    reason = tensorrt_missing()
    if reason is not None:
        return f"{reason}. {INSTALL_HINT}"
    try:
        current_gpu()
    except DiffV2IQAError as exc:
        return str(exc)
    return None


ENGINE_TARGETS = ("onnx", "tensorrt", "auto")


def settings_for_target(target: str, settings: BuildSettings, note: Callable[[str], None]) -> BuildSettings | None:
    """The engine settings of a build for `--target` (onnx, tensorrt, auto), or None when no engines are built.
    Checked before anything is exported: engine options without an engine target are a ConfigError; --target tensorrt
    without TensorRT or a GPU is a DependencyError (exit 2, nothing written); --target auto then tells `note` that
    engines are skipped."""
    if target not in ENGINE_TARGETS:
        raise ConfigError(f"unknown --target {target!r}; use one of {', '.join(ENGINE_TARGETS)}")
    if target == "onnx":
        if settings != BuildSettings(fallback_allowance=settings.fallback_allowance):
            raise ConfigError("--timing-cache, --opt-level, --workspace-mib, --version-compatible, "
                              "--exclude-lean-runtime and --lean-runtime are TensorRT engine options: add --target "
                              "tensorrt (or auto)")
        return None
    settings.check()
    why = engines_unavailable()
    if why is None:
        return settings
    if target == "tensorrt":
        raise DependencyError(f"--target tensorrt: {why}")
    note(f"--target auto: engines skipped, writing the ONNX bundle only. {why}")
    return None


def engine_entry(job: EngineJob, source_sha256: str, machine: Machine, gpu: GpuInfo, settings: BuildSettings,
                 profiles: Sequence[InputProfile], built_seconds: float, device_memory_bytes: int,
                 census: dict[str, Any]) -> EngineEntry:
    """The manifest entry of one built engine (sha256 is stamped by write_bundle from the file)."""
    return EngineEntry(
        file=job.engine_file, tensorrt=machine.tensorrt, gpu=machine.gpu, sm=machine.sm, precision=job.precision,
        source_onnx=job.onnx_file, source_sha256=source_sha256, version_compatible=settings.version_compatible,
        flags=settings.flags(),
        # None, "embedded" or "external" (the loader then needs the lean runtime library of this TensorRT)
        lean_runtime=lean_runtime_kind(settings.version_compatible, settings.exclude_lean_runtime),
        device_memory_bytes=device_memory_bytes,
        profile={p.name: ShapeRange(min=p.min, opt=p.opt, max=p.max) for p in profiles},
        build_seconds=round(built_seconds, 3), layer_information=job.layers_file, census=census,
        extra={"gpu_memory_bytes": gpu.memory_bytes, "cuda_driver": gpu.driver, "cuda_runtime": gpu.runtime,
               "built": utc_timestamp(),
               "equivalent": {tool: make(job.onnx_file, job.engine_file, tuple(profiles), **_tool_options(settings))
                              for tool, make in (("trtexec", trtexec_command), ("polygraphy", polygraphy_command))}})


def _tool_options(settings: BuildSettings) -> dict[str, Any]:
    return {"opt_level": settings.opt_level, "workspace_mib": settings.workspace_mib,
            "timing_cache": None if settings.timing_cache is None else settings.timing_cache.name,
            "version_compatible": settings.version_compatible,
            "exclude_lean_runtime": settings.exclude_lean_runtime}


def add_engines(bundle: Bundle, out: str | Path, settings: BuildSettings, *, overwrite: bool = False,
                precisions: Sequence[str] | None = None, say: Say | None = None) -> Path:
    """Write `bundle` plus engines to `out` (which may be the bundle itself, with overwrite). DependencyError (exit
    2) before anything is built when TensorRT or a GPU is missing; BuildError when an engine cannot be built or its
    census fails; nothing is written then."""
    settings.check()
    require_tensorrt()
    import onnx
    import tensorrt as trt

    gpu = current_gpu()
    version = tensorrt_version(trt)
    machine = Machine(tensorrt=version.text, gpu=gpu.name, sm=gpu.sm)
    cache = TimingCacheFile(settings.timing_cache or default_cache_path(machine))
    cache.check()
    jobs = engine_jobs(bundle, precisions)
    if not jobs:
        raise BuildError(f"{bundle.root} has no variant TensorRT builds engines from ({', '.join(ENGINE_PRECISIONS)})")

    doc = bundle.manifest.to_dict()
    for key in ("files", "created", "toolkit_version"):
        doc.pop(key)
    doc["environment"] = environment_versions({
        "tensorrt_runtime": version.text, "gpu": gpu.name, "sm": gpu.sm, "cuda_driver": gpu.driver,
        "cuda_runtime": gpu.runtime})
    files: dict[str, Path] = {name: bundle.file_path(name) for name in bundle.manifest.files}
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.engines-", dir=out_path.parent) as tmp:
        for k, job in enumerate(jobs, 1):
            if say:
                say(f"engine {k}/{len(jobs)}: {job.graph} {job.precision} (TensorRT {version}, {gpu.name})")
            onnx_path = bundle.onnx_path(job.graph, job.precision)
            profiles = input_profiles(job.graph, bundle.graph(job.graph))
            built = build_engine(onnx_path, profiles, settings, cache)
            census = parse_census(built.layer_information)
            verdict = judge(census, onnx_intent(onnx.load(str(onnx_path), load_external_data=False)),
                            settings.fallback_allowance)
            if not verdict.ok:
                raise BuildError(f"the {job.precision} engine of {job.graph} fell back from the precision its ONNX "
                                 f"asks for: {'; '.join(verdict.problems)}. Nothing was written. Inspect "
                                 f"the layers with `polygraphy inspect model` on the engine, or accept it with a "
                                 f"larger --fallback-allowance")
            if say:
                for warning in verdict.warnings:  # reported, never a refusal (census.py)
                    say(f"engine {k}/{len(jobs)}: {job.graph} {job.precision} census: {warning}")
            plan = Path(tmp) / job.engine_file
            plan.parent.mkdir(parents=True, exist_ok=True)
            plan.write_bytes(built.plan)
            layers = Path(tmp) / job.layers_file
            layers.write_text(built.layer_information, encoding="utf-8")
            files[job.engine_file], files[job.layers_file] = plan, layers
            source = bundle.graph(job.graph).variants[job.precision].sha256
            entry = engine_entry(job, source, machine, gpu, settings, profiles, built.seconds,
                                 built.device_memory_bytes, {**census.to_dict(), "verdict": verdict.to_dict(),
                                                             "notes": list(built.notes)})
            doc["graphs"][job.graph]["engines"][job.precision] = entry.to_dict()
            if say:
                say(f"engine {k}/{len(jobs)}: {job.graph} {job.precision} built in {built.seconds:.1f} s, "
                    f"{len(built.plan) / 2**20:.1f} MiB, FP32 share {100 * verdict.fp32_share:.1f} %")
        return write_bundle(out_path, doc, files, overwrite=overwrite)

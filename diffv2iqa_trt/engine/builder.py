"""Build one strongly typed TensorRT engine from one ONNX file, and read back what TensorRT made of it.

The calls, in order: parse the ONNX (errors name the node), a builder config (optimisation level, workspace limit,
DETAILED profiling verbosity so the inspector reports layer formats, optional version-compatible / lean-runtime
flags, the timing cache), one optimisation profile from the manifest, `build_serialized_network`; then the timing
cache is merged back into its file, and the plan is deserialised once, an execution context given the profile's
optimal shapes, and the inspector's JSON read for the precision census. No precision flag is set anywhere: the types
come from the ONNX (TensorRT 11 has no other way, and 10.x builds the same engine this way).

Typed against the TensorRT 10.13 stubs; never run here (TensorRT cannot be installed on this project's machines).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError, ConfigError
from .profiles import InputProfile
from .tensorrt_api import TensorRTVersion, network_flags, require_tensorrt, tensorrt_version
from .timing_cache import TimingCacheFile

Say = Callable[[str], None]
MAX_PARSER_ERRORS = 10


@dataclass(frozen=True)
class BuildSettings:
    """Builder options shared by every engine of one `build`."""

    opt_level: int = 3  # TensorRT's builder optimisation level, 0-5 (3 is TensorRT's default)
    workspace_mib: int | None = None  # workspace pool limit; None: TensorRT's default (the device's memory)
    version_compatible: bool = False
    exclude_lean_runtime: bool = False  # with version_compatible: do not embed the lean runtime in the plan
    timing_cache: Path | None = None  # None: the per-TensorRT-and-GPU default file
    fallback_allowance: float = 0.05  # census: extra FP32 (or missing INT8) share of compute layers tolerated

    def check(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise ConfigError(f"--opt-level must be 0 to 5 (TensorRT's builder optimisation levels), got "
                              f"{self.opt_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ConfigError(f"--workspace-mib must be at least 1, got {self.workspace_mib}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ConfigError("--exclude-lean-runtime only applies to --version-compatible engines: add "
                              "--version-compatible or drop it")
        if not 0 <= self.fallback_allowance < 1:
            raise ConfigError(f"--fallback-allowance must be in [0, 1), got {self.fallback_allowance}")

    def flags(self) -> dict[str, Any]:
        """The options as the manifest records them."""
        return {"strongly_typed": True, "opt_level": self.opt_level, "workspace_mib": self.workspace_mib,
                "version_compatible": self.version_compatible, "exclude_lean_runtime": self.exclude_lean_runtime,
                "profiling_verbosity": "detailed"}


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    layer_information: str  # the inspector's JSON
    device_memory_bytes: int
    seconds: float
    tensorrt: TensorRTVersion
    notes: tuple[str, ...] = field(default=())


def _parse(parser: Any, onnx_path: Path) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for i in range(min(parser.num_errors, MAX_PARSER_ERRORS)):
        e = parser.get_error(i)
        node = e.node_name() or (f"node #{e.node()}" if e.node() >= 0 else "the model")
        errors.append(f"{node} ({e.node_operator() or '?'}): {e.desc()}")
    more = f" (and {parser.num_errors - MAX_PARSER_ERRORS} more)" if parser.num_errors > MAX_PARSER_ERRORS else ""
    raise BuildError(f"TensorRT's ONNX parser refused {onnx_path.name}: " + "; ".join(errors) + more +
                     ". Check the bundle's TensorRT lint (`diffv2iqa-trt inspect`) for this graph")


def build_engine(onnx_path: Path, profiles: tuple[InputProfile, ...], settings: BuildSettings,
                 cache: TimingCacheFile) -> BuiltEngine:
    """Build, merge the timing cache, and inspect. BuildError when TensorRT refuses the ONNX or cannot build."""
    require_tensorrt()
    import tensorrt as trt

    version = tensorrt_version(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(version))
    parser = trt.OnnxParser(network, logger)
    _parse(parser, onnx_path)

    config = builder.create_builder_config()
    config.builder_optimization_level = settings.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if settings.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    notes: list[str] = []
    timing = config.create_timing_cache(cache.read())
    if not config.set_timing_cache(timing, False):
        notes.append(f"timing cache {cache.path} does not match this TensorRT/GPU; started an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), False)

    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path.name} (its log above says why); try a "
                         "larger --workspace-mib or another --opt-level")
    plan_bytes = bytes(memoryview(plan))

    def combine(current: bytes, new: bytes) -> bytes:
        merged = config.create_timing_cache(current)
        merged.combine(config.create_timing_cache(new), True)
        return bytes(memoryview(merged.serialize()))

    cache.merge(bytes(memoryview(config.get_timing_cache().serialize())), combine)

    runtime = trt.Runtime(logger)
    if settings.version_compatible:
        runtime.engine_host_code_allowed = True  # a version-compatible plan carries its own lean runtime
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise BuildError(f"TensorRT built {onnx_path.name} but cannot load the plan it wrote")
    context = engine.create_execution_context()
    for p in profiles:
        context.set_input_shape(p.name, trt.Dims(list(p.opt)))  # without shapes the inspector reports no formats
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return BuiltEngine(plan=plan_bytes, layer_information=info, device_memory_bytes=int(engine.device_memory_size_v2),
                       seconds=seconds, tensorrt=version, notes=tuple(notes))

"""Build one strongly typed TensorRT engine from one ONNX file, and read back what TensorRT made of it.

`build_engine` runs six small steps, each testable alone with a fake TensorRT module:
1. `parse_onnx`: the network from the ONNX (errors name the node);
2. `configure`: a builder config (optimisation level, workspace limit, DETAILED profiling verbosity so the inspector
   reports layer formats, optional version-compatible / lean-runtime flags, the timing cache);
3. `add_profile`: one optimisation profile from the manifest;
4. `build_plan`: `build_serialized_network`;
5. `merge_timing_cache`: what the build learnt, merged back into the cache file;
6. `inspect_plan`: the plan deserialised once, an execution context given the profile's optimal shapes (every
   `set_input_shape` checked), the inspector's JSON read, and context, inspector and engine freed before returning
   (a long build must not leave an engine's memory behind for the next one).
No precision flag is set anywhere: the types come from the ONNX (TensorRT 11 has no other way, and 10.x builds the
same engine this way).

Typed against the TensorRT 10.13 stubs; never run here (TensorRT cannot be installed on this project's machines).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError, ConfigError
from .loader import load_lean_runtime
from .profiles import InputProfile
from .tensorrt_api import TensorRTVersion, network_flags, require_tensorrt, tensorrt_version
from .timing_cache import TimingCacheFile

if TYPE_CHECKING:
    import tensorrt as trt

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
    # With exclude_lean_runtime: the lean runtime library of the building TensorRT (libnvinfer_lean.so.<major>),
    # which TensorRT needs to deserialise the plan for its inspection (Runtime.load_runtime).
    lean_runtime: Path | None = None

    def check(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise ConfigError(f"--opt-level must be 0 to 5 (TensorRT's builder optimisation levels), got "
                              f"{self.opt_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ConfigError(f"--workspace-mib must be at least 1, got {self.workspace_mib}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ConfigError("--exclude-lean-runtime only applies to --version-compatible engines: add "
                              "--version-compatible or drop it")
        if self.exclude_lean_runtime and self.lean_runtime is None:
            raise ConfigError("--exclude-lean-runtime engines carry no lean runtime, so TensorRT needs one from a "
                              "file to load them (even to inspect them after the build): add --lean-runtime PATH, "
                              "the lean runtime library of this TensorRT (libnvinfer_lean.so.<major>)")
        if self.lean_runtime is not None and not self.exclude_lean_runtime:
            raise ConfigError("--lean-runtime is only used with --exclude-lean-runtime: drop it, or add "
                              "--version-compatible --exclude-lean-runtime")
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


def _parse(parser: trt.OnnxParser, onnx_path: Path) -> None:
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


def parse_onnx(builder: trt.Builder, logger: trt.ILogger, onnx_path: Path,
               flags: int) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Step 1: (network, parser); the parser must outlive the network (it owns the weights the network refers to)."""
    import tensorrt as trt

    network = builder.create_network(flags)
    if network is None:
        raise BuildError(f"TensorRT could not create a network for {onnx_path.name} (its log above says why)")
    parser = trt.OnnxParser(network, logger)
    _parse(parser, onnx_path)
    return network, parser


def configure(builder: trt.Builder, settings: BuildSettings,
              cache: TimingCacheFile) -> tuple[trt.IBuilderConfig, list[str]]:
    """Step 2: the builder config, and notes for the manifest (a timing cache that did not match)."""
    import tensorrt as trt

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
    return config, notes


def add_profile(builder: trt.Builder, config: trt.IBuilderConfig, profiles: tuple[InputProfile, ...]) -> None:
    """Step 3: one optimisation profile with every input's min/opt/max shapes."""
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    if config.add_optimization_profile(profile) < 0:
        raise BuildError(f"TensorRT refused the optimisation profile {[p.name for p in profiles]} (its log above "
                         "says why); check the profiles in the bundle's manifest")


def build_plan(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
               onnx_path: Path) -> tuple[bytes, float]:
    """Step 4: the serialised engine and the seconds the build took."""
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path.name} (its log above says why); try a "
                         "larger --workspace-mib or another --opt-level")
    plan_bytes = bytes(memoryview(plan))
    del plan  # the host copy TensorRT made (as large as the engine)
    return plan_bytes, seconds


def merge_timing_cache(config: trt.IBuilderConfig, cache: TimingCacheFile) -> None:
    """Step 5: fold what this build timed into the cache file (under its lock, see timing_cache.py)."""
    def combine(current: bytes, new: bytes) -> bytes:
        merged = config.create_timing_cache(current)
        merged.combine(config.create_timing_cache(new), True)
        return bytes(memoryview(merged.serialize()))

    cache.merge(bytes(memoryview(config.get_timing_cache().serialize())), combine)


@dataclass(frozen=True)
class Inspection:
    layer_information: str  # the inspector's JSON
    device_memory_bytes: int  # ICudaEngine.device_memory_size_v2: what one execution context needs at most


def inspect_plan(logger: trt.ILogger, plan: bytes, profiles: tuple[InputProfile, ...], settings: BuildSettings,
                 name: str) -> Inspection:
    """Step 6: deserialise the plan, set the profile's optimal shapes on a context (without shapes the inspector
    reports no formats), read the layer information; the context, inspector, engine and runtime(s) are released
    in that order before returning, also when a check fails."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    lean: trt.Runtime | None = None
    reader: trt.Runtime | None = None
    engine: trt.ICudaEngine | None = None
    context: trt.IExecutionContext | None = None
    inspector: trt.EngineInspector | None = None
    try:
        if settings.exclude_lean_runtime and settings.lean_runtime is not None:
            lean = load_lean_runtime(runtime, settings.lean_runtime)
        reader = lean if lean is not None else runtime  # load_lean_runtime already allowed the lean one host code
        if settings.version_compatible and lean is None:
            reader.engine_host_code_allowed = True  # a version-compatible plan runs its own lean runtime
        engine = reader.deserialize_cuda_engine(plan)
        if engine is None:
            raise BuildError(f"TensorRT built {name} but cannot load the plan it wrote (its log above says why)")
        context = engine.create_execution_context()
        if context is None:  # the bindings return None when TensorRT fails (e.g. no memory left after the build)
            raise BuildError(f"TensorRT built {name} but could not create an execution context to inspect it (its "
                             "log above says why; often the GPU's memory): the engine was not written")
        for p in profiles:
            if not context.set_input_shape(p.name, trt.Dims(list(p.opt))):
                raise BuildError(f"the {name} engine refused its own optimal shape {list(p.opt)} for input "
                                 f"{p.name} (its log above says why)")
        inspector = engine.create_engine_inspector()
        if inspector is None:
            raise BuildError(f"TensorRT could not create an engine inspector for {name} (its log above says why)")
        inspector.execution_context = context
        info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        if not info:
            raise BuildError(f"the engine inspector returned no layer information for {name} (its log above says "
                             "why)")
        return Inspection(layer_information=info, device_memory_bytes=int(engine.device_memory_size_v2))
    finally:
        # Dependants first: the inspector refers to the context, the context to the engine, the engine to the
        # runtime that deserialised it, a lean runtime to its parent.
        del inspector, context, engine, reader, lean, runtime


def build_engine(onnx_path: Path, profiles: tuple[InputProfile, ...], settings: BuildSettings,
                 cache: TimingCacheFile) -> BuiltEngine:
    """Build, merge the timing cache, and inspect. BuildError when TensorRT refuses the ONNX or cannot build."""
    require_tensorrt()
    import tensorrt as trt

    version = tensorrt_version(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(builder, logger, onnx_path, network_flags(version))
    config, notes = configure(builder, settings, cache)
    add_profile(builder, config, profiles)
    plan, seconds = build_plan(builder, network, config, onnx_path)
    merge_timing_cache(config, cache)
    del network, parser  # the build's graph and weights are no longer needed; the config holds the timing cache
    del config, builder
    found = inspect_plan(logger, plan, profiles, settings, onnx_path.name)
    return BuiltEngine(plan=plan, layer_information=found.layer_information,
                       device_memory_bytes=found.device_memory_bytes, seconds=seconds, tensorrt=version,
                       notes=tuple(notes))

"""The optimisation profile of a graph's engine, read from the manifest: min/opt/max shapes of every input.

The manifest lists min/opt/max only for inputs with a dynamic dimension (batch; height and width for restore_step);
an input of fixed shape gets its one shape at all three levels. The same shapes give the trtexec/polygraphy command
lines the README quotes, so a user can build the same engine by hand and compare.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle import GraphEntry
from ..errors import BundleError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape


def input_profiles(graph: str, entry: GraphEntry) -> tuple[InputProfile, ...]:
    """One profile per input, in the graph's input order. BundleError when an input with a dynamic dimension has no
    shapes or the shapes do not fit the input (the manifest's validation already refuses both; this guards callers
    that build entries by hand)."""
    out = []
    for spec in entry.inputs:
        if spec.name in entry.profiles.min:
            lo, opt, hi = (tuple(level[spec.name]) for level in
                           (entry.profiles.min, entry.profiles.opt, entry.profiles.max))
        elif all(isinstance(d, int) for d in spec.shape):
            lo = opt = hi = tuple(int(d) for d in spec.shape)
        else:
            raise BundleError(f"graph {graph!r}: input {spec.name!r} has dynamic shape {list(spec.shape)} but the "
                              "manifest gives no min/opt/max shapes for it; rebuild the bundle")
        for level, shape in (("min", lo), ("opt", opt), ("max", hi)):
            if not spec.matches(shape):
                raise BundleError(f"graph {graph!r}: {level} shape {list(shape)} of input {spec.name!r} does not fit "
                                  f"its declared shape {list(spec.shape)}; rebuild the bundle")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise BundleError(f"graph {graph!r}: input {spec.name!r} needs min <= opt <= max on every axis, got "
                              f"{list(lo)} / {list(opt)} / {list(hi)}; rebuild the bundle")
        out.append(InputProfile(spec.name, lo, opt, hi))
    return tuple(out)


def _shapes_arg(profiles: tuple[InputProfile, ...], level: str) -> str:
    return ",".join(f"{p.name}:{'x'.join(map(str, getattr(p, level)))}" for p in profiles)


def trtexec_command(onnx_file: str, engine_file: str, profiles: tuple[InputProfile, ...], *, opt_level: int,
                    workspace_mib: int | None, timing_cache: str | None, version_compatible: bool,
                    exclude_lean_runtime: bool) -> str:
    """The trtexec command line that builds the same engine as `build --target tensorrt` (strongly typed, same
    profile and builder options, detailed layer information)."""
    parts = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}", "--stronglyTyped",
             f"--minShapes={_shapes_arg(profiles, 'min')}", f"--optShapes={_shapes_arg(profiles, 'opt')}",
             f"--maxShapes={_shapes_arg(profiles, 'max')}", f"--builderOptimizationLevel={opt_level}",
             "--profilingVerbosity=detailed"]
    if workspace_mib is not None:
        parts.append(f"--memPoolSize=workspace:{workspace_mib}M")
    if timing_cache is not None:
        parts.append(f"--timingCacheFile={timing_cache}")
    if version_compatible:
        parts.append("--versionCompatible")
        if exclude_lean_runtime:
            parts.append("--excludeLeanRuntime")
    return " ".join(parts)


def polygraphy_command(onnx_file: str, engine_file: str, profiles: tuple[InputProfile, ...], *, opt_level: int,
                       workspace_mib: int | None, timing_cache: str | None, version_compatible: bool,
                       exclude_lean_runtime: bool) -> str:
    """The `polygraphy convert` command line that builds the same engine."""
    parts = ["polygraphy", "convert", onnx_file, "--convert-to", "trt", "-o", engine_file, "--strongly-typed"]
    for p in profiles:
        parts += ["--trt-min-shapes", f"{p.name}:{list(p.min)}".replace(" ", ""),
                  "--trt-opt-shapes", f"{p.name}:{list(p.opt)}".replace(" ", ""),
                  "--trt-max-shapes", f"{p.name}:{list(p.max)}".replace(" ", "")]
    parts += ["--builder-optimization-level", str(opt_level), "--profiling-verbosity", "detailed"]
    if workspace_mib is not None:
        parts += ["--pool-limit", f"workspace:{workspace_mib}M"]
    if timing_cache is not None:
        parts += ["--load-timing-cache", timing_cache, "--save-timing-cache", timing_cache]
    if version_compatible:
        parts.append("--version-compatible")
        if exclude_lean_runtime:
            parts.append("--exclude-lean-runtime")
    return " ".join(parts)

"""The typed manifest: what `manifest.json` holds, as frozen dataclasses a type checker can see.

`Manifest.from_dict` validates a parsed document (JSON Schema, then the cross-field rules in `schema.py`) and builds
the typed view; `to_dict` gives back plain JSON. Free-form parts stay mappings: the model config (the config module
owns it), the build environment, lint and parity reports, the extra fields of variant entries, and the
informational fields of engine entries (those that decide loading or refusal are typed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..contract import GRAPH_NAMES, PRECISIONS, GraphIO, TensorSpec
from .schema import validate_manifest


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class ModelSection:
    name: str
    config: Mapping[str, Any]  # diffv2iqa_trt.config.ModelConfig.to_dict()
    trained: bool
    description: str
    checkpoint_sha256: str | None
    checkpoint: str | None = None  # the native checkpoint shipped in the bundle (a key of files)
    init_seed: int | None = None  # for seeded random weights

    @property
    def label(self) -> str:
        return self.name if self.trained else f"{self.name} (UNTRAINED: {self.description})"

    def to_dict(self) -> dict[str, Any]:
        doc = {"name": self.name, "config": dict(self.config), "trained": self.trained,
               "description": self.description, "checkpoint_sha256": self.checkpoint_sha256}
        # Optional in the schema: written only when set.
        optional = {"checkpoint": self.checkpoint, "init_seed": self.init_seed}
        return doc | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSection:
        return cls(name=d["name"], config=d["config"], trained=d["trained"], description=d["description"],
                   checkpoint_sha256=d["checkpoint_sha256"], checkpoint=d.get("checkpoint"),
                   init_seed=d.get("init_seed"))


@dataclass(frozen=True)
class NoiseSection:
    generator: str
    seed: int
    test_vectors: Mapping[str, Any]  # first values of rows 0 and T and every row's sha256, at crop size


@dataclass(frozen=True)
class FusionSection:
    vcg_weight: float
    vda_weight: float


@dataclass(frozen=True)
class NormalisationSection:
    """x = (float32(v) / divisor - mean) / std, in float32, in this order."""

    formula: str
    divisor: float
    mean: float
    std: float


@dataclass(frozen=True)
class PipelineSection:
    steps: int
    capture_t1: int
    capture_t2: int
    gamma: tuple[float, ...]  # (steps,)
    coef: tuple[tuple[float, ...], ...]  # (steps, len(coef_names))
    coef_names: tuple[str, ...]
    noise: NoiseSection
    crop_size: int
    size_multiple: int
    crops: str
    mode: str
    fusion: FusionSection
    normalisation: NormalisationSection
    uint8_roundtrip: bool
    resize: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "capture_t1": self.capture_t1, "capture_t2": self.capture_t2,
            "gamma": list(self.gamma), "coef": [list(row) for row in self.coef], "coef_names": list(self.coef_names),
            "noise": {"generator": self.noise.generator, "seed": self.noise.seed,
                      "test_vectors": dict(self.noise.test_vectors)},
            "resize": self.resize,
            "crop_size": self.crop_size, "size_multiple": self.size_multiple, "crops": self.crops, "mode": self.mode,
            "fusion": {"vcg_weight": self.fusion.vcg_weight, "vda_weight": self.fusion.vda_weight},
            "normalisation": {"formula": self.normalisation.formula, "divisor": self.normalisation.divisor,
                              "mean": self.normalisation.mean, "std": self.normalisation.std},
            "uint8_roundtrip": self.uint8_roundtrip,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineSection:
        n = d["normalisation"]
        return cls(
            steps=d["steps"], capture_t1=d["capture_t1"], capture_t2=d["capture_t2"],
            gamma=tuple(float(v) for v in d["gamma"]), coef=tuple(tuple(float(v) for v in row) for row in d["coef"]),
            coef_names=tuple(d["coef_names"]),
            noise=NoiseSection(d["noise"]["generator"], d["noise"]["seed"], d["noise"]["test_vectors"]),
            resize=d["resize"],
            crop_size=d["crop_size"], size_multiple=d["size_multiple"], crops=d["crops"], mode=d["mode"],
            fusion=FusionSection(float(d["fusion"]["vcg_weight"]), float(d["fusion"]["vda_weight"])),
            normalisation=NormalisationSection(n["formula"], float(n["divisor"]), float(n["mean"]), float(n["std"])),
            uint8_roundtrip=d["uint8_roundtrip"],
        )


Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Profiles:
    """A TensorRT optimisation profile: min/opt/max shapes of every input with a dynamic dimension."""

    min: Shapes
    opt: Shapes
    max: Shapes

    def to_dict(self) -> dict[str, Any]:
        return {level: {k: list(v) for k, v in shapes.items()}
                for level, shapes in (("min", self.min), ("opt", self.opt), ("max", self.max))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profiles:
        def shapes(level: str) -> dict[str, tuple[int, ...]]:
            return {k: tuple(v) for k, v in d[level].items()}

        return cls(min=shapes("min"), opt=shapes("opt"), max=shapes("max"))


@dataclass(frozen=True)
class VariantEntry:
    """One ONNX file of a graph at one precision; `extra` holds how it was made (recipe, calibration, accuracy).
    `sha256` repeats the file's hash (filled in by write_bundle; empty until then)."""

    file: str
    opset: int
    precision: str
    sha256: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = {**self.extra, "file": self.file, "opset": self.opset, "precision": self.precision}
        return doc | ({"sha256": self.sha256} if self.sha256 else {})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariantEntry:
        known = ("file", "opset", "precision", "sha256")
        return cls(file=d["file"], opset=d["opset"], precision=d["precision"], sha256=d.get("sha256", ""),
                   extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class ShapeRange:
    """The min/opt/max shapes of one input in an engine's optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeRange:
        return cls(min=tuple(d["min"]), opt=tuple(d["opt"]), max=tuple(d["max"]))


_ENGINE_FIELDS = ("file", "tensorrt", "gpu", "sm", "precision", "sha256", "source_onnx", "source_sha256",
                  "version_compatible", "flags", "lean_runtime", "device_memory_bytes", "profile", "build_seconds",
                  "census", "layer_information")


@dataclass(frozen=True, kw_only=True)
class EngineEntry:
    """One TensorRT engine of a graph at one precision: where it was built (TensorRT, GPU), what it was built from,
    and what a loader needs to refuse or run it. `sha256` repeats the file's hash (stamped by write_bundle; empty
    until then). `extra` holds the informational fields nothing decides on (CUDA versions, build time, the
    equivalent trtexec/polygraphy commands)."""

    file: str
    tensorrt: str
    gpu: str
    sm: str
    precision: str
    source_onnx: str  # the ONNX variant it was built from, and that file's sha256 then
    source_sha256: str
    version_compatible: bool
    flags: Mapping[str, Any]  # builder options (BuildSettings.flags())
    device_memory_bytes: int
    profile: Mapping[str, ShapeRange]  # per input, in the graph's input order
    build_seconds: float
    census: Mapping[str, Any]  # engine/census.py: layers by precision and the verdict
    sha256: str = ""
    lean_runtime: str | None = None  # schema.LEAN_RUNTIME_KINDS
    layer_information: str | None = None  # the engine inspector's JSON, a bundle file
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = {**self.extra, "file": self.file, "tensorrt": self.tensorrt, "gpu": self.gpu, "sm": self.sm,
               "precision": self.precision, "source_onnx": self.source_onnx, "source_sha256": self.source_sha256,
               "version_compatible": self.version_compatible, "flags": dict(self.flags),
               "lean_runtime": self.lean_runtime, "device_memory_bytes": self.device_memory_bytes,
               "profile": {name: r.to_dict() for name, r in self.profile.items()},
               "build_seconds": self.build_seconds, "census": dict(self.census)}
        # Optional in the schema: written only when set.
        optional = {"layer_information": self.layer_information, "sha256": self.sha256 or None}
        return doc | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineEntry:
        """The entry of a validated manifest (schema.py checks every typed field first)."""
        return cls(file=d["file"], tensorrt=d["tensorrt"], gpu=d["gpu"], sm=d["sm"], precision=d["precision"],
                   source_onnx=d["source_onnx"], source_sha256=d["source_sha256"],
                   version_compatible=d["version_compatible"], flags=d["flags"],
                   device_memory_bytes=d["device_memory_bytes"],
                   profile={name: ShapeRange.from_dict(r) for name, r in d["profile"].items()},
                   build_seconds=d["build_seconds"], census=d["census"], sha256=d.get("sha256", ""),
                   lean_runtime=d.get("lean_runtime"), layer_information=d.get("layer_information"),
                   extra={k: v for k, v in d.items() if k not in _ENGINE_FIELDS})


def _tensor(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class GraphEntry(GraphIO):
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: Profiles
    variants: Mapping[str, VariantEntry]
    engines: Mapping[str, EngineEntry] = field(default_factory=dict)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions with an ONNX variant, in the order of contract.PRECISIONS."""
        return tuple(p for p in PRECISIONS if p in self.variants)

    @property
    def engine_precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.engines)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "profiles": self.profiles.to_dict(),
                "variants": {p: v.to_dict() for p, v in self.variants.items()},
                "engines": {p: e.to_dict() for p, e in self.engines.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GraphEntry:
        return cls(inputs=tuple(_tensor(t) for t in d["inputs"]), outputs=tuple(_tensor(t) for t in d["outputs"]),
                   profiles=Profiles.from_dict(d["profiles"]),
                   variants={p: VariantEntry.from_dict(v) for p, v in d["variants"].items()},
                   engines={p: EngineEntry.from_dict(e) for p, e in d["engines"].items()})


@dataclass(frozen=True)
class PrecisionSection:
    """The plan a build chose (graph -> precision), what it was asked for, and its free-form report."""

    plan: Mapping[str, str]
    requested: str
    report: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": dict(self.plan), "requested": self.requested, "report": dict(self.report)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionSection:
        return cls(plan=dict(d["plan"]), requested=d["requested"], report=d["report"])


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json. Build one with `from_dict` (which validates); `to_dict` is its JSON."""

    schema: str
    schema_version: int
    toolkit_version: str
    created: str
    model: ModelSection
    pipeline: PipelineSection
    graphs: Mapping[str, GraphEntry]
    files: Mapping[str, FileEntry]
    environment: Mapping[str, str | None]
    lint: Mapping[str, Any] | None
    parity: Mapping[str, Any] | None
    precision: PrecisionSection | None = None
    golden: Mapping[str, Any] | None = None  # golden.py: test inputs and their scores (None: the build made none)

    @classmethod
    def from_dict(cls, doc: Any, *, source: str | os.PathLike[str] | None = None) -> Manifest:
        """Validate `doc` (parsed JSON) and build the typed manifest; BundleError naming `source` otherwise."""
        validate_manifest(doc, source=source)
        return cls(
            schema=doc["schema"], schema_version=doc["schema_version"], toolkit_version=doc["toolkit_version"],
            created=doc["created"], model=ModelSection.from_dict(doc["model"]),
            pipeline=PipelineSection.from_dict(doc["pipeline"]),
            graphs={g: GraphEntry.from_dict(doc["graphs"][g]) for g in GRAPH_NAMES},
            files={name: FileEntry(e["sha256"], e["bytes"]) for name, e in doc["files"].items()},
            environment=dict(doc["environment"]), lint=doc["lint"], parity=doc["parity"],
            precision=None if doc["precision"] is None else PrecisionSection.from_dict(doc["precision"]),
            golden=doc["golden"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "schema_version": self.schema_version, "toolkit_version": self.toolkit_version,
            "created": self.created, "model": self.model.to_dict(), "pipeline": self.pipeline.to_dict(),
            "graphs": {g: e.to_dict() for g, e in self.graphs.items()},
            "files": {n: f.to_dict() for n, f in self.files.items()}, "environment": dict(self.environment),
            "lint": self.lint, "parity": self.parity,
            "precision": None if self.precision is None else self.precision.to_dict(),
            "golden": self.golden,
        }

"""The precision census: which precision each compute layer of a built engine really runs in, against what its ONNX
asked for.

A strongly typed engine follows the types in its ONNX, yet a "fast" engine can still run slow: a Q/DQ pair TensorRT
cannot fuse leaves its convolution in FP16 or FP32, an unsupported FP16 pattern falls back. The engine inspector's
layer information (JSON, profiling verbosity DETAILED, read with an execution context whose input shapes are set)
names each layer's input and output tensors with their formats; the census sorts every layer into one of three
classes by its type:
- compute (convolutions, matrix multiplies), counted by the precision of their inputs;
- known other layers (reformats, shuffles, pointwise, softmax, pooling, ...), counted only;
- unknown: any layer the rules do not classify, above all TensorRT's Myelin layers ("LayerType": "Myelin", named
  "{ForeignNode[...]}"), which fuse whole transformer blocks (most of the ViT) into one opaque layer. They are counted
  and reported by type, never judged: the precision they run in is not visible in the layer information.

The rule: a build fails only on a measured fallback of known compute layers: their FP32 share exceeds the ONNX's FP32
share by more than the allowance, or (int8 variants) their INT8 share falls short of the ONNX's by more than the
allowance. Unknown layers and compute layers whose tensors name no precision are reported as warnings, never a
refusal: the rules have not been checked against a real engine's inspector output (RULES_CHECKED_AGAINST, recorded
in every engine entry). Layer names and counts do not match one to one (TensorRT fuses), so shares are compared, not
names.

Both inspector schemas are read: TensorRT 10.x writes one "Format/Datatype" string per tensor ("Row major linear
FP32 format", "Thirty-two wide channel vectorized row major Int8 format"); TensorRT 11.x splits it into "Format" and
"DataType". Plain Python, tested on JSON written by hand from TensorRT's documented format (no engine was built).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Lower is faster; only floating and quantised types count (index tensors such as Int32/Int64/Bool do not).
RANK = {"int4": 0, "fp4": 0, "int8": 1, "fp8": 1, "fp16": 2, "bf16": 2, "fp32": 3}
REDUCED = tuple(p for p in RANK if p != "fp32")
# The TensorRT version whose real inspector output the classification rules were checked against: "none" until an
# engine has been built and its layer information read (then: that version, and the rules fixed to match it).
RULES_CHECKED_AGAINST = "none"
# Layer classes, matched on the lower-cased "LayerType ParameterType" text. Opaque fused layers first: a Myelin layer
# may carry words such as "gemm" in its parameters, and must still count as unknown.
_OPAQUE = re.compile(r"myelin|foreignnode|kgen")
_COMPUTE = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected")
_OTHER = re.compile(r"reformat|shuffle|noop|constant|slice|softmax|reduce|pool|pointwise|elementwise|activation|"
                    r"scale|resize|concat|gather|scatter|padding|cast|identity|unary|select|fill|shape|normali[sz]|"
                    r"topk|quantiz|signal|wait|trainstation|assertion|copy|squeeze|cumulative|onehot|nonzero|"
                    r"reverse|lrn|gridsample")
ONNX_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_SHOWN = 12  # fallen-back layer names kept in the report


def tensor_precision(text: str) -> str | None:
    """The precision a tensor format or data-type text names ("Half", "Row major linear FP32 format", "Float"), or
    None (unknown: index types, "N/A due to dynamic shapes")."""
    t = text.lower()
    for pattern, precision in ((r"bf16|bfloat16", "bf16"), (r"\bint4\b", "int4"), (r"\bfp4\b|e2m1", "fp4"),
                               (r"\bint8\b", "int8"), (r"\bfp8\b|e4m3|e5m2", "fp8"),
                               (r"\bhalf\b|\bfp16\b|float16", "fp16"), (r"\bfp32\b|\bfloat\b|float32", "fp32")):
        if re.search(pattern, t):
            return precision
    return None


def _tensor_text(desc: Any) -> str:
    if not isinstance(desc, Mapping):
        return ""
    # 11.x: "DataType" on its own; 10.x: "Format/Datatype".
    return str(desc.get("DataType") or desc.get("Format/Datatype") or "")


def _kind(layer: Mapping[str, Any]) -> str:
    return f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()


def layer_class(layer: Mapping[str, Any]) -> str:
    """"compute", "other" (a layer type the rules know that is not a convolution or matrix multiply) or "unknown"
    (Myelin/ForeignNode layers, generated kernels, and any type the rules do not know)."""
    kind = _kind(layer)
    if _OPAQUE.search(kind) or str(layer.get("Name", "")).startswith("{ForeignNode"):
        return "unknown"
    if _COMPUTE.search(kind):
        return "compute"
    return "other" if _OTHER.search(kind) else "unknown"


def is_compute_layer(layer: Mapping[str, Any]) -> bool:
    return layer_class(layer) == "compute"


def layer_precision(layer: Mapping[str, Any]) -> str | None:
    """The lowest precision among a layer's inputs (what its kernel reads), else among its outputs; None if no tensor
    names one."""
    for side in ("Inputs", "Outputs"):
        found = [p for d in layer.get(side) or () if (p := tensor_precision(_tensor_text(d))) is not None]
        if found:
            return min(found, key=RANK.__getitem__)
    return None


@dataclass(frozen=True)
class Census:
    """Layers of one engine by class, and its compute layers by precision ("unknown": no tensor names one)."""

    layers: int
    compute: Mapping[str, int]
    fp32_layers: tuple[str, ...]
    schema: str  # "10.x" or "11.x": which inspector JSON layout was read
    other: int = 0  # layers of a known type that is not a compute layer
    unknown: Mapping[str, int] = field(default_factory=dict)  # unclassified layers, by their LayerType

    @property
    def compute_total(self) -> int:
        return sum(self.compute.values())

    @property
    def unknown_total(self) -> int:
        return sum(self.unknown.values())

    def share(self, precisions: Sequence[str]) -> float:
        return _share(self.compute, precisions)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "compute_layers": dict(self.compute),
                "fp32_compute_layers": list(self.fp32_layers), "other_layers": self.other,
                "unknown_layers": self.unknown_total, "unknown_layer_types": dict(self.unknown),
                "inspector_schema": self.schema, "rules_checked_against_tensorrt": RULES_CHECKED_AGAINST}


def parse_census(text: str) -> Census:
    """Read the engine inspector's JSON (getEngineInformation, LayerInformationFormat.JSON). ValueError when it is not
    that JSON or holds only layer names (the engine was not built with profiling verbosity DETAILED)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the engine's layer information is not JSON ({exc})") from exc
    layers = doc.get("Layers") if isinstance(doc, Mapping) else None
    if not isinstance(layers, list):
        raise ValueError("the engine's layer information has no \"Layers\" list")
    if any(not isinstance(layer, Mapping) for layer in layers):
        raise ValueError("the engine's layer information lists layer names only: build with profiling verbosity "
                         "DETAILED")
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    other = 0
    fp32: list[str] = []
    for layer in layers:
        cls = layer_class(layer)
        if cls == "other":
            other += 1
        elif cls == "unknown":
            unknown[str(layer.get("LayerType") or "(no type)")] += 1
        else:
            precision = layer_precision(layer) or "unknown"
            counts[precision] += 1
            if precision == "fp32":
                fp32.append(str(layer.get("Name", "?")))
    schema = "11.x" if "I/O Tensors" in doc else "10.x"
    return Census(layers=len(layers), compute=dict(counts), fp32_layers=tuple(fp32[:_SHOWN]), schema=schema,
                  other=other, unknown=dict(unknown))


def onnx_intent(model: Any) -> dict[str, int]:
    """Compute nodes (Conv, ConvTranspose, MatMul, Gemm) of an ONNX model by the precision it asks for: int8 where an
    input comes from a DequantizeLinear (explicit Q/DQ), else the element type of the first input (FP16 from
    AutoCast, FP32). `model` is an onnx.ModelProto; its external data need not be loaded."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    elem: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        elem[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        elem[init.name] = init.data_type
    produced_by = {out: node.op_type for node in g.node for out in node.output}
    names = {int(onnx.TensorProto.FLOAT16): "fp16", int(onnx.TensorProto.BFLOAT16): "bf16",
             int(onnx.TensorProto.FLOAT): "fp32"}
    intent: Counter[str] = Counter()
    for node in g.node:
        if node.op_type not in ONNX_COMPUTE_OPS:
            continue
        if any(produced_by.get(i) == "DequantizeLinear" for i in node.input):
            intent["int8"] += 1
        else:
            intent[names.get(elem.get(node.input[0], 0), "unknown")] += 1
    return dict(intent)


@dataclass(frozen=True)
class CensusVerdict:
    ok: bool
    fp32_share: float
    fp32_share_onnx: float
    int8_share: float
    int8_share_onnx: float
    allowance: float
    problems: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # what the census could not judge (unknown layers, formats)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "allowance": self.allowance,
                "fp32_share": round(self.fp32_share, 4), "fp32_share_onnx": round(self.fp32_share_onnx, 4),
                "int8_share": round(self.int8_share, 4), "int8_share_onnx": round(self.int8_share_onnx, 4),
                "problems": list(self.problems), "warnings": list(self.warnings)}


def _share(counts: Mapping[str, int], precisions: Sequence[str]) -> float:
    """The fraction of compute layers (or ONNX nodes) of a known precision that run in one of `precisions`."""
    known = sum(n for p, n in counts.items() if p != "unknown")
    return sum(counts.get(p, 0) for p in precisions) / known if known else 0.0


def judge(census: Census, intent: Mapping[str, int], allowance: float) -> CensusVerdict:
    """Apply the fallback rule (module docstring) to an engine's census and its ONNX's intent: problems (a measured
    fallback of known compute layers) fail the build; warnings (what could not be measured) are only reported."""
    problems: list[str] = []
    warnings: list[str] = []
    fp32, fp32_onnx = census.share(["fp32"]), _share(intent, ["fp32"])
    int8, int8_onnx = census.share(["int8"]), _share(intent, ["int8"])
    if census.unknown_total:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(census.unknown.items(), key=lambda kv: -kv[1]))
        warnings.append(f"{census.unknown_total} of {census.layers} layers are of a kind the census rules do not "
                        f"classify ({kinds}): their precision is not judged (rules checked against TensorRT "
                        f"{RULES_CHECKED_AGAINST})")
    unnamed = census.compute.get("unknown", 0)
    if unnamed:
        warnings.append(f"{unnamed} of {census.compute_total} compute layers name no precision (layer information "
                        "read without input shapes set, or a format this toolkit does not know): not judged")
    measured = census.compute_total - unnamed > 0
    if not measured:
        warnings.append("no compute layer with a known precision: the fallback rule measured nothing")
    if measured and fp32 - fp32_onnx > allowance:
        shown = ", ".join(census.fp32_layers[:5])
        problems.append(f"{100 * fp32:.1f} % of compute layers run in FP32 where the ONNX asks for "
                        f"{100 * fp32_onnx:.1f} % (allowance {100 * allowance:.1f} points): e.g. {shown}")
    if measured and int8_onnx - int8 > allowance:
        problems.append(f"{100 * int8:.1f} % of compute layers run in INT8 where the ONNX asks for "
                        f"{100 * int8_onnx:.1f} % (allowance {100 * allowance:.1f} points): Q/DQ pairs TensorRT did "
                        "not fuse")
    return CensusVerdict(ok=not problems, fp32_share=fp32, fp32_share_onnx=fp32_onnx, int8_share=int8,
                         int8_share_onnx=int8_onnx, allowance=allowance, problems=tuple(problems),
                         warnings=tuple(warnings))

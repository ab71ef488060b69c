"""The precision census: which precision each compute layer of a built engine really runs in, against what its ONNX
asked for.

A strongly typed engine follows the types in its ONNX, yet a "fast" engine can still run slow: a Q/DQ pair TensorRT
cannot fuse leaves its convolution in FP16 or FP32, an unsupported FP16 pattern falls back. The engine inspector's
layer information (JSON, profiling verbosity DETAILED, read with an execution context whose input shapes are set)
names each layer's input and output tensors with their formats; the census counts the compute layers (convolutions,
matrix multiplies) by the precision of their inputs and compares the shares with the compute nodes of the ONNX.

The rule: a build fails when the share of compute layers in FP32 exceeds the ONNX's FP32 share by more than the
allowance, or (int8 variants) the INT8 share falls short of the ONNX's by more than the allowance. Layer names and
counts do not match one to one (TensorRT fuses), so shares are compared, not names.

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
_COMPUTE = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected")
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


def is_compute_layer(layer: Mapping[str, Any]) -> bool:
    kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()
    return bool(_COMPUTE.search(kind))


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
    """Compute layers of one engine by precision (None: not known)."""

    layers: int
    compute: Mapping[str, int]
    fp32_layers: tuple[str, ...]
    schema: str  # "10.x" or "11.x": which inspector JSON layout was read

    @property
    def compute_total(self) -> int:
        return sum(self.compute.values())

    def share(self, precisions: Sequence[str]) -> float:
        return _share(self.compute, precisions)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "compute_layers": dict(self.compute),
                "fp32_compute_layers": list(self.fp32_layers), "inspector_schema": self.schema}


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
    fp32: list[str] = []
    for layer in layers:
        if not is_compute_layer(layer):
            continue
        precision = layer_precision(layer) or "unknown"
        counts[precision] += 1
        if precision == "fp32":
            fp32.append(str(layer.get("Name", "?")))
    schema = "11.x" if "I/O Tensors" in doc else "10.x"
    return Census(layers=len(layers), compute=dict(counts), fp32_layers=tuple(fp32[:_SHOWN]), schema=schema)


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

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "allowance": self.allowance,
                "fp32_share": round(self.fp32_share, 4), "fp32_share_onnx": round(self.fp32_share_onnx, 4),
                "int8_share": round(self.int8_share, 4), "int8_share_onnx": round(self.int8_share_onnx, 4),
                "problems": list(self.problems)}


def _share(counts: Mapping[str, int], precisions: Sequence[str]) -> float:
    """The fraction of compute layers (or ONNX nodes) of a known precision that run in one of `precisions`."""
    known = sum(n for p, n in counts.items() if p != "unknown")
    return sum(counts.get(p, 0) for p in precisions) / known if known else 0.0


def judge(census: Census, intent: Mapping[str, int], allowance: float) -> CensusVerdict:
    """Apply the fallback rule (module docstring) to an engine's census and its ONNX's intent."""
    problems = []
    fp32, fp32_onnx = census.share(["fp32"]), _share(intent, ["fp32"])
    int8, int8_onnx = census.share(["int8"]), _share(intent, ["int8"])
    unknown = census.compute.get("unknown", 0)
    if census.compute_total and unknown / census.compute_total > allowance:
        problems.append(f"{unknown} of {census.compute_total} compute layers name no precision (layer information "
                        "read without input shapes set, or a format this toolkit does not know)")
    if fp32 - fp32_onnx > allowance:
        shown = ", ".join(census.fp32_layers[:5])
        problems.append(f"{100 * fp32:.1f} % of compute layers run in FP32 where the ONNX asks for "
                        f"{100 * fp32_onnx:.1f} % (allowance {100 * allowance:.1f} points): e.g. {shown}")
    if int8_onnx - int8 > allowance:
        problems.append(f"{100 * int8:.1f} % of compute layers run in INT8 where the ONNX asks for "
                        f"{100 * int8_onnx:.1f} % (allowance {100 * allowance:.1f} points): Q/DQ pairs TensorRT did "
                        "not fuse")
    return CensusVerdict(ok=not problems, fp32_share=fp32, fp32_share_onnx=fp32_onnx, int8_share=int8,
                         int8_share_onnx=int8_onnx, allowance=allowance, problems=tuple(problems))

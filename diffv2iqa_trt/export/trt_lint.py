"""Static TensorRT compatibility lint of an ONNX file, from TensorRT's ONNX-parser operator list kept as data.

TensorRT cannot be installed on the machines that export, so this reads `data/tensorrt_onnx_ops_<major>.json` (our
transcription of onnx-tensorrt's `docs/operators.md`, see each file's `source`) and checks what the list states:
op support, opset range, the dtypes each op accepts, INT64 at the graph interface, ops whose output shape depends
on the data, and the attribute / constant-input restrictions the list records. It cannot see what only a build
shows (tactic availability, memory); a clean lint means "the parser should accept this", not "the engine builds".

onnx only: no torch import, so it runs in a TensorRT environment without torch.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

import onnx
from onnx import helper

from ..contract import TRT_MAJORS
from ..errors import ConfigError

Status = Literal["ok", "warn", "fail"]
_RANK = {"ok": 0, "warn": 1, "fail": 2}


# ONNX element types under the names the operator list uses.
_DTYPE_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT4: "INT4", onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.FLOAT4E2M1: "FP4",
}
# Ops whose listed dtypes describe what they produce, not their first input (a shape, a size, ...).
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomNormalLike", "RandomUniform",
                 "RandomUniformLike", "OneHot", "BlackmanWindow", "HammingWindow", "HannWindow"}
_BOTH_TYPED = {"Cast", "CastLike"}  # input and output type both have to be in the list
_DATA_INPUT = {"Where": 1}  # input 0 of Where is the BOOL condition; the listed types are the values'
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
_ATTR_DEFAULTS: dict[tuple[str, str], Any] = {("TopK", "sorted"): 1}  # attr_equals on an absent attribute
_MAX_NAMES = 3  # node names quoted per problem row


@dataclass(frozen=True)
class LintRow:
    check: str
    subject: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "subject": self.subject, "status": self.status, "detail": self.detail}


@dataclass
class LintReport:
    path: str
    trt_major: int
    trt_version: str
    rows: list[LintRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No failing row (warnings do not block)."""
        return not self.failures

    @property
    def failures(self) -> list[LintRow]:
        return [r for r in self.rows if r.status == "fail"]

    @property
    def warnings(self) -> list[LintRow]:
        return [r for r in self.rows if r.status == "warn"]

    def find(self, check: str, subject: str | None = None) -> list[LintRow]:
        return [r for r in self.rows if r.check == check and (subject is None or r.subject == subject)]

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "trt_major": self.trt_major, "trt_version": self.trt_version, "ok": self.ok,
                "counts": {s: sum(r.status == s for r in self.rows) for s in ("ok", "warn", "fail")},
                "rows": [r.to_dict() for r in self.rows]}

    def summary(self) -> str:
        lines = [f"{self.path}: TensorRT {self.trt_version} lint {'passes' if self.ok else 'FAILS'} "
                 f"({len(self.failures)} fail, {len(self.warnings)} warn, {len(self.rows)} rows)"]
        lines += [f"  {r.status.upper():4} {r.check:22} {r.subject}: {r.detail}" for r in self.rows if r.status != "ok"]
        return "\n".join(lines)


@cache
def operator_list(trt_major: int = 10) -> dict[str, Any]:
    """The operator data for a TensorRT major version (see the JSON's `source` for where it comes from)."""
    if trt_major not in TRT_MAJORS:
        raise ConfigError(f"no TensorRT operator list for major version {trt_major}; have {TRT_MAJORS}")
    text = resources.files(__package__).joinpath("data").joinpath(f"tensorrt_onnx_ops_{trt_major}.json").read_text(
        "utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def lint_onnx(path: str | os.PathLike[str] | onnx.ModelProto, trt_major: int = 10) -> LintReport:
    """Check an ONNX file (or a loaded model) against TensorRT's ONNX-parser operator list for `trt_major`."""
    data = operator_list(trt_major)
    if isinstance(path, onnx.ModelProto):
        model, name = path, path.graph.name or "<model>"
    else:
        name = str(path)
        # Weights are irrelevant here; skipping external data keeps the lint cheap for large models.
        model = onnx.load(name, load_external_data=False)
    report = LintReport(path=name, trt_major=trt_major, trt_version=str(data["trt_version"]))
    _Linter(model, data, report).run()
    return report


# --- the checks ---------------------------------------------------------------------------------------------------

class _Linter:
    def __init__(self, model: onnx.ModelProto, data: dict[str, Any], report: LintReport) -> None:
        self.data = data
        self.report = report
        self.ops: dict[str, dict[str, Any]] = data["ops"]
        try:  # types and shapes of intermediate tensors; a model the checker would reject is still linted
            self.model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - inference is best effort, the rows below say what could not be typed
            self.model = model
        g = self.model.graph
        self.nodes = list(_all_nodes(self.model))
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for v in (*g.input, *g.output, *g.value_info):
            t = v.type.tensor_type
            if t.elem_type:
                self.types[v.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in t.shape.dim]
        inputs = {v.name for v in g.input}
        self.initializers = {t.name for t in g.initializer if t.name not in inputs}
        for t in g.initializer:
            self.types[t.name] = t.data_type
            self.shapes.setdefault(t.name, list(t.dims))
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.types[n.output[0]] = a.t.data_type
        self.constants = self._constants()
        self.folded = self._foldable()
        self.used = {i for n in self.nodes for i in n.input} | {v.name for v in g.output}

    def add(self, check: str, subject: str, status: Status, detail: str) -> None:
        self.report.rows.append(LintRow(check, subject, status, detail))

    def run(self) -> None:
        self.check_opsets()
        self.check_ops()
        self.check_io()
        self.check_tensor_dtypes()
        self.check_size()

    # opset: TensorRT's parser accepts a range of default-domain opsets and no custom domain without a plugin.
    def check_opsets(self) -> None:
        lo, hi = int(self.data["min_opset"]), int(self.data["max_opset"])
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                status: Status = "ok" if lo <= o.version <= hi else "fail"
                self.add("opset", "ai.onnx", status, f"opset {o.version} (parser accepts {lo}..{hi})")
            else:
                used = sum(n.domain == o.domain for n in self.nodes)
                self.add("opset", o.domain, "fail" if used else "ok",
                         f"{used} node(s) in custom domain {o.domain!r}: each needs a TensorRT plugin" if used
                         else "declared but unused")

    def check_ops(self) -> None:
        by_op: dict[tuple[str, str], list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            by_op[(n.domain, n.op_type)].append(n)
        dds = set(self.data["data_dependent_shape_ops"])
        for (domain, op), nodes in sorted(by_op.items()):
            if domain not in ("", "ai.onnx"):
                self.add("op_supported", f"{domain}::{op}", "fail", f"{len(nodes)} node(s) of a custom op "
                         f"({_names(nodes)}): needs a TensorRT plugin")
                continue
            entry = self.ops.get(op)
            if entry is None:
                self.add("op_supported", op, "fail",
                         f"{len(nodes)} node(s) ({_names(nodes)}): not in TensorRT {self.data['trt_version']}'s "
                         "ONNX operator list")
                continue
            if not entry["supported"]:
                self.add("op_supported", op, "fail", f"{len(nodes)} node(s) ({_names(nodes)}): listed as "
                         f"unsupported{': ' + entry['notes'] if entry['notes'] else ''}")
                continue
            self.add("op_supported", op, "ok", f"{len(nodes)} node(s)")
            if op in dds:
                # The parser accepts some of them, but their output shapes are only known after running, which
                # needs output allocators and rules out our fixed buffers and CUDA-graph capture.
                self.add("data_dependent_shape", op, "fail",
                         f"{len(nodes)} node(s) ({_names(nodes)}): output shape depends on the data")
            self.check_dtypes(op, entry, nodes)
            for rule in entry.get("constraints", []):
                self.check_rule(op, rule, nodes)

    def check_dtypes(self, op: str, entry: dict[str, Any], nodes: list[onnx.NodeProto]) -> None:
        allowed = set(entry["dtypes"])
        bad: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        seen: set[str] = set()
        untyped = 0
        for n in nodes:
            tensors = _typed_tensors(n)
            types = [self.types.get(t) for t in tensors if t]
            if not types or any(t is None for t in types):
                untyped += 1
                continue
            for t in types:
                dname = _dtype_name(t or 0)
                seen.add(dname)
                if dname not in allowed:
                    bad[dname].append(n)
        for dname, ns in sorted(bad.items()):
            hint = " (INT64 outside shape arithmetic: cast to INT32 or float)" if dname == "INT64" else ""
            self.add("dtype", op, "fail", f"{len(ns)} node(s) on {dname}, which {op} does not accept "
                     f"(accepts {', '.join(entry['dtypes'])}){hint}: {_names(ns)}")
        if not bad:
            if untyped:
                self.add("dtype", op, "warn", f"{untyped} of {len(nodes)} node(s) have untyped tensors; "
                         f"run shape inference (seen: {', '.join(sorted(seen)) or 'none'})")
            else:
                self.add("dtype", op, "ok", f"{', '.join(sorted(seen))} (accepts {', '.join(entry['dtypes'])})")

    def check_rule(self, op: str, rule: dict[str, Any], nodes: list[onnx.NodeProto]) -> None:
        kind = rule["rule"]
        problems: dict[Status, list[tuple[onnx.NodeProto, str]]] = defaultdict(list)
        for n in nodes:
            for status, why in self._rule_problems(rule, n):
                problems[status].append((n, why))
        subject = f"{op}.{rule.get('attr') or rule.get('name') or kind}"
        if not problems:
            self.add("constraint", subject, "ok", f"{_describe(rule)}: {len(nodes)} node(s) comply")
            return
        statuses: tuple[Status, ...] = ("fail", "warn")
        for status in statuses:
            found = problems.get(status, [])
            if found:
                whys = sorted({w for _, w in found})
                self.add("constraint", subject, status, f"{len(found)} of {len(nodes)} node(s): {'; '.join(whys)} "
                         f"({_names([n for n, _ in found])})")

    def _rule_problems(self, rule: dict[str, Any], n: onnx.NodeProto) -> Iterator[tuple[Status, str]]:
        kind = rule["rule"]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if kind == "const_input":
            i = int(rule["input"])
            name = n.input[i] if len(n.input) > i else ""
            if not name:
                status = rule["if_missing"]
                if status != "ok":
                    yield status, rule.get("missing_note", f"{rule['name']} input omitted")
            elif name in self.constants:
                return
            elif name in self.folded:
                yield "warn", f"{rule['name']} is computed from constants: fold constants before building"
            else:
                yield "fail", f"{rule['name']} is computed at run time; TensorRT needs it at build time"
        elif kind == "attr_in":
            value = attrs.get(rule["attr"])
            if value is not None:
                text = value.decode() if isinstance(value, bytes) else str(value)
                if text not in rule["allowed"]:
                    yield "fail", f"{rule['attr']}={text} (accepted: {', '.join(rule['allowed'])})"
        elif kind == "attr_equals":
            value = attrs.get(rule["attr"], _ATTR_DEFAULTS.get((n.op_type, rule["attr"])))
            if value is not None and value != rule["value"]:
                yield "fail", f"{rule['attr']}={value} (must be {rule['value']})"
        elif kind == "attr_ints_all":
            value = attrs.get(rule["attr"])
            if value is not None and any(v != rule["value"] for v in value):
                yield "fail", f"{rule['attr']}={list(value)} (must all be {rule['value']})"
        elif kind == "attr_absent":
            present = [a for a in rule["attrs"] if a in attrs]
            if present:
                yield "fail", f"attribute(s) {', '.join(present)} not accepted"
        elif kind == "attr_iota":
            value = attrs.get(rule["attr"])
            rank = len(self.shapes.get(n.input[0], []) or [])
            if value is not None and rank and list(value) != list(range(rank)):
                yield "fail", f"{rule['attr']}={list(value)} (must be 0..{rank - 1} in order)"
        elif kind in ("spatial_rank", "input_rank"):
            offset = 2 if kind == "spatial_rank" else 0
            for i in rule.get("inputs", [0]):
                shape = self.shapes.get(n.input[i]) if len(n.input) > i and n.input[i] else None
                if shape is None:
                    yield "warn", f"rank of input {i} unknown"
                elif len(shape) - offset not in rule["allowed"]:
                    what = "spatial rank" if offset else f"input {i} rank"
                    yield "fail", f"{what} {len(shape) - offset} (accepted: {rule['allowed']})"
        elif kind == "max_used_outputs":
            used = [o for o in n.output[rule["count"]:] if o and o in self.used]
            if used:
                yield "fail", f"output(s) {', '.join(used)} are used; only the first {rule['count']} exist"
        elif kind == "max_used_inputs":
            extra = [i for i in n.input[rule["count"]:] if i]
            if extra:
                yield "fail", f"input(s) {', '.join(extra)} not accepted"
        else:
            raise ValueError(f"unknown rule {kind!r} in the operator list")

    # The graph interface: INT64 I/O is legal from TensorRT 10 on, but it means index arithmetic reached the
    # interface of a graph whose contract is float32, and many layers have no INT64 kernel.
    def check_io(self) -> None:
        g = self.model.graph
        allowed = set(self.data["io_dtypes"])
        for kind, values in (("input", g.input), ("output", g.output)):
            for v in values:
                if v.name in self.initializers:
                    continue
                t = v.type.tensor_type
                dname = _dtype_name(t.elem_type)
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
                desc = f"{kind} {dname} {dims}"
                if dname not in allowed:
                    self.add("io_dtype", v.name, "fail", f"{desc}: TensorRT has no {dname} network {kind}s")
                elif dname == "INT64":
                    self.add("io_dtype", v.name, "warn", f"{desc}: INT64 at the interface; TensorRT 10+ accepts it, "
                             "but most layers do not compute in INT64 and the runtime contract is float")
                else:
                    self.add("io_dtype", v.name, "ok", desc)

    def check_tensor_dtypes(self) -> None:
        limited: dict[str, str] = self.data["limited_dtypes"]
        known = set(self.data["tensor_dtypes"])
        counts: dict[str, int] = defaultdict(int)
        for t in self.types.values():
            counts[_dtype_name(t)] += 1
        for dname, count in sorted(counts.items()):
            if dname not in known:
                self.add("tensor_dtype", dname, "fail", f"{count} tensor(s): TensorRT has no such type")
            elif dname == "DOUBLE":
                self.add("tensor_dtype", dname, "warn", f"{count} tensor(s): {limited[dname]}")
            else:
                self.add("tensor_dtype", dname, "ok", f"{count} tensor(s)")

    def check_size(self) -> None:
        g = self.model.graph
        external = sum(any(e.key == "location" for e in t.external_data) for t in g.initializer)
        self.add("weights", "initializers", "ok",
                 f"{len(g.initializer)} initializer(s){f', {external} in external data' if external else ''}")

    # --- constant analysis -------------------------------------------------------------------------------------
    def _constants(self) -> set[str]:
        """Tensors that are weights in TensorRT: initializers and Constant outputs."""
        out = set(self.initializers)
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                out.update(n.output)
        return out

    def _foldable(self) -> set[str]:
        """Tensors computable before running: constants, shapes of static tensors, and ops on those."""
        folded = set(self.constants)
        for n in self.model.graph.node:  # topological order, as the ONNX spec requires
            if n.domain not in ("", "ai.onnx") or n.op_type in _NONDETERMINISTIC:
                continue
            if n.op_type == "Shape":
                shape = self.shapes.get(n.input[0])
                if shape is not None and all(isinstance(d, int) for d in shape):
                    folded.update(n.output)
                continue
            if all(i in folded for i in n.input if i):
                folded.update(n.output)
        return folded


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the main graph, of subgraphs (If/Loop/Scan bodies) and of model-local functions."""
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for n in graph.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from walk(sub)
    yield from walk(model.graph)
    for f in model.functions:
        yield from f.node


def _dtype_name(elem_type: int) -> str:
    if elem_type in _DTYPE_NAMES:
        return _DTYPE_NAMES[elem_type]
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.")
    except (KeyError, ValueError):
        return f"type {elem_type}"


def _typed_tensors(n: onnx.NodeProto) -> list[str]:
    """The tensors whose dtype the operator list constrains for this node."""
    if n.op_type in _OUTPUT_TYPED:
        return list(n.output[:1])
    if n.op_type in _BOTH_TYPED:
        return [*n.input[:1], *n.output[:1]]
    i = _DATA_INPUT.get(n.op_type, 0)
    return list(n.input[i:i + 1]) if n.input else list(n.output[:1])


def _describe(rule: dict[str, Any]) -> str:
    kind = rule["rule"]
    if kind == "const_input":
        return f"{rule['name']} (input {rule['input']}) known at build time"
    if kind == "attr_in":
        return f"{rule['attr']} in {{{', '.join(rule['allowed'])}}}"
    if kind == "attr_equals":
        return f"{rule['attr']} == {rule['value']}"
    if kind == "attr_ints_all":
        return f"{rule['attr']} all {rule['value']}"
    if kind == "attr_absent":
        return f"no {', '.join(rule['attrs'])}"
    if kind == "attr_iota":
        return f"{rule['attr']} absent or 0..rank-1"
    if kind in ("spatial_rank", "input_rank", "max_used_outputs", "max_used_inputs"):
        return f"{kind.replace('_', ' ')} {rule.get('allowed', rule.get('count'))}"
    return str(kind)


def _names(nodes: list[onnx.NodeProto]) -> str:
    shown = [n.name or f"<{n.op_type}>" for n in nodes[:_MAX_NAMES]]
    more = f" and {len(nodes) - _MAX_NAMES} more" if len(nodes) > _MAX_NAMES else ""
    return ", ".join(shown) + more

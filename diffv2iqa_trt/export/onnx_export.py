"""torch -> ONNX for the three graphs: dynamo export, clean-up, checks, contract names, atomic write.

`export_graph` traces one of the model's graph methods with `torch.onnx.export(..., dynamo=True)`, with a dynamic
batch everywhere and dynamic height/width (multiples of the U-Net's size multiple) for restore_step; then it folds
constants and drops dead nodes (onnxscript optimizer), names the nodes after their modules and drops the exporter's
metadata (so the bytes depend on the model only, not on the build machine's paths), renames the symbolic dimensions
to the contract's (`batch`, `height`, `width`, and expressions of them inside the graph), checks the I/O against
`graphs.graph_spec`, runs the ONNX checker (full check) and shape inference, and writes the file atomically.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxscript.optimizer
import sympy
import torch
from onnx import numpy_helper
from torch.export import Dim

from ..atomic import atomic_path
from ..contract import BRANCH_INPUTS, RESTORE_STEP, GraphSpec, TensorSpec
from ..errors import ConfigError, ExportError
from ..model.diffv2iqa import DiffV2IQA
from .graphs import example_inputs, graph_module, graph_spec

# The dynamo exporter at opset 17 wrote Split nodes that the checker rejects on this stack; 18 is the floor.
MIN_OPSET = 18
MAX_BATCH = 4096
MAX_SIDE = 8192  # restore_step's largest height/width, only a bound for torch.export's range analysis
# protobuf cannot serialise a message of 2 GiB or more; above this, weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class ExportResult:
    path: Path
    graph: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    node_count: int
    file_bytes: int
    external_data: Path | None  # weights file next to `path`, only for models too large for one protobuf
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path), "graph": self.graph, "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "node_count": self.node_count, "file_bytes": self.file_bytes,
            "external_data": None if self.external_data is None else str(self.external_data),
            "seconds": round(self.seconds, 3),
        }


def export_graph(model: DiffV2IQA, graph: str, path: str | os.PathLike[str], *, opset: int = MIN_OPSET
                 ) -> ExportResult:
    """Export `graph` ("restore_step", "vcg" or "vda") of `model` (eval mode) to `path` and check it."""
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old: use {MIN_OPSET} or newer (the exporter writes invalid Split "
                         f"nodes at 17)")
    start = time.perf_counter()
    spec = graph_spec(graph, model.config)
    module = graph_module(model, graph)
    m = model.config.unet.size_multiple
    # Batch 2 and distinct height/width keep torch.export from specialising a size to 1 or tying two sizes.
    args = example_inputs(model.config, graph, batch=2, height=3 * m, width=4 * m)
    dynamic_shapes, quotients = _dynamic_shapes(graph, m)
    with warnings.catch_warnings(), _quiet_exporter_logs():
        # The exporter warns when two inputs share an axis name, which is exactly what the contract wants.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        # Deprecation notices from torch's own pytree code, not actionable here.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")  # torch-internal deprecation
        program = torch.onnx.export(
            module, tuple(args.values()), dynamic_shapes=dynamic_shapes, input_names=list(spec.input_names),
            output_names=list(spec.output_names), opset_version=opset, dynamo=True, optimize=False,
            verbose=False, report=False,
        )
    if program is None or program.exported_program is None:  # only when an `f` is given, which we do not
        raise ExportError("torch.onnx.export returned no program")
    symbols = _symbol_names(program.exported_program, spec, quotients, m)
    proto = _clean(program.model)
    _name_nodes(proto, _model_scope(module, model))
    _strip_metadata(proto)
    _explicit_squeeze_axes(proto)
    _rename_dims(proto, symbols)
    _apply_contract_names(proto, spec)
    proto.producer_name = "diffv2iqa_trt"
    proto.doc_string = f"DiffV2IQA {graph} graph ({model.config.name} preset)"
    onnx.helper.set_model_props(proto, {"diffv2iqa.graph": graph, "diffv2iqa.preset": model.config.name})
    external = _write_checked(proto, Path(path))
    return ExportResult(
        path=Path(path), graph=graph, opset=_default_opset(proto),
        inputs=tuple(_tensor_spec(v) for v in proto.graph.input),
        outputs=tuple(_tensor_spec(v) for v in proto.graph.output),
        node_count=len(proto.graph.node), file_bytes=_file_bytes(Path(path), external),
        external_data=external, seconds=time.perf_counter() - start,
    )


# --- export helpers -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register; torchvision is not a dependency."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(graph: str, m: int) -> tuple[dict[str, Any], dict[str, str]]:
    """torch.export dynamic shapes, and {quotient Dim name: contract name} for height and width."""
    batch = Dim("batch", min=1, max=MAX_BATCH)
    if graph != RESTORE_STEP:
        return {name: {0: batch} for name in BRANCH_INPUTS}, {}
    # H = m * hq spells "height is a multiple of m" for torch.export, so no size guard ends up in the graph.
    hq = Dim("height_q", min=1, max=MAX_SIDE // m)
    wq = Dim("width_q", min=1, max=MAX_SIDE // m)
    image = {0: batch, 2: m * hq, 3: m * wq}
    shapes: dict[str, Any] = {
        "x": image, "y": dict(image), "gamma": {0: batch}, "coef": {0: batch}, "z": {2: m * hq, 3: m * wq}}
    return shapes, {"height_q": "height", "width_q": "width"}


def _symbol_names(exported: torch.export.ExportedProgram, spec: GraphSpec, quotients: dict[str, str], m: int
                  ) -> dict[str, sympy.Expr]:
    """Map every symbol the exporter may have written in a dim name to an expression of the contract's names.

    torch.export names sizes s0, s1, ... internally (the ONNX inputs get our Dim names, values inside keep the
    s-names, e.g. "8*s39" for an 8x downsampled height). Reading the placeholders' symbolic shapes tells which
    s-name is the batch and which is height/m or width/m.
    """
    out: dict[str, sympy.Expr] = {"batch": sympy.Symbol("batch")}
    for q, name in quotients.items():
        out[q] = sympy.Symbol(name) / m
    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    for tensor in spec.inputs:
        node = placeholders.get(tensor.name)
        val = None if node is None else node.meta.get("val")
        if val is None:
            continue
        for size, want in zip(val.shape, tensor.shape, strict=True):
            if not isinstance(size, torch.SymInt) or not isinstance(want, str):
                continue
            expr = size.node.expr  # e.g. s17, or 16*s39
            free = list(expr.free_symbols)
            if len(free) != 1:
                continue
            sym = free[0]
            # expr = k * sym  =>  sym = want / k
            k = sympy.simplify(expr / sym)
            if k.is_number:
                out[str(sym)] = sympy.Symbol(want) / k
    return out


def _clean(model: ir.Model) -> onnx.ModelProto:
    """Fold constants, inline functions, drop dead nodes and unused opsets; return a topologically sorted proto."""
    onnxscript.optimizer.optimize(model)
    for p in (ir_passes.CommonSubexpressionEliminationPass(), ir_passes.RemoveUnusedNodesPass(),
              ir_passes.RemoveUnusedFunctionsPass(),  # type: ignore[no-untyped-call]  # unannotated upstream
              ir_passes.RemoveUnusedOpsetsPass(),
              ir_passes.TopologicalSortPass()):
        p(model)
    return ir.serde.serialize_model(model)


def _model_scope(module: torch.nn.Module, model: DiffV2IQA) -> str:
    """The attribute under which the graph wrapper holds the model ("model"): the first level of every name scope."""
    return next(name for name, child in module.named_children() if child is model)


def _name_nodes(proto: onnx.ModelProto, model_scope: str) -> None:
    """Name every node `<module path>/<op type>[_k]`, the module path as in the model's state_dict keys.

    The exporter's names ("node_Mul_1342") say nothing about where a node comes from; precision tools (ModelOpt,
    AutoCast) pick nodes to keep in fp32 by name, e.g. every node matching "restore_update/". The module path is
    read from the exporter's name-scope metadata, before `_strip_metadata` drops it. Nodes without one (made by
    the optimizer) or outside the model (size arithmetic) are named at the root: "/Split_2". Names follow node
    order, which the topological sort fixes, so two exports of one model name their nodes alike.
    """
    prefix = model_scope + "."
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        scopes = _name_scopes(node)
        # The last entry is the fx node itself; the one before it is the innermost module.
        module_path = scopes[-2] if len(scopes) >= 2 else ""
        module_path = module_path[len(prefix):] if module_path.startswith(prefix) else ""
        base = f"{module_path}/{node.op_type}"
        k = counts.get(base, 0)
        counts[base] = k + 1
        node.name = base if k == 0 else f"{base}_{k}"


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    raw = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if raw is None:
        return []
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    return [str(s) for s in scopes] if isinstance(scopes, list) else []


# Keys of metadata that export writes itself; everything else in metadata_props is the exporter's.
_OWN_METADATA = "diffv2iqa."


def _strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's metadata and doc strings everywhere in the model.

    torch writes per-node stack traces (absolute paths of the build machine's source files), fx node dumps, class
    hierarchies, and the ExportedProgram's signature and symbol ranges (internal symbol numbers) on the graph and
    its values. None of it is needed to run or build the graph, and it made a file's bytes (and so a bundle's
    hashes) depend on where it was built. Everything not written by this module goes, whatever the exporter version
    calls it; the one useful part, which module a node belongs to, is kept in the node names (`_name_nodes`).
    """
    _strip(proto)
    _strip_graph(proto.graph)
    for f in proto.functions:
        _strip(f)
        for v in f.value_info:
            _strip(v)
        for n in f.node:
            _strip_node(n)


def _strip_graph(g: onnx.GraphProto) -> None:
    _strip(g)
    for v in (*g.input, *g.output, *g.value_info, *g.initializer):
        _strip(v)
    for n in g.node:
        _strip_node(n)


def _strip_node(n: onnx.NodeProto) -> None:
    _strip(n)
    for a in n.attribute:  # control-flow bodies (If, Loop, Scan) are graphs of their own
        a.doc_string = ""
        if a.HasField("g"):
            _strip_graph(a.g)
        for sub in a.graphs:
            _strip_graph(sub)


def _strip(message: Any) -> None:
    """Clear the doc string and drop foreign metadata of one proto message that has both fields."""
    message.doc_string = ""
    keep = [(p.key, p.value) for p in message.metadata_props if p.key.startswith(_OWN_METADATA)]
    del message.metadata_props[:]
    for key, value in keep:
        message.metadata_props.add(key=key, value=value)


def _explicit_squeeze_axes(proto: onnx.ModelProto) -> None:
    """Give every Squeeze without an `axes` input explicit axes, computed from its input's static shape.

    The exporter turns `x.shape[i]` into Shape(start=i, end=i+1) -> Squeeze() with no axes; TensorRT's parser only
    accepts an omitted `axes` from 11.5 on. The input of those Squeezes is a 1-element shape tensor, so the axes
    are known when the graph is written.
    """
    g = proto.graph
    shapes: dict[str, list[int | None]] = {}
    for v in (*g.input, *g.value_info):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    added: dict[tuple[int, ...], str] = {}
    for node in g.node:
        if node.op_type != "Squeeze" or node.domain not in ("", "ai.onnx") or (len(node.input) > 1 and node.input[1]):
            continue
        shape = shapes.get(node.input[0])
        if shape is None or any(d is None for d in shape):
            continue  # a dynamic input: the lint reports it
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
        if axes not in added:
            name = f"squeeze_axes_{'_'.join(map(str, axes)) or 'none'}"
            while name in taken:
                name += "_"
            taken.add(name)
            g.initializer.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), name))
            added[axes] = name
        del node.input[1:]
        node.input.append(added[axes])


def _rename_dims(proto: onnx.ModelProto, symbols: dict[str, sympy.Expr]) -> None:
    """Rewrite symbolic dim names (inputs, outputs, value_info) as expressions of batch/height/width."""
    cache: dict[str, str] = {}
    local = {name: sympy.Symbol(name) for name in symbols}

    def rename(param: str) -> str:
        if param not in cache:
            try:
                expr = sympy.sympify(param, locals=local)
                cache[param] = str(sympy.simplify(expr.subs(symbols, simultaneous=True)))
            except (sympy.SympifyError, TypeError, SyntaxError, AttributeError):
                cache[param] = param  # not an expression we understand: keep the exporter's name
        return cache[param]

    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = rename(dim.dim_param)


def _apply_contract_names(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give graph inputs/outputs the contract's names (positionally) and check dtypes and shapes against it."""
    g = proto.graph
    if len(g.input) != len(spec.inputs) or len(g.output) != len(spec.outputs):
        raise ExportError(f"{spec.name}: exported graph has {len(g.input)} inputs / {len(g.output)} outputs, "
                          f"the contract {len(spec.inputs)} / {len(spec.outputs)}")
    for value, want in zip((*g.input, *g.output), (*spec.inputs, *spec.outputs), strict=True):
        if value.name != want.name:
            _rename_value(g, value.name, want.name)
        got = _tensor_spec(value)
        if got != want:
            raise ExportError(f"{spec.name}: {want.name} is exported as {got.dtype} {list(got.shape)}, the contract "
                              f"says {want.dtype} {list(want.shape)}")


def _rename_value(g: onnx.GraphProto, old: str, new: str) -> None:
    if any(v.name == new for v in (*g.input, *g.output, *g.value_info, *g.initializer)) or any(
            new in n.output for n in g.node):
        raise ExportError(f"cannot rename {old!r} to {new!r}: the name is taken inside the graph")
    for n in g.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for v in (*g.input, *g.output, *g.value_info):
        if v.name == old:
            v.name = new


def _write_checked(proto: onnx.ModelProto, path: Path) -> Path | None:
    """Check, infer shapes and save atomically; weights go to `<name>.data` only if one protobuf cannot hold them."""
    if _initializer_bytes(proto) < EXTERNAL_DATA_THRESHOLD:
        try:
            onnx.checker.check_model(proto, full_check=True)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"the exported graph fails the ONNX checker: {e}") from e
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
        _remove_stale(path.with_name(path.name + ".data"))
        return None
    data = path.with_name(path.name + ".data")
    with _staging_dir(path.parent) as stage:
        onnx.save_model(proto, str(stage / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        try:  # large models are checked from disk, where the external data can be found
            onnx.checker.check_model(str(stage / path.name), full_check=True)
            onnx.shape_inference.infer_shapes_path(str(stage / path.name), check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"the exported graph fails the ONNX checker: {e}") from e
        # Weights first: a reader that sees the new .onnx also finds its data.
        os.replace(stage / data.name, data)
        os.replace(stage / path.name, path)
    return data


@contextlib.contextmanager
def _staging_dir(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export.", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_stale(data: Path) -> None:
    # A previous, larger export may have left a weights file that the new single-file model no longer uses.
    data.unlink(missing_ok=True)


def _initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or int(np.prod(t.dims)) * 4 for t in proto.graph.initializer)


def _file_bytes(path: Path, external: Path | None) -> int:
    return path.stat().st_size + (external.stat().st_size if external is not None else 0)


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
    dims = tuple(d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim)
    return TensorSpec(value.name, dtype, dims)

"""Writes tests/data/hostile/onnx_external/: tiny ONNX files whose tensors point at external data from every place an
ONNX file can hold a tensor, and with every kind of location a bundle must refuse (issue 22, case 6), plus index.json
(what a reader must find in each). The files are committed; run this only to regenerate them:

    .venv/bin/python tests/data/hostile/make_onnx.py

None of the files has its data: they are inputs for the readers' external-data checks (`verify_bundle --onnx-refs`,
the Python loader's `_external_locations`), not models to run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, external_data_helper, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "onnx_external"
F32 = TensorProto.FLOAT


def _external(name: str, location: str | None, **extra: str) -> TensorProto:
    """A 4-float tensor stored outside the file at `location` (None: EXTERNAL without any location entry)."""
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    if location is not None:
        external_data_helper.set_external_data(t, location=location, offset=int(extra.get("offset", 0)) or None,
                                               length=int(extra.get("length", 0)) or None)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    return t


def _model(nodes: list[onnx.NodeProto], initializers: Sequence[TensorProto] = (), **kwargs: Any) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [4])],
                              [helper.make_tensor_value_info("y", F32, [4])], initializer=list(initializers),
                              sparse_initializer=kwargs.pop("sparse", None))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                             ir_version=9, **kwargs)


def _branch(name: str, location: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node("Identity", [name], ["b"])], "branch", [],
                             [helper.make_tensor_value_info("b", F32, [4])], initializer=[_external(name, location)])


def _if(then_location: str, else_location: str) -> onnx.NodeProto:
    return helper.make_node("If", ["c"], ["y"], then_branch=_branch("t", then_location),
                            else_branch=_branch("e", else_location))


def _initializer(location: str | None, **extra: str) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [_external("w", location, **extra)])


def _plain() -> onnx.GraphProto:
    """A branch with no external data."""
    value = numpy_helper.from_array(np.zeros(4, np.float32), "z")
    return helper.make_graph([helper.make_node("Constant", [], ["b"], value=value)], "plain", [],
                             [helper.make_tensor_value_info("b", F32, [4])])


def _nested_ifs(depth: int, location: str) -> onnx.ModelProto:
    """`depth` If nodes inside each other's then-branch below the main graph's If, the innermost branch holding the
    external tensor: the tensor's message lies 3 * (depth + 1) + 2 messages deep."""
    inner = _branch("deep", location)
    for _ in range(depth):
        node = helper.make_node("If", ["c"], ["b"], then_branch=inner, else_branch=_plain())
        inner = helper.make_graph([node], "level", [], [helper.make_tensor_value_info("b", F32, [4])])
    return _model([helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=_plain())])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand (protobuf refuses to build messages this deep)."""
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _too_deep(depth: int) -> bytes:
    """A model whose innermost If branch lies 3 * depth + 2 messages deep: past protobuf's limit of 100."""
    inner = _branch("deep", "deep.bin").SerializeToString()
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, inner)  # name, type GRAPH (20: 5), g
        node = _field(4, b"If") + _field(5, attribute)  # op_type, attribute
        inner = _field(1, node)  # GraphProto.node
    return b"\x08\x09" + _field(7, inner) + _field(8, helper.make_opsetid("", 18).SerializeToString())


def models() -> dict[str, tuple[onnx.ModelProto | bytes, dict[str, Any]]]:
    """name -> (model or raw bytes, its index entry). `locations`: every reference in file order (None: external
    without a location); `bundle_names`: what each refers to for a graph file at the bundle's top level (None:
    refused whatever the manifest lists); `error`: the file is not a readable ONNX model."""
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(_external("sv", "sparse.bin"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0, 2], np.int64), "si"))
    sparse.dims.extend([4])
    const = helper.make_node("Constant", [], ["y"], value=_external("c", "const.bin"))
    tensors_attr = helper.make_node("Custom", ["x"], ["y"], domain="local")
    tensors_attr.attribute.append(helper.make_attribute("tables", [_external("a", "a.bin"), _external("b", "b.bin")]))
    function = helper.make_function("local", "Fn", ["x"], ["y"],
                                    [helper.make_node("Constant", [], ["y"], value=_external("f", "function.bin"))],
                                    [helper.make_opsetid("", 18)])
    defaults = helper.make_function("local", "Fd", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                                    [helper.make_opsetid("", 18)])
    default = AttributeProto(name="table", type=AttributeProto.TENSOR)
    default.t.CopyFrom(_external("d", "default.bin"))
    defaults.attribute_proto.append(default)
    mistyped = helper.make_node("Custom", ["x"], ["y"], domain="local")
    wrong = AttributeProto(name="scale", type=AttributeProto.FLOAT, f=1.0)
    wrong.t.CopyFrom(_external("m", "mistyped.bin"))
    mistyped.attribute.append(wrong)
    valid = _initializer("w.bin").SerializeToString()

    def ok(*locations: str | None, python: bool = True) -> dict[str, Any]:
        return {"locations": list(locations), "bundle_names": [loc for loc in locations],
                "python_walker_finds_all": python}

    return {
        "initializer": (_initializer("w.bin"), ok("w.bin")),
        "initializer_in_folder": (_initializer("./data//w.bin"), {**ok("./data//w.bin"),
                                                                  "bundle_names": ["data/w.bin"]}),
        "sparse_initializer": (_model([helper.make_node("Identity", ["x"], ["y"])], sparse=[sparse]),
                               ok("sparse.bin")),
        "constant_attribute": (_model([const]), ok("const.bin")),
        "attribute_tensor_list": (_model([tensors_attr]), ok("a.bin", "b.bin")),
        "if_branches": (_model([_if("then.bin", "else.bin")]), ok("else.bin", "then.bin")),  # attributes sorted by name
        "nested_ifs_30": (_nested_ifs(30, "deep.bin"), ok("deep.bin")),
        "function_node": (_model([helper.make_node("Fn", ["x"], ["y"], domain="local")], functions=[function]),
                          ok("function.bin")),
        "function_default_attribute": (_model([helper.make_node("Fd", ["x"], ["y"], domain="local")],
                                              functions=[defaults]), ok("default.bin", python=False)),
        "mistyped_attribute": (_model([mistyped]), ok("mistyped.bin", python=False)),
        "no_location": (_initializer(None), {"locations": [None], "bundle_names": [None],
                                             "python_walker_finds_all": True}),
        "empty_location": (_initializer(""), {**ok(""), "bundle_names": [None]}),
        "parent_folder": (_initializer("../outside.data"), {**ok("../outside.data"), "bundle_names": [None]}),
        "absolute": (_initializer("/etc/hostname"), {**ok("/etc/hostname"), "bundle_names": [None]}),
        "dotdot_inside": (_initializer("sub/../w.bin"), {**ok("sub/../w.bin"), "bundle_names": [None]}),
        "drive_letter": (_initializer("C:w.bin"), {**ok("C:w.bin"), "bundle_names": [None]}),
        "backslash": (_initializer("sub\\w.bin"), {**ok("sub\\w.bin"), "bundle_names": [None]}),
        # ONNX Runtime reads this "location" as "the offset is a memory address": refused even if a file of that
        # name were listed.
        "ort_memory_address": (_initializer("*/_ORT_MEM_ADDR_/*", offset="4096", length="16"),
                               {**ok("*/_ORT_MEM_ADDR_/*"), "bundle_names": [None]}),
        "nested_too_deep": (_too_deep(40), {"error": "nested more than 100 deep"}),
        "truncated": (valid[: len(valid) - 9], {"error": "truncated"}),
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    index: dict[str, Any] = {}
    for name, (model, entry) in models().items():
        data = model if isinstance(model, bytes) else model.SerializeToString()
        (OUT / f"{name}.onnx").write_bytes(data)
        index[f"{name}.onnx"] = entry
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

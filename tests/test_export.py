"""Export of the three graphs to ONNX: contract, ONNX checker, node names and build-independent bytes, parity with
torch, reference evaluator, TensorRT lint."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from diffv2iqa_trt.assemble import BuildOptions, build_onnx_bundle
from diffv2iqa_trt.bundle.schema import MANIFEST_NAME, sha256_file
from diffv2iqa_trt.config import paper_config, tiny_config
from diffv2iqa_trt.contract import GRAPH_NAMES, TensorSpec
from diffv2iqa_trt.contract import graph_spec as contract_graph_spec
from diffv2iqa_trt.errors import ExportError
from diffv2iqa_trt.export import onnx_export
from diffv2iqa_trt.export.graphs import example_inputs, graph_spec
from diffv2iqa_trt.export.onnx_export import ExportResult, export_graph
from diffv2iqa_trt.export.trt_lint import lint_onnx, operator_list
from diffv2iqa_trt.export.validate import (
    compare_with_reference_evaluator,
    compare_with_torch,
    ort_session,
    run_onnxruntime,
)
from diffv2iqa_trt.golden import golden_inputs
from diffv2iqa_trt.model.checkpoint import CheckpointInfo
from diffv2iqa_trt.model.diffv2iqa import DiffV2IQA, RestoreUpdate, Uint8RoundTrip, build_model
from diffv2iqa_trt.schedule import step_tables

TOL = 1e-4
LAYOUTS = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "model" / "authors_layout"


@pytest.fixture(scope="module")
def tiny_exports(tiny_model: DiffV2IQA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportResult]:
    out = tmp_path_factory.mktemp("onnx_tiny")
    return {g: export_graph(tiny_model, g, out / f"{g}.onnx") for g in GRAPH_NAMES}


# --- contract -----------------------------------------------------------------------------------------------------

def test_contract_spells_the_design() -> None:
    rs = graph_spec("restore_step", tiny_config())
    assert rs.input_names == ("x", "y", "gamma", "coef", "z") and rs.output_names == ("y_next",)
    assert [t.shape for t in rs.inputs] == [("batch", 3, "height", "width")] * 2 + [
        ("batch",), ("batch", 5), (1, 3, "height", "width")]
    for g in ("vcg", "vda"):
        spec = graph_spec(g, paper_config())
        assert spec.input_names == ("x", "y0", "y_t1", "y_t2") and spec.output_names == ("score",)
        assert all(t.shape == ("batch", 3, 224, 224) and t.dtype == "float32" for t in spec.inputs)
        assert spec.outputs[0].shape == ("batch",)
    with pytest.raises(ValueError, match="unknown graph"):
        graph_spec("restore", tiny_config())


def test_example_inputs_follow_contract_and_schedule() -> None:
    config = tiny_config()
    inputs = example_inputs(config, "restore_step", batch=3, height=48, width=80, step=4)
    spec = graph_spec("restore_step", config)
    bindings: dict[str, int] = {}
    for t in spec.inputs:
        assert inputs[t.name].dtype.is_floating_point and t.matches(tuple(inputs[t.name].shape), bindings)
    assert bindings == {"batch": 3, "height": 48, "width": 80}
    tables = step_tables(config.schedule)
    np.testing.assert_allclose(inputs["gamma"].numpy(), np.float32(tables.gamma[4]))
    np.testing.assert_allclose(inputs["coef"].numpy(), np.repeat(tables.coef[4:5], 3, 0).astype(np.float32))
    assert float(inputs["x"].abs().max()) <= 1.0
    with pytest.raises(ValueError, match="multiples of 16"):
        example_inputs(config, "restore_step", height=40)
    branch = example_inputs(config, "vda", batch=2)
    assert list(branch) == ["x", "y0", "y_t1", "y_t2"] and branch["y_t2"].shape == (2, 3, 64, 64)


def test_export_refuses_opset_17(tiny_model: DiffV2IQA, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 17"):
        export_graph(tiny_model, "vda", tmp_path / "vda.onnx", opset=17)
    assert not (tmp_path / "vda.onnx").exists()


def _file_io(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs as the file spells them, read with onnx alone (not the exporter's helpers)."""
    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        t = value.type.tensor_type
        shape = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim)
        return TensorSpec(value.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape)

    return tuple(map(spec, model.graph.input)), tuple(map(spec, model.graph.output))


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_export_names_shapes_and_checker(tiny_exports: dict[str, ExportResult], graph: str) -> None:
    result = tiny_exports[graph]
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    # The file itself, read back, against the torch-free contract (export_graph checks its own proto before writing).
    want = contract_graph_spec(graph, tiny_config().crop_size)
    assert _file_io(model) == (want.inputs, want.outputs)
    # And the result describes that file.
    assert (result.inputs, result.outputs) == (want.inputs, want.outputs)
    assert result.opset == 18 == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert result.node_count == len(model.graph.node) > 0
    assert result.external_data is None and result.file_bytes == result.path.stat().st_size
    # Inside the graph the exporter's size symbols are rewritten as expressions of the contract's names.
    params = {d.dim_param for v in model.graph.value_info for d in v.type.tensor_type.shape.dim if d.dim_param}
    assert not any(p.startswith("s") and p[1:].isdigit() for p in params)
    assert "batch" in params
    if graph == "restore_step":
        assert {"height/2", "width/16", "height*width/256"} <= params
    # Squeeze always gets explicit axes (TensorRT 10 refuses an omitted axes input).
    assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Squeeze")
    assert not list(result.path.parent.glob(".*.tmp"))


def test_export_refuses_a_graph_that_breaks_the_contract(tiny_model: DiffV2IQA, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A contract that wants `score` as (batch, 1): the traced (batch,) output is refused and nothing is written."""
    real = graph_spec("vda", tiny_config())
    (score,) = real.outputs
    wrong = dataclasses.replace(real, outputs=(dataclasses.replace(score, shape=("batch", 1)),))
    monkeypatch.setattr(onnx_export, "graph_spec", lambda graph, config: wrong)
    with pytest.raises(ExportError, match=r"score is exported as float32 \['batch'\], the contract says"):
        export_graph(tiny_model, "vda", tmp_path / "vda.onnx")
    assert list(tmp_path.iterdir()) == []


# --- what the files hold ------------------------------------------------------------------------------------------

def test_export_names_nodes_after_the_fp32_modules(tiny_exports: dict[str, ExportResult]) -> None:
    """Precision tools keep the DDPM update and the uint8 round trip in fp32 by matching node names."""
    assert tiny_config().uint8_roundtrip
    names = {g: [n.name for n in onnx.load(str(r.path)).graph.node] for g, r in tiny_exports.items()}
    ops = {g: {n.name: n.op_type for n in onnx.load(str(r.path)).graph.node} for g, r in tiny_exports.items()}
    for graph, nodes in names.items():
        assert all(nodes) and len(set(nodes)) == len(nodes), graph  # names are unique, so a name picks one node
    update = {op for name, op in ops["restore_step"].items() if name.startswith("restore_update/")}
    # The whole update: coefficient columns (Unsqueeze, Gather), x0 estimate, clamp, posterior mean and noise.
    assert update == {"Unsqueeze", "Gather", "Mul", "Sub", "Clip", "Add"}
    assert not any("snapshot_roundtrip" in n for n in names["restore_step"])
    for graph in ("vcg", "vda"):
        roundtrip = [op for name, op in ops[graph].items() if name.startswith("snapshot_roundtrip/")]
        assert roundtrip.count("Round") == 3 and roundtrip.count("Clip") == 3, graph  # y0, y_t1 and y_t2
        # Every rounding of the graph is in the round trip, so excluding that name keeps all of them in fp32.
        assert [n for n, op in ops[graph].items() if op == "Round" and not n.startswith("snapshot_roundtrip/")] == []
        assert not any("restore_update" in n for n in names[graph])


def test_named_export_modules_add_no_state_dict_keys() -> None:
    """The wrapper modules hold nothing: the full model's keys are still the authors' U-Net and DIV2IQA layouts."""
    with torch.device("meta"):
        model = DiffV2IQA(paper_config())
    assert isinstance(model.restore_update, RestoreUpdate) and isinstance(model.snapshot_roundtrip, Uint8RoundTrip)
    unet = json.loads((LAYOUTS / "sr3_unet_paper.json").read_text())["keys"]
    iqa = json.loads((LAYOUTS / "div2iqa_paper.json").read_text())["keys"]
    expected = [f"unet.{k.removeprefix('denoise_fn.')}" for k in unet] + [f"iqa.{k}" for k in iqa]
    keys = list(model.state_dict())
    assert keys == expected  # same keys, same order
    assert not any(k.startswith(("restore_update", "snapshot_roundtrip")) for k in keys)


@pytest.mark.fresh_export
def test_bundle_bytes_do_not_depend_on_the_build_folder(tiny_model: DiffV2IQA, tiny_exports: dict[str, ExportResult],
                                                        tmp_path: Path) -> None:
    """A bundle built elsewhere (a temporary staging folder, then a deeper output folder) holds the very bytes that
    `tiny_exports` wrote into its own folder earlier in this process, and nothing that names a build path.

    The module's exports are the first build, so the test pays for one bundle, not two.
    """
    out = tmp_path / "a" / "deeper" / "bundle-folder"
    result = build_onnx_bundle(tiny_model, CheckpointInfo(trained=False, description="determinism test"), out,
                               BuildOptions(include_checkpoint=False))
    manifest = json.loads((result.path / MANIFEST_NAME).read_text())
    golden = sorted(f"golden/{p.name}" for p in golden_inputs())
    assert len(golden) == 2 and sorted(manifest["files"]) == sorted([*(f"{g}.fp32.onnx" for g in GRAPH_NAMES), *golden])
    repo = str(Path(__file__).resolve().parents[1])
    for graph, first in tiny_exports.items():
        name = f"{graph}.fp32.onnx"
        data = (result.path / name).read_bytes()
        assert data == first.path.read_bytes(), graph
        assert manifest["files"][name]["sha256"] == sha256_file(first.path)
        for fragment in (repo, str(tmp_path), str(first.path.parent), tempfile.gettempdir() + "/", "site-packages"):
            assert fragment.encode() not in data, (graph, fragment)
        proto = onnx.load_from_string(data)
        # Only the model-level properties that export writes itself are left; no doc string names a path.
        assert {p.key for p in proto.metadata_props} == {"diffv2iqa.graph", "diffv2iqa.preset"}
        assert [(where, text) for where, text in _metadata_and_docs(proto) if "/" in text] == []
        assert not list(proto.graph.metadata_props) and not any(n.metadata_props for n in proto.graph.node)


def _metadata_and_docs(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(where, text) for every metadata value and doc string of the model, its graph, nodes and values."""
    g = proto.graph
    items: list[tuple[str, Any]] = [("model", proto), ("graph", g)]
    items += [(f"node {n.name}", n) for n in g.node]
    items += [(f"value {v.name}", v) for v in (*g.input, *g.output, *g.value_info, *g.initializer)]
    out = []
    for where, message in items:
        out += [(where, p.value) for p in message.metadata_props]
        if message.doc_string:
            out.append((where, message.doc_string))
    return out


# --- numerical parity -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_restore_step_matches_torch(tiny_model: DiffV2IQA, tiny_exports: dict[str, ExportResult], batch: int,
                                    size: tuple[int, int]) -> None:
    h, w = size
    inputs = example_inputs(tiny_model.config, "restore_step", batch=batch, height=h, width=w, seed=batch)
    err = compare_with_torch(tiny_model, "restore_step", tiny_exports["restore_step"].path, inputs)
    assert err["y_next"]["max_abs"] <= TOL, err


def test_restore_step_last_step_and_batch_rows(tiny_model: DiffV2IQA, tiny_exports: dict[str, ExportResult]) -> None:
    """Step 0 (no noise) and per-row coefficients: one batch may hold images at different steps."""
    config = tiny_model.config
    tables = step_tables(config.schedule)
    inputs = example_inputs(config, "restore_step", batch=3, step=0)
    inputs["gamma"][1] = float(tables.gamma[7])
    inputs["coef"][1] = torch.from_numpy(tables.coef[7].astype(np.float32))
    err = compare_with_torch(tiny_model, "restore_step", tiny_exports["restore_step"].path, inputs)
    assert err["y_next"]["max_abs"] <= TOL, err
    alone = {k: (v[1:2] if k != "z" else v) for k, v in inputs.items()}
    batched = run_onnxruntime(tiny_exports["restore_step"].path, inputs)["y_next"][1:2]
    np.testing.assert_allclose(run_onnxruntime(tiny_exports["restore_step"].path, alone)["y_next"], batched,
                               atol=1e-5)


@pytest.mark.parametrize("graph", ["vcg", "vda"])
def test_branches_match_torch(tiny_model: DiffV2IQA, tiny_exports: dict[str, ExportResult], graph: str) -> None:
    session = ort_session(tiny_exports[graph].path)
    for batch in (1, 3):
        inputs = example_inputs(tiny_model.config, graph, batch=batch, seed=batch)
        err = compare_with_torch(tiny_model, graph, session, inputs)
        assert err["score"]["max_abs"] <= TOL, (batch, err)


@pytest.mark.parametrize("graph", ["restore_step", "vda"])
def test_reference_evaluator_agrees_with_onnxruntime(tiny_model: DiffV2IQA, tiny_exports: dict[str, ExportResult],
                                                     graph: str) -> None:
    inputs = example_inputs(tiny_model.config, graph, batch=2, height=32, width=48)
    err = compare_with_reference_evaluator(tiny_exports[graph].path, inputs)
    (out,) = graph_spec(graph, tiny_model.config).output_names
    assert err[out]["max_abs"] <= TOL, err


def test_large_models_go_to_external_data(tiny_exports: dict[str, ExportResult], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Above protobuf's limit the weights go to `<name>.data`; forced here with a zero threshold."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    proto = onnx.load(str(tiny_exports["vda"].path))
    target = tmp_path / "vda.onnx"
    data = onnx_export._write_checked(proto, target)
    assert data == tmp_path / "vda.onnx.data" and data.stat().st_size > target.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vda.onnx", "vda.onnx.data"]
    inputs = example_inputs(tiny_config(), "vda", batch=2)
    np.testing.assert_array_equal(run_onnxruntime(target, inputs)["score"],
                                  run_onnxruntime(tiny_exports["vda"].path, inputs)["score"])


# --- TensorRT lint --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trt_major", [10, 11])
def test_tiny_exports_lint_clean(tiny_exports: dict[str, ExportResult], trt_major: int) -> None:
    for graph, result in tiny_exports.items():
        report = lint_onnx(result.path, trt_major)
        assert report.ok and not report.warnings, (graph, report.summary())
        assert report.find("opset")[0].status == "ok"
        assert {r.subject for r in report.find("op_supported")} >= {"Conv"}


def test_operator_lists_are_consistent() -> None:
    for major in (10, 11):
        data = operator_list(major)
        assert data["source"]["repository"] == "onnx/onnx-tensorrt" and data["max_opset"] >= 24
        for op, entry in data["ops"].items():
            assert set(entry) == {"supported", "dtypes", "notes", "constraints"}, op
            assert not entry["supported"] or set(entry["dtypes"]) <= set(data["tensor_dtypes"]), op
    assert not operator_list(10)["ops"]["Unique"]["supported"]
    assert "Swish" in operator_list(11)["ops"] and "Swish" not in operator_list(10)["ops"]
    with pytest.raises(ValueError, match="major version 9"):
        operator_list(9)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           opset: int = 18, initializers: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(name: str, *shape: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _statuses(report: object, check: str, subject: str | None = None) -> set[str]:
    return {r.status for r in report.find(check, subject)}  # type: ignore[attr-defined]


def test_lint_flags_nonzero() -> None:
    m = _model([helper.make_node("NonZero", ["x"], ["idx"], name="nz")], [_f32("x", 4, 4)],
               [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "n"])])
    report = lint_onnx(m, 10)
    assert not report.ok and _statuses(report, "data_dependent_shape", "NonZero") == {"fail"}
    assert "warn" in _statuses(report, "io_dtype", "idx")  # and its INT64 output reaches the interface


def test_lint_flags_int64_input_and_int64_math() -> None:
    m = _model([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")],
               [helper.make_tensor_value_info(n, TensorProto.INT64, [2, 2]) for n in "ab"],
               [helper.make_tensor_value_info("c", TensorProto.INT64, [2, 2])])
    report = lint_onnx(m, 10)
    assert _statuses(report, "io_dtype", "a") == {"warn"}
    (row,) = report.find("dtype", "MatMul")
    assert row.status == "fail" and "INT64" in row.detail and "mm" in row.detail


def test_lint_flags_unsupported_unknown_and_custom_ops() -> None:
    m = _model([helper.make_node("Det", ["x"], ["d"], name="det"),
                helper.make_node("Unique", ["x"], ["u"], name="uniq"),
                helper.make_node("MyOp", ["x"], ["c"], name="custom", domain="my.domain")],
               [_f32("x", 3, 3)], [_f32("d"), _f32("u", "n"), _f32("c", 3, 3)])
    m.opset_import.append(helper.make_opsetid("my.domain", 1))
    report = lint_onnx(m, 11)
    assert _statuses(report, "op_supported", "Det") == {"fail"}
    assert _statuses(report, "op_supported", "Unique") == {"fail"}
    assert _statuses(report, "op_supported", "my.domain::MyOp") == {"fail"}
    assert _statuses(report, "opset", "my.domain") == {"fail"}


def test_lint_checks_opset_range() -> None:
    def relu(opset: int) -> onnx.ModelProto:
        return _model([helper.make_node("Relu", ["x"], ["y"])], [_f32("x", 2)], [_f32("y", 2)], opset=opset)

    assert lint_onnx(relu(24), 10).ok
    assert _statuses(lint_onnx(relu(25), 10), "opset") == {"fail"}
    assert lint_onnx(relu(25), 11).ok
    assert not lint_onnx(relu(30), 11).ok
    assert not lint_onnx(relu(8), 10).ok


def test_lint_checks_attribute_and_constant_input_rules() -> None:
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="bicubic", mode="cubic")
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    m = _model([resize], [_f32("x", 1, 3, 4, 4)], [_f32("y", 1, 3, 8, 8)], initializers=[scales])
    (row,) = lint_onnx(m, 10).find("constraint", "Resize.mode")
    assert row.status == "fail" and "cubic" in row.detail

    squeeze = _model([helper.make_node("Squeeze", ["x"], ["y"], name="sq")], [_f32("x", 1, 3)], [_f32("y", 3)])
    assert _statuses(lint_onnx(squeeze, 10), "constraint", "Squeeze.axes") == {"fail"}
    assert _statuses(lint_onnx(squeeze, 11), "constraint", "Squeeze.axes") == {"warn"}

    reduce = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="rs")],
                    [_f32("x", 2, 3), helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                    [_f32("y", "a", "b")])
    report = lint_onnx(reduce, 10)
    assert _statuses(report, "constraint", "ReduceSum.axes") == {"fail"}
    assert _statuses(report, "io_dtype", "axes") == {"warn"}

    pool = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])],
                  [_f32("x", 1, 1, 8, 8)], [_f32("y", 1, 1, 6, 6)])
    assert _statuses(lint_onnx(pool, 10), "constraint", "MaxPool.dilations") == {"fail"}


def test_lint_flags_double_and_unknown_tensor_types() -> None:
    m = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="to_f64")], [_f32("x", 2)],
               [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])])
    report = lint_onnx(m, 10)
    assert _statuses(report, "tensor_dtype", "DOUBLE") == {"warn"}
    assert _statuses(report, "dtype", "Cast") == {"fail"}  # TensorRT's Cast does not produce DOUBLE
    assert _statuses(report, "io_dtype", "y") == {"fail"}


# --- paper size (slow) ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper_model() -> DiffV2IQA:
    return build_model(paper_config(), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_paper_graph_matches_torch(paper_model: DiffV2IQA, graph: str, tmp_path: Path,
                                   record_property: Callable[[str, object], None]) -> None:
    """One step at 224x224 (restore_step) or one crop (vcg, vda) of the paper-size model against torch."""
    result = export_graph(paper_model, graph, tmp_path / f"{graph}.onnx")
    assert result.external_data is None  # the paper model still fits one protobuf
    want = contract_graph_spec(graph, paper_model.config.crop_size)
    assert _file_io(onnx.load(str(result.path), load_external_data=False)) == (want.inputs, want.outputs)
    inputs = example_inputs(paper_model.config, graph, batch=1)
    err = compare_with_torch(paper_model, graph, result.path, inputs)
    (out,) = result.outputs
    record_property(f"{graph}_max_abs", err[out.name]["max_abs"])
    record_property(f"{graph}_export_s", round(result.seconds, 1))
    print(f"paper {graph}: {err} export {result.seconds:.1f} s, {result.file_bytes / 1e6:.0f} MB")
    assert err[out.name]["max_abs"] <= 1e-3, err
    for major in (10, 11):
        report = lint_onnx(result.path, major)
        assert report.ok and not report.warnings, report.summary()

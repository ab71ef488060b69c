"""engine/: everything around the TensorRT calls, run without TensorRT (which cannot be installed here).

The inspector JSON below is written by hand from TensorRT's documented layer-information format (the developer
guide's kDETAILED example for 10.x; the 10.x-to-11.x migration guide's "I/O Tensors" and split data-type fields for
11.x). No engine is built in this file and nothing here claims one was.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import EngineEntry, load_bundle, write_bundle
from diffv2iqa_trt.bundle.manifest import ShapeRange
from diffv2iqa_trt.bundle.summary import bundle_summary, engine_rows
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.engine.builder import BuildSettings
from diffv2iqa_trt.engine.bundle_engines import EngineJob, engine_entry, engine_jobs, engines_unavailable
from diffv2iqa_trt.engine.census import (
    judge,
    layer_class,
    layer_precision,
    onnx_intent,
    parse_census,
    tensor_precision,
)
from diffv2iqa_trt.engine.compatibility import Machine, check_loadable, refusal
from diffv2iqa_trt.engine.gpu import GpuInfo
from diffv2iqa_trt.engine.loader import load_engine
from diffv2iqa_trt.engine.profiles import input_profiles, polygraphy_command, trtexec_command
from diffv2iqa_trt.engine.tensorrt_api import TensorRTVersion, tensorrt_missing
from diffv2iqa_trt.engine.timing_cache import TimingCacheFile, cache_key, default_cache_path
from diffv2iqa_trt.errors import BundleError, ConfigError

runner = CliRunner()


# ------------------------------------------------------------------------------------- hand-written inspector output


def _tensor10(name: str, dims: list[int], fmt: str) -> dict[str, Any]:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}


INT8_32 = "Thirty-two wide channel vectorized row major Int8 format"
FP16_2 = "Two wide channel vectorized row major FP16 format"
FP32_LINEAR = "Row major linear FP32 format"


def inspector_10x(conv2_format: str = INT8_32) -> str:
    """A 10.x engine of the Q/DQ shape: reformat, two INT8 convolutions, an FP16 gemm, a softmax."""
    layers = [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /stem/conv", "LayerType": "Reformat",
         "Inputs": [_tensor10("x", [8, 3, 64, 64], FP32_LINEAR)],
         "Outputs": [_tensor10("x_reformatted", [8, 3, 64, 64], INT8_32)]},
        {"Name": "/stem/conv + /stem/relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor10("x_reformatted", [8, 3, 64, 64], INT8_32)],
         "Outputs": [_tensor10("/stem/relu_output_0", [8, 64, 32, 32], INT8_32)], "Kernel": [3, 3],
         "TacticValue": "0x0000000000000001"},
        {"Name": "/layer1/conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor10("/stem/relu_output_0", [8, 64, 32, 32], conv2_format)],
         "Outputs": [_tensor10("/layer1/conv_output_0", [8, 64, 32, 32], FP16_2)]},
        {"Name": "/head/fc/MatMul", "LayerType": "gemm", "ParameterType": "MatrixMultiply",
         "Inputs": [_tensor10("/pool_output_0", [8, 64], "Row major linear FP16 format")],
         "Outputs": [_tensor10("/head/fc_output_0", [8, 10], "Row major linear FP16 format")]},
        {"Name": "/head/softmax", "LayerType": "SoftMax", "Inputs": [_tensor10("a", [8, 10], FP32_LINEAR)],
         "Outputs": [_tensor10("score", [8, 10], FP32_LINEAR)]},
    ]
    return json.dumps({"Layers": layers, "Bindings": ["x", "score"]})


def inspector_11x() -> str:
    """The same engine in 11.x's layout: "I/O Tensors" objects, and "DataType" apart from "Format"."""
    def t(name: str, dtype: str, fmt: str) -> dict[str, Any]:
        return {"Name": name, "Location": "Device", "Dimensions": [8, 64, 32, 32], "DataType": dtype, "Format": fmt}

    layers = [
        {"Name": "/stem/conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [t("x", "Int8", "Thirty-two wide channel vectorized row major")],
         "Outputs": [t("s", "Int8", "Thirty-two wide channel vectorized row major")]},
        {"Name": "/layer1/conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [t("s", "Float", "Row major linear")], "Outputs": [t("o", "Float", "Row major linear")]},
    ]
    io = [{"Name": "x", "IOMode": "Input", "DataType": "Float", "Dimensions": [8, 3, 64, 64], "Location": "Device",
           "IsShapeInferenceIO": False}]
    return json.dumps({"Layers": layers, "I/O Tensors": io})


# ---------------------------------------------------------------------------------------------------------- census


@pytest.mark.parametrize(("text", "precision"), [
    (INT8_32, "int8"), (FP16_2, "fp16"), (FP32_LINEAR, "fp32"), ("Float", "fp32"), ("Half", "fp16"),
    ("Int8", "int8"), ("BFloat16", "bf16"), ("Row major linear BF16 format", "bf16"), ("FP8", "fp8"),
    ("Int32", None), ("Bool", None), ("N/A due to dynamic shapes", None), ("", None)])
def test_tensor_precision_reads_both_schemas_words(text: str, precision: str | None) -> None:
    assert tensor_precision(text) == precision


def test_census_counts_compute_layers_by_input_precision() -> None:
    census = parse_census(inspector_10x())
    assert census.schema == "10.x" and census.layers == 5
    # Reformat and SoftMax are not compute layers; the second conv reads INT8 even though it writes FP16.
    assert dict(census.compute) == {"int8": 2, "fp16": 1}
    assert census.fp32_layers == ()
    assert census.share(["int8"]) == pytest.approx(2 / 3)


def test_census_reads_the_11x_layout() -> None:
    census = parse_census(inspector_11x())
    assert census.schema == "11.x"
    assert dict(census.compute) == {"int8": 1, "fp32": 1}
    assert census.fp32_layers == ("/layer1/conv",)


def test_census_refuses_names_only_and_non_json() -> None:
    with pytest.raises(ValueError, match="layer names only: build with profiling verbosity DETAILED"):
        parse_census(json.dumps({"Layers": ["/stem/conv + /stem/relu", "/head/fc"], "Bindings": ["x"]}))
    with pytest.raises(ValueError, match="not JSON"):
        parse_census("{Layers: ")
    with pytest.raises(ValueError, match="no \"Layers\" list"):
        parse_census("[]")


def test_layer_precision_falls_back_to_outputs() -> None:
    layer = {"LayerType": "gemm", "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}],
             "Outputs": [{"Format/Datatype": "Half"}]}
    assert layer_precision(layer) == "fp16"
    assert layer_precision({"LayerType": "gemm"}) is None


def test_judge_accepts_an_engine_that_keeps_the_onnx_precision() -> None:
    verdict = judge(parse_census(inspector_10x()), {"int8": 2, "fp16": 1}, allowance=0.05)
    assert verdict.ok and verdict.problems == ()
    assert verdict.int8_share == pytest.approx(2 / 3) and verdict.int8_share_onnx == pytest.approx(2 / 3)


def test_judge_fails_silent_fallback_to_fp32() -> None:
    # The second convolution's Q/DQ was not fused: it reads FP32 where the ONNX asked for INT8.
    census = parse_census(inspector_10x(conv2_format=FP32_LINEAR))
    verdict = judge(census, {"int8": 2, "fp16": 1}, allowance=0.05)
    assert not verdict.ok
    assert verdict.fp32_share == pytest.approx(1 / 3)
    assert any("33.3 % of compute layers run in FP32 where the ONNX asks for 0.0 %" in p and "/layer1/conv" in p
               for p in verdict.problems)
    assert any("run in INT8 where the ONNX asks for 66.7 %" in p for p in verdict.problems)
    # A generous allowance accepts it (the option the error message names).
    assert judge(census, {"int8": 2, "fp16": 1}, allowance=0.4).ok


def test_judge_reports_unknown_formats_without_refusing() -> None:
    doc = json.loads(inspector_10x())
    for layer in doc["Layers"]:
        for t in [*layer["Inputs"], *layer["Outputs"]]:
            t["Format/Datatype"] = "N/A due to dynamic shapes"
    verdict = judge(parse_census(json.dumps(doc)), {"int8": 2, "fp16": 1}, allowance=0.05)
    assert verdict.ok and verdict.problems == ()  # nothing measured, so nothing refused
    assert "3 of 3 compute layers name no precision" in verdict.warnings[0]
    assert "the fallback rule measured nothing" in verdict.warnings[1]
    assert verdict.to_dict()["warnings"] == list(verdict.warnings)


MYELIN_BLOCKS = 8


def inspector_vit(patch_format: str = "Row major linear FP16 format") -> str:
    """A 10.x ViT-like FP16 engine as TensorRT's Myelin compiler leaves it: a patch-embedding convolution, each
    transformer block one opaque Myelin layer named {ForeignNode[...]}, a head gemm whose formats are not reported,
    reformats and a softmax. 8 of the 13 layers (62 %) are of no type the census rules classify."""
    half = "Row major linear FP16 format"
    layers: list[dict[str, Any]] = [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv", "LayerType": "Reformat",
         "Inputs": [_tensor10("x", [32, 3, 224, 224], FP32_LINEAR)],
         "Outputs": [_tensor10("x_r", [32, 3, 224, 224], patch_format)]},
        {"Name": "/patch_embed/proj/Conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor10("x_r", [32, 3, 224, 224], patch_format)],
         "Outputs": [_tensor10("tokens", [32, 192, 14, 14], half)]},
        {"Name": "/Reshape + /Transpose", "LayerType": "Shuffle",
         "Inputs": [_tensor10("tokens", [32, 192, 14, 14], half)], "Outputs": [_tensor10("t0", [32, 196, 192], half)]},
    ]
    for i in range(MYELIN_BLOCKS):
        layers.append({"Name": f"{{ForeignNode[/blocks.{i}/norm1/LayerNormalization.../blocks.{i}/mlp/fc2/MatMul]}}",
                       "LayerType": "Myelin", "Inputs": [_tensor10(f"t{i}", [32, 196, 192], half)],
                       "Outputs": [_tensor10(f"t{i + 1}", [32, 196, 192], half)], "TacticValue": "0x0000000000000000"})
    layers += [
        {"Name": "/head/MatMul", "LayerType": "gemm", "ParameterType": "MatrixMultiply",
         "Inputs": [{"Name": "pooled", "Format/Datatype": "N/A due to dynamic shapes"}],
         "Outputs": [{"Name": "logit", "Format/Datatype": "N/A due to dynamic shapes"}]},
        {"Name": "/head/Softmax", "LayerType": "SoftMax", "Inputs": [_tensor10("logit", [32, 5], half)],
         "Outputs": [_tensor10("p", [32, 5], half)]},
    ]
    return json.dumps({"Layers": layers, "Bindings": ["x", "score"]})


def test_vit_engine_of_myelin_layers_passes_and_reports_them() -> None:
    """Issue 21 (1.4): unknown layers (Myelin/ForeignNode, most of a ViT) are their own class, counted and reported,
    and never fail the build; a compute layer whose formats are not reported is a warning, not a refusal."""
    census = parse_census(inspector_vit())
    assert census.layers == 13 and census.other == 3  # reformat, shuffle, softmax
    assert dict(census.unknown) == {"Myelin": MYELIN_BLOCKS}
    assert dict(census.compute) == {"fp16": 1, "unknown": 1}  # the patch conv; the head gemm names no format
    record = census.to_dict()
    assert record["unknown_layers"] == 8 and record["unknown_layer_types"] == {"Myelin": 8}
    assert record["rules_checked_against_tensorrt"] == "none"
    verdict = judge(census, {"fp16": 2 + 4 * MYELIN_BLOCKS}, allowance=0.05)  # AutoCast: every MatMul/Conv FP16
    assert verdict.ok, verdict.problems
    assert verdict.fp32_share == 0.0
    assert "8 of 13 layers are of a kind the census rules do not classify (8 Myelin)" in verdict.warnings[0]
    assert "1 of 2 compute layers name no precision" in verdict.warnings[1]


def test_vit_engine_with_a_real_fp32_fallback_still_fails() -> None:
    census = parse_census(inspector_vit(patch_format=FP32_LINEAR))  # the patch conv fell back to FP32
    verdict = judge(census, {"fp16": 2 + 4 * MYELIN_BLOCKS}, allowance=0.05)
    assert not verdict.ok
    assert verdict.fp32_share == 1.0  # of the compute layers whose precision is known
    assert "100.0 % of compute layers run in FP32 where the ONNX asks for 0.0 %" in verdict.problems[0]
    assert "/patch_embed/proj/Conv" in verdict.problems[0]


@pytest.mark.parametrize(("layer", "cls"), [
    ({"LayerType": "Myelin", "Name": "{ForeignNode[/a/MatMul]}"}, "unknown"),
    ({"LayerType": "Myelin", "ParameterType": "gemm"}, "unknown"),  # opaque even when its words look like compute
    ({"LayerType": "kgen", "Name": "__myl_Fc_0"}, "unknown"),
    ({"LayerType": "NewLayerKind2031"}, "unknown"),
    ({}, "unknown"),
    ({"LayerType": "CaskConvolution", "ParameterType": "Convolution"}, "compute"),
    ({"LayerType": "CaskDeconvolution"}, "compute"),
    ({"LayerType": "gemm", "ParameterType": "MatrixMultiply"}, "compute"),
    ({"LayerType": "Reformat"}, "other"), ({"LayerType": "PointWiseV2"}, "other"), ({"LayerType": "NoOp"}, "other"),
    ({"LayerType": "CaskPooling"}, "other"), ({"LayerType": "Shuffle"}, "other"), ({"LayerType": "SoftMax"}, "other"),
])
def test_layer_classes(layer: dict[str, Any], cls: str) -> None:
    assert layer_class(layer) == cls


def _conv_graph(kind: str) -> onnx.ModelProto:
    """A real two-node ONNX model (conv then matmul) in fp32, fp16 (AutoCast's layout: casts around fp16 nodes) or
    int8 (ModelOpt's layout: Q/DQ on the conv's activation and weight)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    m = rng.normal(size=(4 * 6 * 6, 5)).astype(np.float32)
    dtype = np.float16 if kind == "fp16" else np.float32
    inits = [numpy_helper.from_array(w.astype(dtype), "w"), numpy_helper.from_array(m.astype(dtype), "m"),
             numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")]
    nodes = []
    x = "x"
    if kind == "fp16":
        nodes.append(helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
    if kind == "int8":
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
                  helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"]),
                  helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"])]
        x, wname = "xd", "wd"
    else:
        wname = "w"
    nodes += [helper.make_node("Conv", [x, wname], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["r"]),
              helper.make_node("MatMul", ["r", "m"], ["y_" if kind == "fp16" else "y"])]
    if kind == "fp16":
        nodes.append(helper.make_node("Cast", ["y_"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def test_onnx_intent_reads_the_precision_each_compute_node_asks_for() -> None:
    assert onnx_intent(_conv_graph("fp32")) == {"fp32": 2}
    assert onnx_intent(_conv_graph("fp16")) == {"fp16": 2}
    # The conv reads Q/DQ (int8); the matmul after it stays in float32 (no Q/DQ on its inputs).
    assert onnx_intent(_conv_graph("int8")) == {"int8": 1, "fp32": 1}


# -------------------------------------------------------------------------------------------------------- profiles


@pytest.fixture(scope="module")
def onnx_bundle(auto_built: tuple[Any, str]) -> Path:
    """A real tiny ONNX bundle, written by `build --target auto` without TensorRT (the source engines are built
    from; profile options at their defaults: --opt-batch 8 --max-batch 16 --max-size 512)."""
    return Path(auto_built[0].root)


def test_input_profiles_come_from_the_manifest(onnx_bundle: Path) -> None:
    bundle = load_bundle(onnx_bundle)
    crop = bundle.manifest.pipeline.crop_size
    step = {p.name: p for p in input_profiles("restore_step", bundle.graph("restore_step"))}
    assert list(step) == ["x", "y", "gamma", "coef", "z"]
    assert step["x"].min == (1, 3, crop, crop) and step["x"].opt == (8, 3, crop, crop)
    assert step["x"].max == (16, 3, 512, 512)
    assert step["z"].max == (1, 3, 512, 512)  # the noise row is broadcast: batch 1 at every level
    assert step["coef"].opt == (8, 5)
    vcg = input_profiles("vcg", bundle.graph("vcg"))
    assert [p.name for p in vcg] == ["x", "y0", "y_t1", "y_t2"]
    assert vcg[0].min == (1, 3, crop, crop) and vcg[0].max == (16, 3, crop, crop)


def test_profile_mismatch_is_refused(onnx_bundle: Path) -> None:
    import dataclasses

    entry = load_bundle(onnx_bundle).graph("vcg")
    bad = dataclasses.replace(entry, profiles=dataclasses.replace(
        entry.profiles, opt={**entry.profiles.opt, "x": (2, 3, 99, 99)}))
    with pytest.raises(BundleError, match="opt shape \\[2, 3, 99, 99\\] of input 'x' does not fit"):
        input_profiles("vcg", bad)


def test_trtexec_and_polygraphy_equivalents(onnx_bundle: Path) -> None:
    bundle = load_bundle(onnx_bundle)
    crop = bundle.manifest.pipeline.crop_size
    profiles = input_profiles("vcg", bundle.graph("vcg"))
    cmd = trtexec_command("vcg.fp16.onnx", "vcg.fp16.plan", profiles, opt_level=3, workspace_mib=4096,
                          timing_cache="t.cache", version_compatible=True, exclude_lean_runtime=False)
    shape = f"3x{crop}x{crop}"
    assert cmd == (f"trtexec --onnx=vcg.fp16.onnx --saveEngine=vcg.fp16.plan --stronglyTyped "
                   f"--minShapes=x:1x{shape},y0:1x{shape},y_t1:1x{shape},y_t2:1x{shape} "
                   f"--optShapes=x:8x{shape},y0:8x{shape},y_t1:8x{shape},y_t2:8x{shape} "
                   f"--maxShapes=x:16x{shape},y0:16x{shape},y_t1:16x{shape},y_t2:16x{shape} "
                   "--builderOptimizationLevel=3 --profilingVerbosity=detailed --memPoolSize=workspace:4096M "
                   "--timingCacheFile=t.cache --versionCompatible")
    for removed in ("--fp16", "--int8", "--best", "--calib"):
        assert removed not in cmd.split()  # TensorRT 11's trtexec has no weak-typing flags
    poly = polygraphy_command("vcg.fp16.onnx", "vcg.fp16.plan", profiles, opt_level=5, workspace_mib=None,
                              timing_cache=None, version_compatible=False, exclude_lean_runtime=False)
    assert poly.startswith("polygraphy convert vcg.fp16.onnx --convert-to trt -o vcg.fp16.plan --strongly-typed ")
    assert f"--trt-max-shapes y_t2:[16,3,{crop},{crop}]" in poly and "--builder-optimization-level 5" in poly


# ---------------------------------------------------------------------------------------------------- refusals


def _entry(tensorrt: str = "10.13.0.35", gpu: str = "NVIDIA H200", sm: str = "9.0", vc: bool = False) -> EngineEntry:
    return EngineEntry(file="engines/vcg.fp16.plan", tensorrt=tensorrt, gpu=gpu, sm=sm, precision="fp16",
                       source_onnx="vcg.fp16.onnx", source_sha256="0" * 64, version_compatible=vc, flags={},
                       device_memory_bytes=0, profile={}, build_seconds=0.0, census={})


@pytest.mark.parametrize(("entry", "here", "why"), [
    (_entry(), Machine("10.13.0.35", "NVIDIA H200", "9.0"), None),
    (_entry(), Machine("10.13.3.9", "NVIDIA H200", "9.0"),
     "built with TensorRT 10.13.0.35 and this is TensorRT 10.13.3.9"),
    (_entry(vc=True), Machine("10.16.1.2", "NVIDIA H200", "9.0"), None),
    (_entry(vc=True), Machine("10.9.0.34", "NVIDIA H200", "9.0"), "runs on TensorRT 10.x releases from 10.13 on"),
    (_entry(vc=True), Machine("11.1.0.6", "NVIDIA H200", "9.0"), "this is TensorRT 11.1.0.6"),
    (_entry(), Machine("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0"), "compute capability 9.0 (NVIDIA H200)"),
    (_entry(), Machine("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"), "built on a NVIDIA H200 and this GPU"),
])
def test_refusal_rules(entry: EngineEntry, here: Machine, why: str | None) -> None:
    got = refusal(entry, here)
    assert (got is None) if why is None else (got is not None and why in got), got


def test_check_loadable_names_engine_and_rebuild_command() -> None:
    with pytest.raises(BundleError) as e:
        check_loadable("out/b", "vcg", "fp16", _entry(), Machine("11.1.0.6", "NVIDIA H200", "9.0"))
    msg = str(e.value)
    assert "fp16 TensorRT engine of vcg (engines/vcg.fp16.plan)" in msg
    assert "diffv2iqa-trt build --target tensorrt --from-bundle out/b --out out/b --overwrite" in msg


def test_version_parsing() -> None:
    assert TensorRTVersion.parse("10.13.0.35") < TensorRTVersion.parse("10.16.1.2") < TensorRTVersion.parse("11.0")
    with pytest.raises(ValueError):
        TensorRTVersion.parse("ten")


# ------------------------------------------------------------------------------------------------- timing cache


def test_cache_key_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Machine("10.13.0.35", "NVIDIA H200 NVL", "9.0")
    assert cache_key(m) == "trt10.13.0.35-sm9.0-nvidia-h200-nvl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path(m) == tmp_path / "diffv2iqa-trt" / "timing" / "trt10.13.0.35-sm9.0-nvidia-h200-nvl.cache"


def _union(current: bytes, new: bytes) -> bytes:
    """Stands in for ITimingCache.combine on bytes: a sorted union of entries (one per line)."""
    return b"".join(sorted(set(current.splitlines(keepends=True)) | set(new.splitlines(keepends=True))))


def _merge_many(path: str, worker: int) -> None:
    cache = TimingCacheFile(Path(path))
    for i in range(25):
        cache.merge(f"w{worker}-entry{i}\n".encode(), _union)


def test_concurrent_merges_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.cache"
    assert TimingCacheFile(path).read() == b""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_merge_many, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_bytes().splitlines()
    assert len(lines) == 75 and len(set(lines)) == 75
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.cache", "t.cache.lock"]  # no temp file left


def test_failed_merge_keeps_the_old_cache(tmp_path: Path) -> None:
    cache = TimingCacheFile(tmp_path / "t.cache")
    cache.merge(b"a\n", _union)

    def broken(current: bytes, new: bytes) -> bytes:
        raise RuntimeError("TensorRT refused to combine")

    with pytest.raises(RuntimeError):
        cache.merge(b"b\n", broken)
    assert cache.read() == b"a\n"


# ---------------------------------------------------------------------------------------------- settings, jobs


@pytest.mark.parametrize(("settings", "message"), [
    (BuildSettings(opt_level=6), "--opt-level must be 0 to 5"),
    (BuildSettings(workspace_mib=0), "--workspace-mib must be at least 1"),
    (BuildSettings(exclude_lean_runtime=True), "only applies to --version-compatible"),
    (BuildSettings(fallback_allowance=1.0), "--fallback-allowance must be in"),
])
def test_build_settings_are_checked(settings: BuildSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.check()


def test_flags_say_strongly_typed_and_name_no_precision_flag() -> None:
    flags = BuildSettings(version_compatible=True, exclude_lean_runtime=True).flags()
    assert flags["strongly_typed"] is True and flags["version_compatible"] and flags["exclude_lean_runtime"]
    assert not {"fp16", "int8", "bf16", "fp8"} & {k.lower() for k in flags}


def test_engine_entries_round_trip_through_a_bundle(onnx_bundle: Path, tmp_path: Path) -> None:
    """What add_engines records, written with write_bundle and read back by inspect (the plan bytes are not an
    engine: no engine can be built here)."""
    bundle = load_bundle(onnx_bundle)
    jobs = engine_jobs(bundle)
    assert [(j.graph, j.precision) for j in jobs] == [("restore_step", "fp32"), ("vcg", "fp32"), ("vda", "fp32")]
    assert engine_jobs(bundle, ["fp16"]) == []
    job = EngineJob("vcg", "fp32", bundle.graph("vcg").variants["fp32"].file)
    gpu = GpuInfo(0, "NVIDIA H200", "9.0", 150 * 2**30, "13.0", "13.0")
    census = parse_census(inspector_10x())
    verdict = judge(census, {"int8": 2, "fp16": 1}, 0.05)
    entry = engine_entry(job, bundle.graph("vcg").variants["fp32"].sha256, Machine("10.13.0.35", gpu.name, gpu.sm),
                         gpu, BuildSettings(), input_profiles("vcg", bundle.graph("vcg")), 12.3456, 64 * 2**20,
                         {**census.to_dict(), "verdict": verdict.to_dict()})
    doc = bundle.manifest.to_dict()
    for key in ("files", "created", "toolkit_version"):
        doc.pop(key)
    doc["graphs"]["vcg"]["engines"]["fp32"] = entry.to_dict()
    files = {name: bundle.file_path(name) for name in bundle.manifest.files}
    (tmp_path / "plan").write_bytes(b"\x00not an engine")
    (tmp_path / "layers.json").write_text(inspector_10x())
    files[job.engine_file], files[job.layers_file] = tmp_path / "plan", tmp_path / "layers.json"
    out = load_bundle(write_bundle(tmp_path / "with-engine", doc, files))
    e = out.engine("vcg", "fp32")
    assert e.source_sha256 == out.graph("vcg").variants["fp32"].sha256 and e.source_onnx == "vcg.fp32.onnx"
    assert e.census["rules_checked_against_tensorrt"] == "none"  # no real engine has checked the rules
    assert e.lean_runtime is None and e.version_compatible is False  # the full runtime runs it
    assert e.profile["x"] == ShapeRange((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))
    assert e.build_seconds == 12.346 and e.device_memory_bytes == 64 * 2**20 and e.precision == "fp32"
    assert e.sha256 == out.manifest.files[job.engine_file].sha256 and e.layer_information == job.layers_file
    assert set(e.extra) == {"gpu_memory_bytes", "cuda_driver", "cuda_runtime", "built", "equivalent"}
    # The typed entry gives back the JSON it was read from, and the JSON round-trips through it.
    written = json.loads((out.root / "manifest.json").read_text())["graphs"]["vcg"]["engines"]["fp32"]
    assert e.to_dict() == written and EngineEntry.from_dict(written) == e
    trtexec = e.extra["equivalent"]["trtexec"]
    assert trtexec.startswith("trtexec --onnx=vcg.fp32.onnx --saveEngine=engines/vcg.fp32.plan --stronglyTyped")
    summary = bundle_summary(out)["graphs"]["vcg"]["engines"]["fp32"]
    assert summary["built"] == "TensorRT 10.13.0.35, NVIDIA H200 (sm 9.0)" and summary["census"]["verdict"] == "ok"
    assert engine_rows(out) == [("vcg", "fp32", "0.0", "12.346", "0.0 % (0.0 %)", "66.7 % (66.7 %)", "ok")]
    # The loader refuses it on another TensorRT before TensorRT is asked to read the plan (runtime is not used).
    with pytest.raises(BundleError, match="built with TensorRT 10.13.0.35 and this is TensorRT 11.1.0.6; rebuild"):
        load_engine(out, "vcg", "fp32", runtime=None, here=Machine("11.1.0.6", "NVIDIA H200", "9.0"))


# ---------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed here: the build would run "
                    "(tests/test_engine_tensorrt.py covers that)")
def test_build_target_tensorrt_without_tensorrt_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["build", "--preset", "tiny", "--target", "tensorrt", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "TensorRT is not installed" in result.output and "https://pypi.nvidia.com" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(engines_unavailable() is None, reason="TensorRT and a GPU are here: --target auto builds the "
                    "engines")
def test_build_target_auto_writes_the_onnx_bundle_and_says_engines_were_skipped(auto_built: tuple[Any, str]) -> None:
    bundle, output = auto_built
    assert "--target auto: engines skipped, writing the ONNX bundle only" in output
    assert "TensorRT is not installed" in output
    assert all(bundle.engine_precisions(g) == () for g in ("restore_step", "vcg", "vda"))
    assert all(bundle.precisions(g) == ("fp32",) for g in ("restore_step", "vcg", "vda"))


def test_engine_options_need_an_engine_target(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(tmp_path / "b"), "--opt-level", "5"])
    assert result.exit_code == 2 and "are TensorRT engine options: add --target tensorrt" in result.output
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(tmp_path / "b"), "--target", "auto",
                                 "--exclude-lean-runtime"])
    assert result.exit_code == 2 and "only applies to --version-compatible" in result.output
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(tmp_path / "b"), "--lean-runtime",
                                 str(tmp_path / "libnvinfer_lean.so.10")])
    assert result.exit_code == 2 and "--lean-runtime are TensorRT engine options" in result.output
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(tmp_path / "b"), "--target", "auto",
                                 "--version-compatible", "--exclude-lean-runtime"])
    assert result.exit_code == 2 and "--lean-runtime" in result.output, result.output
    assert not (tmp_path / "b").exists()
    result = runner.invoke(app, ["score", str(tmp_path / "x.png"), "--preset", "tiny", "--lean-runtime",
                                 str(tmp_path / "libnvinfer_lean.so.10")])
    assert result.exit_code == 2 and "--lean-runtime applies to --backend tensorrt only" in result.output


def test_type_stubs_on_the_path_do_not_count_as_tensorrt(tmp_path: Path) -> None:
    # The stubs as site-packages would hold them: a `tensorrt` folder with only .pyi files imports as an empty
    # namespace package; it must not pass for TensorRT.
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    code = "from diffv2iqa_trt.engine.tensorrt_api import tensorrt_missing; print(tensorrt_missing())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "has no TensorRT in it (a placeholder, or type stubs)" in proc.stdout

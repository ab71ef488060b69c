"""cpu_profile's arithmetic: kernel precisions from exec_type, layers grouped by op type, GFLOP/s and the matrix-op
summary, the Markdown from a small result (no OpenVINO or torch needed)."""

from __future__ import annotations

import pytest

from diffv2iqa_trt.benchmarks.cpu_profile import (
    LayerRow,
    gflop_per_s,
    group_layers,
    kernel_precision,
    markdown,
    matrix_summary,
)


@pytest.mark.parametrize(("exec_type", "expected"), [
    ("brgconv_avx512_bf16", "bf16"), ("brgconv_avx512_1x1_BF16", "bf16"), ("jit_avx512_f32", "f32"),
    ("gemm_mlas_f32", "f32"), ("reorder_FP32", "f32"), ("ref_any_I8", "i8"), ("jit_uni_u8", "u8"),
    ("undef", "n/a"), ("unknown", "n/a"), ("", "n/a")])
def test_kernel_precision(exec_type: str, expected: str) -> None:
    assert kernel_precision(exec_type) == expected


ROWS = [
    LayerRow("conv1", "Convolution", "brgconv_avx512_bf16", "EXECUTED", 6.0, 11.0),
    LayerRow("conv2", "Convolution", "brgconv_avx512_1x1_f32", "EXECUTED", 2.0, 4.0),
    LayerRow("fc", "FullyConnected", "brgemm_avx512_bf16", "EXECUTED", 1.0, 2.0),
    LayerRow("re1", "Reorder", "jit_uni_bf16", "EXECUTED", 0.5, 1.0),
    LayerRow("re2", "Reorder", "jit_uni_bf16", "EXECUTED", 0.5, 1.0),
    LayerRow("view", "Reshape", "unknown", "OPTIMIZED_OUT", 0.0, 0.0),
    LayerRow("idle", "Convolution", "undef", "NOT_RUN", 9.0, 9.0),  # not executed: left out even with a time
]


def test_group_layers_sums_by_type_and_precision() -> None:
    groups = group_layers(ROWS)
    assert [g["node_type"] for g in groups] == ["Convolution", "FullyConnected", "Reorder"]  # most time first
    conv, fc, reorder = groups
    assert conv["layers"] == 2 and conv["real_ms"] == pytest.approx(8.0) and conv["share"] == pytest.approx(0.8)
    assert conv["by_precision"] == {"bf16": pytest.approx(6.0), "f32": pytest.approx(2.0)}
    assert list(conv["by_exec_type"]) == ["brgconv_avx512_bf16", "brgconv_avx512_1x1_f32"]
    assert conv["matrix_op"] and fc["matrix_op"] and not reorder["matrix_op"]
    assert reorder["layers"] == 2 and reorder["real_ms"] == pytest.approx(1.0)
    assert reorder["share"] == pytest.approx(0.1)
    assert sum(g["share"] for g in groups) == pytest.approx(1.0)


def test_group_layers_counts_a_layer_summed_over_runs_once() -> None:
    rows = [LayerRow("conv", "Convolution", "brgconv_avx512_bf16", "EXECUTED", 3.0, 3.0)] * 2
    (conv,) = group_layers(rows)
    assert conv["layers"] == 1 and conv["real_ms"] == pytest.approx(6.0)


def test_gflop_arithmetic() -> None:
    assert gflop_per_s(2e9, 0.5) == pytest.approx(4.0)
    groups = group_layers(ROWS)  # matrix ops: 9 ms of 10 summed over 2 runs -> 4.5 ms per run
    m = matrix_summary(groups, flop=9e9, runs=2)
    assert m["share"] == pytest.approx(0.9)
    assert m["ms_per_run"] == pytest.approx(4.5)
    assert m["gflop_per_s"] == pytest.approx(9e9 / 4.5e-3 / 1e9)  # 2000 GFLOP/s
    assert matrix_summary([], flop=1e9, runs=1) == {"share": 0.0, "ms_per_run": 0.0, "gflop_per_s": None}


def test_markdown_reports_peaks_choices_and_profile() -> None:
    groups = group_layers(ROWS)
    result = {
        "graph": "restore_step", "model": "paper", "cpu_model": "AMD EPYC", "isa_flags": ["avx512_bf16"],
        "versions": {"openvino": "2026.4"}, "load_before": [1.0, 1.5, 2.0], "load_after": [1.2, 1.5, 2.0],
        "threads": 2, "batch": 1, "crop_size": 224, "gflop": 9.0, "peak_n": 2048, "rounds": 3,
        "peaks": {"f32": {"torch": 150.0, "openvino": 160.0, "peak": 160.0},
                  "bf16": {"torch": 250.0, "openvino": 300.0, "peak": 300.0},
                  "i8": {"openvino": 600.0, "peak": 600.0}},
        "choices": {"onnxruntime fp32": {"median_s": 0.2, "speedup": 1.0, "gflop_per_s": 45.0, "of_peak": 0.28125,
                                         "peak_precision": "f32"}},
        "profiles": {"bf16": {"runs": 2, "wall_s": 0.006, "layer_ms_per_run": 5.0, "by_op_type": groups,
                              "matrix_ops": matrix_summary(groups, 9e9, 2)},
                     "int8-cpu": {"runs": 2, "wall_s": 0.006, "layer_ms_per_run": 5.0, "by_op_type": groups,
                                  "matrix_ops": matrix_summary(groups, 9e9, 2), "peak_precision": "i8"}}}
    text = markdown(result)
    assert "| bf16 | 250.0 | 300.0 | **300.0** |" in text
    assert "| onnxruntime fp32 | 200.0 | 1.00× | 45.0 | 28.1 % of f32 |" in text
    assert "Matrix op types: 90.0 % of the layer time, 4.5 ms per run" in text
    assert "2000.0 GFLOP/s (666.7 % of the bf16 peak)" in text
    assert "| i8 | nan | 600.0 | **600.0** |" in text  # OpenVINO's INT8 MatMul; torch has none
    assert "## OpenVINO int8-cpu profile" in text and "2000.0 GFLOP/s (333.3 % of the i8 peak)" in text
    assert "| Convolution (matrix) | 2 | 4.0 | 80.0 % | bf16 75 %, f32 25 % |" in text

"""INT8 on OpenVINO (issue 24 item 3): the openvino backend runs a bundle's int8-cpu variants (the toolkit's own
calibration, Q/DQ) with OpenVINO's integer kernels, `build --precision bf16` measures them on OpenVINO next to bf16
and records the plan that keeps the budget, and `auto` offers that plan. On the tiny `auto_built` bundle (random
weights: the budget here is loose, these tests check the wiring and the numbers' relations, not the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt import auto_choice
from diffv2iqa_trt.bundle import Bundle, load_bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.contract import RESTORE_STEP, VDA
from diffv2iqa_trt.data.distortions import distort
from diffv2iqa_trt.data.photos import SET_DISTORTIONS
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.precision.bf16 import bf16_note, bf16_record
from diffv2iqa_trt.precision_plan import parse_plan
from diffv2iqa_trt.runtime.backends import BackendOptions, create_executor

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'diffv2iqa-trt[openvino]'")
LOOSE = ["--min-srcc", "0.5", "--max-delta", "0.5"]  # random weights: scores barely spread
QUANTISED = (RESTORE_STEP, VDA)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "ov-int8-cache"))


@pytest.fixture(scope="module")
def image_sets(photos: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ov-int8-images")
    for name, offset in (("calib", 0), ("eval", 100)):
        (root / name).mkdir()
        for i in range(8):
            rgb = photos[(i + offset // 50) % 4][:160, :160]
            image = distort(rgb, SET_DISTORTIONS[i % 3], 1 + (i + offset) % 5, seed=i + offset)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root / "calib", root / "eval"


@pytest.fixture(scope="module")
def quantised(auto_built: tuple[Any, str], image_sets: tuple[Path, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The tiny bundle with int8-cpu variants of restore_step and vda, made through the CLI."""
    out = tmp_path_factory.mktemp("ov-int8") / "int8"
    result = CliRunner().invoke(app, [
        "build", "--from-bundle", str(auto_built[0].root), "--precision", "restore_step=int8-cpu,vda=int8-cpu",
        "--calib-images", str(image_sets[0]), "--calib-crops", "8", "--calib-methods", "max", "--out", str(out)])
    assert result.exit_code == 0, result.output  # also: the build's closing report reads its own calibration record
    return load_bundle(out)


@pytest.fixture(scope="module")
def measured(quantised: Bundle, image_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Bundle, str]:
    from diffv2iqa_trt.runtime.backends.openvino_backend import bf16_problem_here

    problem = bf16_problem_here()
    if problem:
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("ov-int8") / "measured"
    result = CliRunner().invoke(app, ["build", "--precision", "bf16", "--from-bundle", str(quantised.root),
                                      "--eval-images", str(image_sets[1]), *LOOSE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_bundle(out), result.stdout


def test_openvino_runs_the_int8_cpu_variant(quantised: Bundle) -> None:
    from diffv2iqa_trt.runtime.backends.openvino_backend import bf16_problem_here

    feeds = auto_choice.synthetic_feeds(quantised, batch=2)
    ov_int8 = create_executor("openvino", quantised, BackendOptions(precision="restore_step=int8,vda=int8", threads=1))
    assert ov_int8.plan == "restore_step=int8-cpu,vcg=fp32,vda=int8-cpu"  # type: ignore[attr-defined]
    hint = "f32" if bf16_problem_here() else "bf16"
    assert [ov_int8.inference_precision(g) for g in ("restore_step", "vcg", "vda")] == [hint, "f32", hint]  # type: ignore[attr-defined]
    ort_int8 = create_executor("onnxruntime", quantised, BackendOptions(precision="restore_step=int8-cpu,vda=int8-cpu",
                                                                             threads=1))
    fp32 = create_executor("onnxruntime", quantised, BackendOptions(precision="fp32", threads=1))
    for graph in QUANTISED:
        ref = np.asarray(getattr(fp32, graph)(*feeds[graph]), np.float64)
        ov = np.asarray(getattr(ov_int8, graph)(*feeds[graph]), np.float64)
        ort = np.asarray(getattr(ort_int8, graph)(*feeds[graph]), np.float64)
        ov_error, ort_error = np.abs(ov - ref).max(), np.abs(ort - ref).max()
        # Quantised for real (not the FP32 graph), and as close to FP32 as ONNX Runtime's run of the same variant:
        # the two round differently, so neither error bounds the other exactly.
        assert ov_error > 1e-5 * np.abs(ref).max(), graph
        assert ov_error < 3 * ort_error + 1e-3 * np.abs(ref).max(), (graph, ov_error, ort_error)


def test_openvino_refuses_what_it_cannot_run(quantised: Bundle) -> None:
    with pytest.raises(ConfigError, match=r"runs fp32, bf16 .* int8-cpu variants; the plan asks for .*vcg=int8.*"
                                          r"--backend onnxruntime for int8"):
        create_executor("openvino", quantised, BackendOptions(precision="vcg=int8"))  # no int8-cpu variant of vcg


def test_bf16_build_measures_int8_on_openvino_and_records_the_plan(measured: tuple[Bundle, str],
                                                                  quantised: Bundle) -> None:
    bundle, stdout = measured
    record = bf16_record(bundle)
    assert record is not None and set(record.int8) == set(QUANTISED)
    for graph in QUANTISED:
        entry = record.int8[graph]
        assert entry["scores"]["images"] == 8 and entry["hint"] in ("bf16", "f32")
        assert 0 < entry["tensor"]["max_abs"] < 0.5 * entry["tensor"]["reference_max_abs"]
        assert entry["tensor"]["rows"] > 0 and entry["tensor"]["cosine"] > 0.99
    assert record.graphs["vcg"]["tensor"] is not None and "vcg" not in record.int8  # bf16 only: no variant
    # The plan: the lowest precision per graph that keeps the (loose) budget; int8-cpu keeps it here.
    assert record.plan[RESTORE_STEP] == record.plan[VDA] == "int8-cpu" and record.within_budget
    search = bundle.manifest.precision.report["bf16"]["search"]  # type: ignore[union-attr]
    assert search[0]["plan"][RESTORE_STEP] == "int8-cpu"
    assert f"OpenVINO plan {record.plan_label}: SRCC" in stdout
    # The bundle's files are unchanged, and the record runs.
    assert bundle.manifest.graphs == quantised.manifest.graphs
    executor = create_executor("openvino", bundle, BackendOptions(precision=record.plan_label, threads=1))
    assert executor.plan == record.plan_label  # type: ignore[attr-defined]


def test_auto_offers_the_measured_openvino_plan(measured: tuple[Bundle, str]) -> None:
    bundle = measured[0]
    record = bf16_record(bundle)
    assert record is not None
    options, skipped = auto_choice.candidates(bundle, threads=1, bf16_problem=None, openvino=True)
    offered = {(o.backend, o.precision) for o in options}
    assert ("openvino", record.plan_label) in offered and "openvino bf16" not in skipped
    assert next(o for o in options if o.precision == record.plan_label).accuracy == record.plan_scores


def test_a_remade_int8_cpu_variant_drops_the_openvino_record(measured: tuple[Bundle, str],
                                                             image_sets: tuple[Path, Path], tmp_path: Path) -> None:
    # The record measured the old variant on OpenVINO; a build that replaces it must not carry the record over.
    out = tmp_path / "remade"
    result = CliRunner().invoke(app, [
        "build", "--from-bundle", str(measured[0].root), "--precision", "restore_step=int8-cpu",
        "--calib-images", str(image_sets[0]), "--calib-crops", "8", "--calib-methods", "max", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert bf16_record(measured[0]) is not None and bf16_record(load_bundle(out)) is None


def test_an_unmeasured_openvino_int8_run_is_noted(quantised: Bundle, measured: tuple[Bundle, str],
                                                  image_sets: tuple[Path, Path]) -> None:
    plan = parse_plan("restore_step=int8-cpu")
    note = bf16_note(quantised, plan, "openvino")
    assert note is not None and "int8-cpu on OpenVINO is not measured on this bundle for restore_step" in note
    assert bf16_note(quantised, plan, "onnxruntime") is None  # the variant's own record is ONNX Runtime's
    assert bf16_note(measured[0], plan, "openvino") is None
    image = str(next(image_sets[1].iterdir()))
    result = CliRunner().invoke(app, ["score", "--bundle", str(quantised.root), "--backend", "openvino",
                                      "--precision", "restore_step=int8-cpu", "--threads", "1", image])
    assert result.exit_code == 0, result.output
    assert "note: int8-cpu on OpenVINO is not measured on this bundle for restore_step" in result.stderr

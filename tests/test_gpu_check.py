"""The GPU check's harness (benchmarks/gpu_check.py), checked on the CPU: the device exercise can fail, the peaks
match each row's precision, the report is on disk after every phase (also when a phase fails, hangs or the budget
runs out), and an injected setup failure lands in it. Its typed report (benchmarks/gpu_check_report.py) writes the
layout the untyped harness wrote (tests/data/gpu_check: dry-run reports of the harness before the records were
typed) and reads it back. The whole dry run is the `slow` test at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffv2iqa_trt.benchmarks import gpu_check as gc
from diffv2iqa_trt.benchmarks import gpu_check_report as gr
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.runtime.device import HostDevice, HostGraph

ROOT = Path(__file__).resolve().parents[1]
BEFORE = ROOT / "tests" / "data" / "gpu_check"  # written by the untyped harness (commit 173c9f1), --dry-run


def _doc(out: Path) -> dict[str, Any]:
    """gpu_check.json as plain JSON: what any reader of the file sees."""
    doc: dict[str, Any] = json.loads((out / "gpu_check.json").read_text())
    return doc


def _report(out: Path) -> gr.GpuCheckReport:
    return gr.GpuCheckReport.from_json((out / "gpu_check.json").read_text())


def _layout(value: Any) -> Any:
    """The JSON's structure: keys in order, lists item by item, values by type."""
    if isinstance(value, dict):
        return [(k, _layout(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_layout(v) for v in value]
    return type(value).__name__


# ----------------------------------------------------------------------------------------------- device exercise


class RunsCopiesWhileCapturing(HostDevice):
    """A broken device: a 'capture' runs the copies at once and records nothing (so a replay does nothing)."""

    def begin_capture(self, stream: Any) -> None:
        pass

    def end_capture(self, stream: Any) -> HostGraph:
        return HostGraph()


def test_the_device_exercise_passes_on_a_correct_device() -> None:
    result = gc.exercise_device(HostDevice())
    assert result.ok and result.checks is not None and set(result.checks) == {
        "eager: copy across streams", "eager: window copy", "capture did not run the copies",
        "replay: copy across streams", "replay: window copy"}


def test_the_capture_check_fails_when_a_device_runs_copies_during_capture() -> None:
    result = gc.exercise_device(RunsCopiesWhileCapturing())
    assert result.ok is False and result.checks == {
        "eager: copy across streams": True, "eager: window copy": True, "capture did not run the copies": False,
        "replay: copy across streams": True, "replay: window copy": True}


def test_peaks_are_chosen_by_precision_and_gpu() -> None:
    sxm = "NVIDIA H100 80GB HBM3"
    assert gc.peak_for(sxm, "fp32") == ("FP32 (CUDA cores)", 67.0)
    assert gc.peak_for(sxm, "tf32") == ("TF32 dense", 494.7)
    assert gc.peak_for(sxm, "fp16") == ("FP16 dense", 989.4)
    assert gc.peak_for("NVIDIA H200", "tf32") == ("TF32 dense", 494.7)
    assert gc.peak_for("NVIDIA H100 PCIe", "fp32") == ("FP32 (CUDA cores)", 51.0)
    assert gc.peak_for("NVIDIA A100-SXM4-80GB", "fp32") == ("FP32 (CUDA cores)", 19.5)  # not the A10's
    assert gc.peak_for("NVIDIA A10", "fp16") == ("FP16 dense", 125.0)
    assert gc.peak_for("NVIDIA L40S", "tf32") == ("TF32 dense", 183.0)  # not the L4's
    assert gc.peak_for("Some Other GPU", "fp16") is None


def test_throughput_rows_are_compared_with_their_own_precisions_peak() -> None:
    class Stage:
        restore_ms = 1000.0

    fp32 = gc._tflops(Stage(), False, 8, 50, 10.0, 600.0, "NVIDIA H100 80GB HBM3", "fp32")
    assert fp32 == gr.Achieved(tflops=4.0, tflops_of="loop", peak=gr.Peak("FP32 (CUDA cores)", 67.0),
                               of_peak=round(4.0 / 67.0, 4))
    fp16 = gc._tflops(Stage(), True, 8, 50, 10.0, 600.0, "NVIDIA H100 80GB HBM3", "fp16")
    assert fp16 is not None and fp16.tflops_of == "loop + branches" and fp16.tflops == 4.8
    assert fp16.peak == gr.Peak("FP16 dense", 989.4)
    assert gc._tflops(Stage(), False, 8, 50, 10.0, 600.0, "Some Other GPU", "fp16") == gr.Achieved(
        tflops=4.0, tflops_of="loop", peak=None, of_peak=None)


# ------------------------------------------------------------------------------------------------------ report


def _check(tmp_path: Path, budget_s: float = 60.0, phases: str = "environment") -> gc.GpuCheck:
    args = gc.parse_args(["--out", str(tmp_path), "--dry-run", "--budget-s", str(budget_s), "--phases", phases])
    budget = gc.Budget(budget_s)
    return gc.GpuCheck(args, gc.Report(tmp_path, "test", budget, True), budget, set())


def test_the_report_is_on_disk_after_every_phase(tmp_path: Path) -> None:
    check = _check(tmp_path)
    seen: list[gr.GpuCheckReport] = []

    def first(entry: gr.PhaseEntry) -> bool:
        check.report.data.environment.cpu_count = 99
        return True

    def second(entry: gr.DevicesPhase) -> bool:
        entry.layers = {"a layer": gr.LayerResult(ok=True, checks={"a check": True})}
        seen.append(_report(tmp_path))  # what a kill at this moment would leave
        raise ValueError("the GPU fell over")

    check.phase("environment", first)
    check.phase("devices", second)
    check.phase("setup", lambda entry: True)
    assert seen[0].phases["environment"].status == "ok" and seen[0].environment.cpu_count == 99
    assert seen[0].phases["devices"].status == "running" and seen[0].in_phase == "devices"
    report = _report(tmp_path)
    devices = report.phases["devices"]
    assert isinstance(devices, gr.DevicesPhase) and devices.status == "error"
    assert devices.error is not None and "ValueError: the GPU fell over" in devices.error
    assert devices.layers == {"a layer": gr.LayerResult(ok=True, checks={"a check": True})}  # kept with the error
    assert isinstance(report.phases["setup"], gr.SetupPhase) and report.phases["setup"].status == "ok"
    assert "| devices | error |" in (tmp_path / "gpu_check.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # no temp files left
    assert check.report.failures() == ["devices"]


def test_the_budget_stops_work_inside_a_phase(tmp_path: Path, tiny_model: Any) -> None:
    from diffv2iqa_trt.config import ScoringConfig
    from diffv2iqa_trt.runtime.pipeline import PipelineSpec

    spec = PipelineSpec.from_config(tiny_model.config, ScoringConfig(), 5)
    images = [np.zeros((64, 64, 3), np.uint8)]
    budget = gc.Budget(0.5)
    calls: list[float] = []

    def run(units: list[Any]) -> None:
        calls.append(budget.elapsed())
        time.sleep(0.2)

    with pytest.raises(gc.OutOfBudget):
        gc._timed(run, spec, images, 1, 20, budget, lambda: None)  # 20 warm-up batches would take 4 s
    assert len(calls) <= 4 and budget.elapsed() < 1.0
    check = _check(tmp_path, budget_s=0.0)
    check.phase("environment", lambda entry: True)  # no time left: skipped, and said so
    assert _doc(tmp_path)["phases"]["environment"] == {"status": "skipped", "reason": "time budget spent"}


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_injected_setup_failure_lands_in_the_report(tmp_path: Path, how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--out", str(tmp_path), "--dry-run", "--phases", "environment,setup,correctness-demo"]
    if how == "option":
        argv += ["--inject-failure", "setup"]
    else:
        monkeypatch.setenv(gc.INJECT_ENV, "setup")
    assert gc.main(argv) == 1
    doc = _doc(tmp_path)
    assert doc["phases"]["environment"]["status"] == "ok"
    assert doc["phases"]["setup"]["status"] == "error"
    assert "injected failure of phase setup" in doc["phases"]["setup"]["error"]
    assert doc["phases"]["correctness-demo"] == {"status": "skipped",
                                                 "reason": "needs setup, which did not succeed"}
    assert doc["status"] == "failed: setup, correctness-demo" and doc["injected"] == ["setup"]
    assert "injected failure of phase setup" in (tmp_path / "gpu_check.md").read_text()


def test_the_watchdog_writes_the_report_kills_children_and_exits(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    budget = gc.Budget(1.0)
    report = gc.Report(tmp_path, "test", budget, True)
    report.current = "timing"
    report.phase_entry("timing").status = "running"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gc.CHILDREN.append(child)
    exits: list[int] = []
    monkeypatch.setattr(gc.os, "_exit", exits.append)
    gc.Watchdog(report, 2.0)._fire()
    assert exits == [3] and child.wait(timeout=10) != 0
    doc = _doc(tmp_path)
    assert doc["status"] == "stopped by the watchdog" and doc["watchdog"]["phase"] == "timing"
    assert doc["phases"]["timing"] == {"status": "error",
                                       "error": "stopped by the watchdog: overran the budget and its grace"}
    assert _report(tmp_path).watchdog == gr.WatchdogStop(phase="timing", at_s=doc["watchdog"]["at_s"],
                                                         stacks="gpu_check.stacks.txt")
    assert "_fire" in (tmp_path / "gpu_check.stacks.txt").read_text()


def test_unknown_phases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(tmp_path), "--phases", "environment,warp-drive"])


# ------------------------------------------------------------------------------------------------ typed report


@pytest.mark.parametrize("name", ["dry_run", "inject_setup"])
def test_reports_the_untyped_harness_wrote_read_back_byte_for_byte(name: str) -> None:
    """gpu_check.json and .md of the harness before its records were typed: read into the records and written
    again, the same bytes (every key, its order, every value)."""
    text = (BEFORE / f"{name}.json").read_text()
    report = gr.GpuCheckReport.from_json(text)
    assert report.to_json() == text
    assert gr.markdown(report) == (BEFORE / f"{name}.md").read_text()


def test_the_old_dry_run_reads_as_typed_records() -> None:
    report = gr.GpuCheckReport.from_json((BEFORE / "dry_run.json").read_text())
    assert report.status == "passed" and report.failures() == [] and list(report.phases) == list(gc.PHASES)
    demo = report.phases["correctness-demo"]
    assert isinstance(demo, gr.CorrectnessPhase) and demo.rows is not None and len(demo.rows) == 7
    assert all(r.passed for r in demo.rows if r.precision == "fp32")
    assert [r.within_tolerance is not None for r in demo.rows] == [False] * 5 + [True] * 2  # tf32, fp16 reported
    timing = report.phases["timing"]
    assert isinstance(timing, gr.TimingPhase) and timing.rows is not None
    graph_row = timing.rows[1]
    assert graph_row.stages_ms is not None and graph_row.stages_ms.graph and graph_row.achieved is not None
    assert graph_row.achieved.tflops_of == "loop + branches" and graph_row.achieved.peak is None  # no GPU
    assert [r.vs_naive for r in timing.rows if r.config.startswith("naive")] == [1.0, 1.0]
    bundle = report.phases["bundle"]
    assert isinstance(bundle, gr.BundlePhase) and bundle.passed and bundle.steps is not None
    assert [s.step for s in bundle.steps] == ["build", "score --backend torch", "score --backend onnxruntime"]
    assert report.environment.torch is not None and report.environment.cuda is None


def _full_report() -> gr.GpuCheckReport:
    """A report with every record and every variant of a row: skipped, measured, failed, a GPU's environment."""
    report = gr.GpuCheckReport(command="gpu_check --out x", dry_run=False, budget_s=320.0, status="failed: timing",
                               seconds=301.5, skipped=["timing row"], injected=[], in_phase="timing",
                               watchdog=gr.WatchdogStop(phase="timing", at_s=350.1, stacks="gpu_check.stacks.txt"))
    report.environment = gr.Environment(
        python="3.11.7", platform="Linux", dry_run=False, cpu_count=16, cpu_threads_used=16,
        packages={"torch": "2.5.0", "onnx": "missing"}, torch="2.5.0", cuda="12.4",
        tf32_found={"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": False}, gpu="NVIDIA H100 80GB HBM3",
        sm="9.0", gpu_memory_gib=79.1, peaks_tflops={"fp32": ("FP32 (CUDA cores)", 67.0), "tf32": None})
    report.phases["environment"] = gr.PhaseEntry(status="ok", started_s=0.0, seconds=1.2)
    report.phases["devices"] = gr.DevicesPhase(status="failed", started_s=1.2, seconds=0.5, layers={
        "torch-cuda (TorchCudaDevice)": gr.LayerResult(ok=True, checks={"eager: window copy": True}),
        "cuda-python (CudaDevice)": gr.LayerResult(ok=False, error="E", traceback="T", expected="no GPU")})
    report.phases["setup"] = gr.SetupPhase(status="ok", started_s=1.7, seconds=3.0, models={"demo": "d"},
                                           images={"demo": 16})
    report.phases["correctness-demo"] = gr.CorrectnessPhase(
        status="ok", started_s=4.7, seconds=20.0, images=16, steps=50, crop=224, batch=2, cpu_reference_s=9.5,
        rows=[gr.CorrectnessRow("fp32", True, True, "torch-cuda", images=16, max_abs_delta=1e-6, srcc=None,
                                replays=None, passed=True, seconds=1.0),
              gr.CorrectnessRow("fp16", True, True, "torch-cuda", images=16, max_abs_delta=0.01, srcc=0.99,
                                replays=3, within_tolerance=False, seconds=1.0),
              gr.CorrectnessRow("fp32", True, False, "cuda-python", passed=False, error="E", traceback="T",
                                seconds=0.1),
              gr.CorrectnessRow("tf32", True, True, "torch-cuda", skipped="time budget")])
    report.phases["correctness-paper"] = gr.CorrectnessPhase(status="skipped", reason="needs setup, which did not")
    report.phases["bundle"] = gr.BundlePhase(
        status="ok", started_s=30.0, seconds=40.0, work="/tmp/w", gpu_backend="torch-cuda",
        steps=[gr.BundleStep("build", command="diffv2iqa-trt build", exit=0, seconds=30.0, stderr_tail=""),
               gr.BundleStep("score", error="stopped: time budget spent", seconds=9.0)],
        scores={"image0.png": {"torch-cuda": 0.5, "onnxruntime": 0.5000001}}, max_abs_delta=1e-7, passed=True)
    report.phases["overlap"] = gr.OverlapPhase(
        status="ok", started_s=70.0, seconds=2.0, copy_alone_ms=3.0, compute_alone_ms=6.0, together_ms=6.5,
        overlap_ms=2.5, overlap_of_shorter=0.833, upload_gib_per_s=20.8,
        timeline=[gr.TimelineEvent("copy", "upload", 0.0, 3.0), gr.TimelineEvent("compute", "steps", 0.01, 6.5)],
        pipeline_stages_ms=[gr.StageTimes(0.1, 5.0, 1.0, 0.05)], pipeline_note="note")
    report.phases["timing"] = gr.TimingPhase(
        status="error", started_s=72.0, stopped="time budget spent before: timed batches", steps=50, crop=224,
        restore_step_gflop=1.5, gflop_per_crop=80.0, not_timed_on_a_dry_run=["x"],
        rows=[gr.TimingRow("naive", 8, precision="fp32", crops_per_s=100.0, vs_naive=1.0),
              gr.TimingRow("stream fp16", 8, precision="fp16", crops_per_s=900.0, vs_naive=9.0,
                           stages_ms=gr.StageTimes(0.1, 5.0, 0.0, 0.05, graph=True),
                           achieved=gr.Achieved(300.0, "loop + branches", gr.Peak("FP16 dense", 989.4), 0.3032)),
              gr.TimingRow("stream tf32", 8, precision="tf32", crops_per_s=None),
              gr.TimingRow("stream fp32", 8, precision="fp32", error="E", traceback="T"),
              gr.TimingRow("stream fp32", 32, skipped="time budget (warm-up batches)")])
    return report


def test_a_report_with_every_record_round_trips_through_json() -> None:
    report = _full_report()
    text = report.to_json()
    assert gr.GpuCheckReport.from_json(text) == report
    assert gr.GpuCheckReport.from_json(text).to_json() == text
    doc = json.loads(text)
    rows = doc["phases"]["timing"]["rows"]  # the layout: a field never filled is left out, null where measured
    assert list(rows[2]) == ["config", "batch", "precision", "crops_per_s", "vs_naive"]
    assert rows[2]["crops_per_s"] is None
    assert list(rows[4]) == ["config", "batch", "skipped", "vs_naive"]
    assert rows[1]["stages_ms"] == {"upload": 0.1, "restore + branches (graph)": 5.0, "branches": 0.0,
                                    "download": 0.05}
    assert rows[1]["peak"] == {"kind": "FP16 dense", "tflops": 989.4} and rows[1]["of_peak"] == 0.3032
    demo = doc["phases"]["correctness-demo"]["rows"]
    assert demo[0]["srcc"] is None and demo[0]["replays"] is None and demo[0]["pass"] is True
    assert demo[1]["within_1e-3"] is False and "pass" not in demo[1]
    assert list(demo[3]) == ["precision", "streams", "cuda_graph", "layer", "skipped"]
    assert doc["phases"]["correctness-paper"] == {"status": "skipped", "reason": "needs setup, which did not"}
    assert doc["environment"]["peaks_tflops"] == {"fp32": ["FP32 (CUDA cores)", 67.0], "tf32": None}
    assert report.failures() == ["devices", "correctness-paper", "timing"]
    md = gr.markdown(report)
    assert "| stream fp16 | 8 | 900 | 9 | 300 (loop + branches) | FP16 dense 989.4 | 0.303 |" in md
    assert "| cuda-python (CudaDevice) | False (expected) | E |" in md and "| score | stopped: time budget" in md


def test_nan_and_inf_are_written_as_strings_and_read_back_as_floats() -> None:
    report = _full_report()
    demo = report.phases["correctness-demo"]
    assert isinstance(demo, gr.CorrectnessPhase) and demo.rows is not None
    demo.rows[0].max_abs_delta, demo.rows[1].srcc = float("nan"), float("inf")
    text = report.to_json()
    assert '"max_abs_delta": "nan"' in text and '"srcc": "inf"' in text
    back = gr.GpuCheckReport.from_json(text)
    back_demo = back.phases["correctness-demo"]
    assert isinstance(back_demo, gr.CorrectnessPhase) and back_demo.rows is not None
    assert np.isnan(back_demo.rows[0].max_abs_delta or 0.0) and back_demo.rows[1].srcc == float("inf")
    assert back.to_json() == text


@pytest.mark.parametrize("text", ["", "[]", '{"command": "x"}', '{"command": "x", "dry_run": true, "budget_s": 1, '
                                  '"status": "s", "seconds": 0, "skipped": [], "environment": {}, '
                                  '"phases": {"timing": {"rows": [{"batch": 1}]}}}'])
def test_what_is_not_a_gpu_check_report_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not a GPU-check report"):
        gr.GpuCheckReport.from_json(text)


def test_an_injected_failure_writes_the_layout_the_untyped_harness_wrote(tmp_path: Path) -> None:
    """The same run as tests/data/gpu_check/inject_setup.json (--inject-failure setup), fewer phases: each phase's
    record has the keys, in the order, the untyped harness wrote."""
    argv = ["--out", str(tmp_path), "--dry-run", "--phases", "environment,setup,correctness-demo,timing",
            "--inject-failure", "setup"]
    assert gc.main(argv) == 1
    before, now = json.loads((BEFORE / "inject_setup.json").read_text()), _doc(tmp_path)
    assert [k for k in now] == [k for k in before]
    assert _layout(now["environment"]) == _layout(before["environment"])
    for name in ("environment", "setup", "correctness-demo", "timing"):
        assert _layout(now["phases"][name]) == _layout(before["phases"][name]), name


# ---------------------------------------------------------------------------------------------- whole dry run


@pytest.mark.slow
def test_the_whole_dry_run_fits_its_budget(tmp_path: Path) -> None:
    """scripts/gpu_check.sh --dry-run: every phase on the CPU, the report written phase by phase, within 150 s."""
    env = {**os.environ, "PYTHON": sys.executable}
    t0 = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "--dry-run",
                           "--budget-s", "150"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    wall = time.perf_counter() - t0
    doc = _doc(tmp_path)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert wall < 150 + 30 and doc["seconds"] <= 150 + 5
    assert [doc["phases"][p]["status"] for p in gc.PHASES] == ["ok"] * len(gc.PHASES), doc["phases"]
    for which in ("correctness-demo", "correctness-paper"):
        rows = doc["phases"][which]["rows"]
        assert all(r["pass"] for r in rows if r["precision"] == "fp32")
        assert any(r["cuda_graph"] and (r["replays"] or 0) > 0 for r in rows)  # a captured graph replayed
        assert any(r["layer"] == "cuda-python" for r in rows)
    assert doc["phases"]["bundle"]["pass"] and doc["phases"]["overlap"]["timeline"]
    assert doc["phases"]["timing"]["rows"]
    # the layout the untyped harness wrote on its dry run (values aside: keys, their order, the types of values)
    before = json.loads((BEFORE / "dry_run.json").read_text())
    assert _layout({k: v for k, v in doc.items() if k != "command"}) == _layout(
        {k: v for k, v in before.items() if k != "command"})
    assert gr.GpuCheckReport.from_json(json.dumps(doc)).to_dict() == doc

"""The GPU check's harness (benchmarks/gpu_check.py), checked on the CPU: the device exercise can fail, the peaks
match each row's precision, the report is on disk after every phase (also when a phase fails, hangs or the budget
runs out), and an injected setup failure lands in it. The whole dry run is the `slow` test at the end."""

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
from diffv2iqa_trt.runtime.device import HostDevice, HostGraph

ROOT = Path(__file__).resolve().parents[1]


def _doc(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "gpu_check.json").read_text())
    return doc


# ----------------------------------------------------------------------------------------------- device exercise


class RunsCopiesWhileCapturing(HostDevice):
    """A broken device: a 'capture' runs the copies at once and records nothing (so a replay does nothing)."""

    def begin_capture(self, stream: Any) -> None:
        pass

    def end_capture(self, stream: Any) -> HostGraph:
        return HostGraph()


def test_the_device_exercise_passes_on_a_correct_device() -> None:
    result = gc.exercise_device(HostDevice())
    assert result["ok"] and set(result["checks"]) == {
        "eager: copy across streams", "eager: window copy", "capture did not run the copies",
        "replay: copy across streams", "replay: window copy"}


def test_the_capture_check_fails_when_a_device_runs_copies_during_capture() -> None:
    result = gc.exercise_device(RunsCopiesWhileCapturing())
    assert result["ok"] is False
    assert result["checks"]["capture did not run the copies"] is False
    assert result["checks"]["eager: copy across streams"] and result["checks"]["replay: copy across streams"]


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
    assert fp32["tflops"] == 4.0 and fp32["peak"] == {"kind": "FP32 (CUDA cores)", "tflops": 67.0}
    assert fp32["of_peak"] == round(4.0 / 67.0, 4)
    fp16 = gc._tflops(Stage(), True, 8, 50, 10.0, 600.0, "NVIDIA H100 80GB HBM3", "fp16")
    assert fp16["tflops_of"] == "loop + branches" and fp16["peak"]["tflops"] == 989.4


# ------------------------------------------------------------------------------------------------------ report


def _check(tmp_path: Path, budget_s: float = 60.0, phases: str = "environment") -> gc.GpuCheck:
    args = gc.parse_args(["--out", str(tmp_path), "--dry-run", "--budget-s", str(budget_s), "--phases", phases])
    budget = gc.Budget(budget_s)
    return gc.GpuCheck(args, gc.Report(tmp_path, "test", budget, True), budget, set())


def test_the_report_is_on_disk_after_every_phase(tmp_path: Path) -> None:
    check = _check(tmp_path)
    seen: dict[str, Any] = {}

    def first(entry: dict[str, Any]) -> bool:
        entry["rows"] = [1]
        return True

    def second(entry: dict[str, Any]) -> bool:
        seen.update(_doc(tmp_path))  # what a kill at this moment would leave
        raise ValueError("the GPU fell over")

    check.phase("environment", first)
    check.phase("devices", second)
    check.phase("setup", lambda entry: True)
    assert seen["phases"]["environment"]["status"] == "ok" and seen["phases"]["environment"]["rows"] == [1]
    assert seen["phases"]["devices"]["status"] == "running" and seen["in_phase"] == "devices"
    doc = _doc(tmp_path)
    assert doc["phases"]["devices"]["status"] == "error"
    assert "ValueError: the GPU fell over" in doc["phases"]["devices"]["error"]
    assert doc["phases"]["setup"]["status"] == "ok"  # the next phase still ran
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
    report.phase_entry("timing")["status"] = "running"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gc.CHILDREN.append(child)
    exits: list[int] = []
    monkeypatch.setattr(gc.os, "_exit", exits.append)
    gc.Watchdog(report, 2.0)._fire()
    assert exits == [3] and child.wait(timeout=10) != 0
    doc = _doc(tmp_path)
    assert doc["status"] == "stopped by the watchdog" and doc["watchdog"]["phase"] == "timing"
    assert doc["phases"]["timing"]["status"] == "error"
    assert "_fire" in (tmp_path / "gpu_check.stacks.txt").read_text()


def test_unknown_phases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(tmp_path), "--phases", "environment,warp-drive"])


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

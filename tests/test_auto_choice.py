"""`auto` (auto_choice.py): which candidates a bundle offers, the fastest inside the budget, the cache, the line.

The choice logic runs with an injected timer (seconds per crop by option key: deterministic); one end-to-end run
times the real executors on the tiny `auto_built` bundle. The bf16 record of these tests is written by hand into a
copy of the bundle (precision/bf16.with_record); tests/test_bf16_record.py measures a real one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffv2iqa_trt import auto_choice
from diffv2iqa_trt.auto_choice import Option, bench_batch, candidates, choose, thread_options
from diffv2iqa_trt.bundle import load_bundle, write_bundle
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.precision.bf16 import bf16_note, with_record
from diffv2iqa_trt.precision_plan import parse_plan
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
from diffv2iqa_trt.scorers import ScoreOptions, open_scorer

CPU = {"model": "Test CPU 9000", "isa_flags": ["avx2", "avx512_bf16"], "logical_cpus": 2}
WITHIN = {"images": 16, "srcc": 0.9999, "max_abs": 0.002, "max_abs_fraction": 0.005, "mean_abs": 0.001}
OVER = {"images": 16, "srcc": 0.97, "max_abs": 0.05, "max_abs_fraction": 0.1, "mean_abs": 0.02}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.getbasetemp() / "auto-cache"
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(root))
    return root


def _with_bf16(auto_built: tuple[Any, str], tmp_path: Path, scores: Mapping[str, Any], name: str) -> Any:
    bundle = auto_built[0]
    record = {"plan": {"restore_step": "bf16", "vcg": "bf16", "vda": "bf16"}, "plan_scores": dict(scores),
              "over_budget": [] if scores is WITHIN else ["SRCC 0.97000 < 0.995"], "budget": {
                  "min_srcc": 0.995, "max_abs_fraction": 0.02}, "measured": "2026-12-06T00:00:00+00:00",
              "cpu": CPU, "graphs": {}}
    files = {n: bundle.file_path(n) for n in bundle.manifest.files}
    return load_bundle(write_bundle(tmp_path / name, with_record(bundle, record), files))


def _timer(table: Mapping[str, float], calls: list[tuple[str, float | None]]) -> auto_choice.Timer:
    def timer(option: Option, limit: float | None) -> float:
        calls.append((option.key, limit))
        return table[option.key]
    return timer


TIMES = {"onnxruntime fp32 t2": 0.40, "onnxruntime fp32 t1": 0.20, "openvino fp32 t2": 0.28,
         "openvino fp32 t1": 0.22, "openvino bf16 t2": 0.16, "openvino bf16 t1": 0.12}


def _choose(bundle: Any, tmp_path: Path, table: Mapping[str, float] = TIMES, **kw: Any
            ) -> tuple[auto_choice.Choice, list[tuple[str, float | None]]]:
    calls: list[tuple[str, float | None]] = []
    kw = {"cpus": 2, "bf16_problem": None, "openvino": True, "cpu": CPU, "batch": 1, "confirm": 0, **kw}
    choice = choose(bundle, timer=_timer(table, calls), cache_dir=tmp_path / "cache",
                    now=lambda: datetime(2026, 12, 6, tzinfo=timezone.utc), **kw)
    return choice, calls


def test_thread_options_and_bench_batch() -> None:
    assert thread_options(None, 2) == (2, 1) and thread_options(None, 16) == (16, 8, 1)
    assert thread_options(3, 16) == (3,)
    assert bench_batch(64) == 8 and bench_batch(64, 2) == 2 and bench_batch(224) == 1


def test_fastest_inside_the_budget_wins_and_says_why(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    bundle = _with_bf16(auto_built, tmp_path, WITHIN, "bf16")
    choice, calls = _choose(bundle, tmp_path)
    assert choice.option.key == "openvino bf16 t1" and not choice.cached
    assert choice.speedup == pytest.approx(0.20 / 0.12)
    assert choice.line() == ("auto: openvino bf16, 1 thread: 1.67x onnxruntime fp32, 1 thread (measured "
                             "2026-12-06), SRCC 0.9999 and max |Δ| 0.50 % of the score range vs fp32 (16 "
                             "evaluation images)")
    # The reference is timed first and never cut short; the others stop once 2x slower than the best so far.
    assert calls[0] == ("onnxruntime fp32 t2", None) and calls[1] == ("onnxruntime fp32 t1", None)
    assert dict(calls)["openvino bf16 t1"] == pytest.approx(2 * 0.16)


def test_bf16_over_budget_unmeasured_or_unsupported_is_left_out(auto_built: tuple[Any, str],
                                                                 tmp_path: Path) -> None:
    over = _with_bf16(auto_built, tmp_path, OVER, "over")
    options, skipped = candidates(over, cpus=2, bf16_problem=None, openvino=True)
    assert {o.precision for o in options} == {"fp32"} and "over the budget: SRCC" in skipped["openvino bf16"]
    options, skipped = candidates(auto_built[0], cpus=2, bf16_problem=None, openvino=True)
    assert "not measured on this bundle" in skipped["openvino bf16"]
    within = _with_bf16(auto_built, tmp_path, WITHIN, "within")
    options, skipped = candidates(within, cpus=1, bf16_problem="no BF16 here", openvino=True)
    assert [o.key for o in options] == ["onnxruntime fp32 t1", "openvino fp32 t1"]
    assert skipped["openvino bf16"] == "no BF16 here"
    options, skipped = candidates(within, cpus=1, bf16_problem=None, openvino=False)
    assert [o.key for o in options] == ["onnxruntime fp32 t1"] and "not installed" in skipped["openvino"]


def test_reproducible_reference_kept_unless_another_is_clearly_faster(auto_built: tuple[Any, str],
                                                                       tmp_path: Path) -> None:
    table = {**TIMES, "openvino fp32 t1": 0.195}  # 2.5 % faster than onnxruntime fp32 t1: inside MARGIN
    choice, _ = _choose(auto_built[0], tmp_path, table)
    assert choice.option.key == "onnxruntime fp32 t1" and "bit-identical to --precision fp32" in choice.line()
    choice, _ = _choose(auto_built[0], tmp_path / "b", {**table, "openvino fp32 t1": 0.15})
    assert choice.option.key == "openvino fp32 t1" and "not bit-identical" in choice.line()


def test_narrowed_requests(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    bundle = _with_bf16(auto_built, tmp_path, WITHIN, "bf16")
    choice, _ = _choose(bundle, tmp_path, precision="fp32")
    assert choice.option.key == "onnxruntime fp32 t1"  # fp32 asked for: bf16 is no candidate
    choice, calls = _choose(bundle, tmp_path / "b", backend="openvino")
    assert choice.option.key == "openvino bf16 t1"
    # The reference is still timed, only as the baseline of the line.
    assert {k for k, _ in calls} >= {"onnxruntime fp32 t1"} and "x onnxruntime fp32, 1 thread" in choice.line()
    choice, _ = _choose(bundle, tmp_path / "c", threads=2)
    assert choice.option.key == "openvino bf16 t2"
    with pytest.raises(ConfigError, match="auto: no choice runs --backend torch"):
        candidates(bundle, backend="torch", cpus=1, bf16_problem=None, openvino=True)


def test_cache_hit_and_misses(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    bundle = auto_built[0]
    first, calls = _choose(bundle, tmp_path)
    assert calls and not first.cached
    again, calls = _choose(bundle, tmp_path, table={})  # any timing would raise KeyError
    assert calls == [] and again.cached and again.option == first.option and "cached" in again.line()
    _, calls = _choose(bundle, tmp_path, cpu={**CPU, "model": "Other CPU"})
    assert len(calls) == 4  # another CPU: measured again
    _, calls = _choose(bundle, tmp_path, cpu={**CPU, "isa_flags": ["avx2"]})
    assert len(calls) == 4  # other ISA flags: measured again
    other = _with_bf16(auto_built, tmp_path, WITHIN, "other")  # another manifest, the same graph files
    _, calls = _choose(other, tmp_path)
    assert {k for k, _ in calls} == {"openvino bf16 t2", "openvino bf16 t1"}  # only its new candidates are timed
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    # Other graph files (another sha256 in the manifest): another key, measured again.
    name = next(n for n in bundle.manifest.files if n.endswith(".onnx"))
    files = {**bundle.manifest.files, name: dataclasses.replace(bundle.manifest.files[name], sha256="0" * 64)}
    changed = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, files=files))
    assert auto_choice.graphs_key(changed) != auto_choice.graphs_key(bundle)
    assert auto_choice.graphs_key(other) == auto_choice.graphs_key(bundle)
    _, calls = _choose(changed, tmp_path)
    assert len(calls) == 4


def test_default_path_chooses_threads_only(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    choice, calls = _choose(auto_built[0], tmp_path, backend="onnxruntime", threads_only=True)
    assert [k for k, _ in calls] == ["onnxruntime fp32 t2", "onnxruntime fp32 t1"]
    assert choice.option.threads == 1 and choice.line().startswith("default: onnxruntime fp32, 1 thread: 2.00x its "
                                                                   "speed at 2 threads")


def test_onnxruntime_fp32_scores_do_not_depend_on_threads(auto_built: tuple[Any, str],
                                                          photos: list[np.ndarray]) -> None:
    """Why the default path may pick its thread count by speed: the scores stay bit-identical."""
    bundle = auto_built[0]
    scores = [[r.score for r in bundle_pipeline(bundle, "onnxruntime", threads=t).score(photos)] for t in (1, 2)]
    assert scores[0] == scores[1]


def test_bf16_note_for_unmeasured_and_over_budget(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    assert bf16_note(auto_built[0], parse_plan("fp32")) is None
    note = bf16_note(auto_built[0], parse_plan("vcg=bf16"))
    assert note is not None and note.startswith("bf16 is not measured on this bundle") and "--eval-images" in note
    assert bf16_note(_with_bf16(auto_built, tmp_path, WITHIN, "w"), parse_plan("bf16")) is None
    note = bf16_note(_with_bf16(auto_built, tmp_path, OVER, "o"), parse_plan("bf16"))
    assert note is not None and "over its accuracy budget (SRCC 0.97000 < 0.995)" in note


def test_score_with_backend_auto_end_to_end(auto_built: tuple[Any, str], photos: list[np.ndarray],
                                            private_cache: Path) -> None:
    """A real self-benchmark on the tiny bundle: the choice is timed, cached, said in one line, and scores."""
    root = auto_built[0].root
    scorer = open_scorer(ScoreOptions(bundle=root, backend="auto", batch_size=1, threads=1))
    assert len(scorer.notes) == 1 and scorer.notes[0].startswith("auto: ") and "\n" not in scorer.notes[0]
    assert scorer.choice is not None and not scorer.choice.cached
    assert "onnxruntime fp32 t1" in scorer.choice.seconds
    assert scorer.backend in ("onnxruntime-cpu", "openvino-cpu") and scorer.precision == "fp32"
    assert all(np.isfinite(r.score) for r in scorer.pipeline.score(photos[:1]))
    assert len(list((private_cache / "auto").glob("*.json"))) == 1
    again = open_scorer(ScoreOptions(bundle=root, backend="auto", batch_size=1, threads=1))
    assert again.choice is not None and again.choice.cached and again.choice.option == scorer.choice.option


def test_contenders_are_timed_again_back_to_back(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    """What happened on the paper bundle: the first timings (taken while the machine's load changed) put OpenVINO f32
    ahead; timed again back to back with the reference, bf16 wins. Without the confirmation, f32 would be picked."""
    bundle = _with_bf16(auto_built, tmp_path, WITHIN, "bf16")
    first = {"onnxruntime fp32 t2": 0.40, "onnxruntime fp32 t1": 0.241, "openvino fp32 t2": 0.30,
             "openvino fp32 t1": 0.170, "openvino bf16 t2": 0.25, "openvino bf16 t1": 0.183}
    later = {**first, "onnxruntime fp32 t1": 0.359, "openvino fp32 t1": 0.337, "openvino bf16 t1": 0.182}

    def run(confirm: int, folder: str) -> tuple[auto_choice.Choice, list[str]]:
        calls: list[str] = []

        def timer(option: Option, limit: float | None) -> float:
            calls.append(option.key)
            return (later if calls.count(option.key) > 1 else first)[option.key]

        choice = choose(bundle, timer=timer, cache_dir=tmp_path / folder, cpus=2, bf16_problem=None, openvino=True,
                        cpu=CPU, batch=1, confirm=confirm, now=lambda: datetime(2026, 12, 6, tzinfo=timezone.utc))
        return choice, calls

    unconfirmed, _ = run(0, "a")
    assert unconfirmed.option.key == "openvino fp32 t1"
    confirmed, calls = run(1, "b")
    # Contenders: within 1.25x of the fastest (f32 t1 0.170, bf16 t1 0.183), after the best reference.
    assert calls[len(first):] == ["onnxruntime fp32 t1", "openvino fp32 t1", "openvino bf16 t1"]
    assert confirmed.option.key == "openvino bf16 t1" and confirmed.seconds["openvino fp32 t1"] == 0.337
    assert "1.97x onnxruntime fp32, 1 thread" in confirmed.line()  # 0.359 / 0.182, the back-to-back figures
    # The cache keeps the confirmed figures (and the first ones): a second run decides the same without timing.
    again, calls = run(1, "b")
    assert calls == [] and again.option == confirmed.option and again.cached


def test_default_path_times_nothing_on_one_cpu(auto_built: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One CPU leaves one thread count: the default path opens ONNX Runtime without a self-benchmark."""
    from diffv2iqa_trt import cpu_info

    def never(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("the default path timed a candidate on a one-CPU machine")

    monkeypatch.setattr(cpu_info, "logical_cpus", lambda: 1)
    monkeypatch.setattr(auto_choice, "time_option", never)
    scorer = open_scorer(ScoreOptions(bundle=Path(auto_built[0].root)))
    assert scorer.choice is None and scorer.backend == "onnxruntime-cpu" and scorer.notes == ()

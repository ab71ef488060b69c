"""The bench report is a typed object (issue 23 item 2): run_bench returns a BenchReport that scores through the
public API, bench_<model>.json is its JSON (the committed results keep loading), and from_json reads it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffv2iqa_trt.benchmarks import bench
from diffv2iqa_trt.benchmarks.bench import BenchReport, BenchSettings, markdown, run_bench, write_report
from diffv2iqa_trt.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
HEADER = ("command", "date", "machine")  # what report.write adds around the report


def test_a_real_bench_report_round_trips_and_scores_through_the_api(auto_built: tuple[Any, str],
                                                                    photos: list[np.ndarray], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, _ = auto_built
    path = tmp_path / "a.png"
    Image.fromarray(photos[1][:96, :96]).save(path)
    opened: list[str] = []
    real = bench.Scorer.from_options

    def spy(options: Any, **kw: Any) -> Any:
        opened.append(options.backend)
        return real(options, **kw)

    monkeypatch.setattr(bench.Scorer, "from_options", spy)
    monkeypatch.setattr(bench.roofline, "gemm_peak_macs_per_s", lambda b, threads=None: 1e10)  # seconds saved
    settings = BenchSettings(backends=("onnxruntime",), batch_sizes=(1, 2), warmup=0, min_iters=2, min_seconds=0.0,
                             offline_images=2)
    report = run_bench(bundle, [path], settings)
    assert opened == ["onnxruntime"]  # the public API opened the model
    v = report.backends["onnxruntime"]
    assert isinstance(report, BenchReport) and report.baseline == "onnxruntime" and v.speedup == 1.0
    assert v.executor == "onnxruntime-cpu" and report.images == ("a.png",) and report.crops_per_image == 1
    assert v.single_stream.no_decode.iterations == len(v.single_stream.latencies_no_decode) >= 2
    assert v.single_stream.stage_mean_s["restoration steps"] > 0 and [o.batch for o in v.offline] == [1, 2]
    assert v.best_images_per_s == max(o.images_per_s for o in v.offline) > 0
    assert report.roofline.backends["onnxruntime"].gemm_peak_gmacs == 10.0

    assert BenchReport.from_json(report.to_json()) == report
    written = write_report(report, tmp_path / "out", "bench_x")
    doc = json.loads(written[0].read_text())
    assert BenchReport.from_json(written[0].read_text()) == report  # the file, with report.write's header
    assert doc["backends"]["onnxruntime"]["speedup_vs_onnxruntime"] == 1.0  # the layout of the committed files
    assert f"| onnxruntime-cpu | no | {v.single_stream.no_decode.min:.4f} |" in markdown(report)
    with pytest.raises(ConfigError, match="not a bench report"):
        BenchReport.from_json('{"bundle": "b"}')


@pytest.mark.parametrize("path", sorted(RESULTS.rglob("bench_*.json")), ids=lambda p: p.parent.name + "/" + p.name)
def test_committed_bench_results_load_and_keep_their_layout(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = BenchReport.from_json(path.read_text())
    assert report.to_dict() == {k: v for k, v in doc.items() if k not in HEADER}  # every key, in its place
    assert list(report.to_dict()) == [k for k in doc if k not in HEADER]
    # the Markdown beside it was made from the same numbers
    md = path.with_suffix(".md").read_text()
    for v in report.backends.values():
        assert f"| {v.executor} | no | {v.single_stream.no_decode.min:.4f} |" in md

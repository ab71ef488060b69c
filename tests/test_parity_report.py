"""The parity report is a typed object (issue 23, item 2): run_parity returns a ParityReport, parity.json is its
JSON, and from_json reads that file back to an equal report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffv2iqa_trt.benchmarks.parity import ParityReport, markdown, run_parity, write_report
from diffv2iqa_trt.errors import ConfigError


def test_a_real_parity_report_round_trips_through_parity_json(auto_built: tuple[Any, str], photos: list[np.ndarray],
                                                              tmp_path: Path) -> None:
    bundle, _ = auto_built
    paths = []
    for i, rgb in enumerate(photos[:3]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rgb[:96, :96]).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    labels = {"0.png": 0.1, "1.png": 0.5, "2.png": 0.3}
    report = run_parity(bundle, [*paths, tmp_path / "broken.png"], labels, batch_size=2)
    assert isinstance(report, ParityReport) and report.images == 3 and list(report.unreadable) == [
        str(tmp_path / "broken.png")]
    v = report.variants["onnxruntime-fp32"]
    assert v.passed and report.passed and v.metrics.abs_error.max <= 1e-4 and v.metrics.rank_flips == 0
    assert set(v.tensor_errors) == {"restore_step", "vcg", "vda"} and max(v.tensor_errors.values()) < 1e-4
    assert report.labels is not None and report.labels.images == 3
    assert report.labels.variants["onnxruntime-fp32"].srcc == pytest.approx(report.labels.reference.srcc)
    assert [row["image"] for row in report.per_image] == ["0.png", "1.png", "2.png"]
    assert report.score_range == (min(r["reference"] for r in report.per_image),
                                  max(r["reference"] for r in report.per_image))

    assert ParityReport.from_json(report.to_json()) == report
    written = write_report(report, tmp_path / "out")
    assert ParityReport.from_json(written[0].read_text()) == report  # the file, with report.write's header
    assert f"| onnxruntime-fp32 | {v.metrics.abs_error.max:.3g} |" in markdown(report)
    with pytest.raises(ConfigError, match="not a parity report"):
        ParityReport.from_json('{"bundle": "b"}')

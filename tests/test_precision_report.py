"""The precision report is a typed object (issue 23 item 2): PrecisionReport reads the build's precision report, the
committed precision_*.json files load, give back their JSON, and lay out the same Markdown as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffv2iqa_trt.benchmarks.precision_report import PrecisionReport, ScoreDeltas, markdown
from diffv2iqa_trt.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "precision"
HEADER = ("command", "date", "machine")
COMMITTED = sorted(p for p in RESULTS.glob("*.json") if not p.name.startswith("precision_cpu"))


def _header(doc: dict) -> str:  # what report.write puts in place of <!--header-->
    m = doc["machine"]
    return (f"Command: `{doc['command']}`  \nDate: {doc['date']}  \nMachine: {m['cpu']}, {m['logical_cpus']} "
            "logical CPUs\n\n")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_precision_reports_load_round_trip_and_keep_their_markdown(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = PrecisionReport.from_json(path.read_text())
    assert report.to_dict() == {k: v for k, v in doc.items() if k not in HEADER}
    assert PrecisionReport.from_json(report.to_json()) == report
    md = path.with_suffix(".md").read_text()
    label = md.splitlines()[0].removeprefix("# Precision variants of ")
    assert markdown(report, label).replace("<!--header-->", _header(doc)) == md  # the layout did not change


def test_typed_fields_carry_the_numbers() -> None:
    best = PrecisionReport.from_json((RESULTS / "demo_best.json").read_text())
    doc = json.loads((RESULTS / "demo_best.json").read_text())["precision"]["report"]
    assert best.requested == "best" and best.plan == {"restore_step": "int8", "vcg": "fp16", "vda": "int8"}
    assert best.report.plan_scores is not None and best.report.plan_scores.srcc == doc["plan_scores"]["srcc"]
    assert best.report.search is not None and len(best.report.search) == len(doc["search"])
    first = best.report.candidates["restore_step"][0]
    assert first.made.qdq_nodes == doc["candidates"]["restore_step"][0]["qdq_nodes"] and first.tensor.per_step
    assert best.variants["vcg"]["fp16"].recipe is not None and best.variants["vcg"]["fp32"].recipe is None
    paper = PrecisionReport.from_json((RESULTS / "paper_variants.json").read_text())
    assert paper.report.plan_scores is None and paper.report.evaluation is None
    # the search's all-FP32 round (no images) reads as not measured
    assert not ScoreDeltas.from_dict({"srcc": 1.0, "max_abs": 0.0, "max_abs_fraction": 0.0, "mean_abs": 0.0,
                                      "reference": True}).measured
    with pytest.raises(ConfigError, match="not a precision report"):
        PrecisionReport.from_json('{"built_with": null}')

"""BF16 as a measured precision (precision/bf16.py): a real measurement on the tiny `auto_built` bundle, recorded
in the manifest and read back; skipped, with the reason, without OpenVINO or BF16 instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import load_bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.contract import GRAPH_NAMES
from diffv2iqa_trt.data.distortions import distort
from diffv2iqa_trt.data.photos import SET_DISTORTIONS
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.precision.bf16 import add_bf16, bf16_note, bf16_record
from diffv2iqa_trt.precision_plan import parse_plan


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.getbasetemp() / "bf16-cache"
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(root))
    return root


def test_bf16_needs_an_evaluation_set(auto_built: tuple[Any, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass --eval-images DIR"):
        add_bf16(auto_built[0], tmp_path / "out", [])


@pytest.mark.parametrize(("args", "message"), [
    ([], "build the bundle first, then pass --from-bundle B --eval-images DIR"),
    (["--from-bundle", "{bundle}"], "pass --eval-images DIR"),
    (["--from-bundle", "{bundle}", "--eval-images", "{bundle}", "--min-srcc", "1.5"],
     "the budget needs 0 < --min-srcc <= 1"),
    (["--from-bundle", "{bundle}", "--eval-images", "{bundle}", "--out", "{bundle}"],
     "pass --overwrite to replace it in place"),
])
def test_build_bf16_refuses_before_any_work(auto_built: tuple[Any, str], tmp_path: Path, args: list[str],
                                            message: str) -> None:
    root = str(auto_built[0].root)
    argv = ["build", "--precision", "bf16", "--out", str(tmp_path / "out"), *(a.format(bundle=root) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bf16_record_is_measured_and_held_to_the_budget(auto_built: tuple[Any, str], photos: list[np.ndarray],
                                                        tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'diffv2iqa-trt[openvino]'")
    from diffv2iqa_trt.runtime.backends.openvino_backend import bf16_problem_here

    problem = bf16_problem_here()
    if problem:
        pytest.skip(problem)
    folder = tmp_path / "eval"
    folder.mkdir()
    for i in range(8):  # the fewest images an evaluation set may have
        image = distort(photos[i % 4][:160, :160], SET_DISTORTIONS[i % 3], 1 + i % 5, seed=i)
        Image.fromarray(image).save(folder / f"{i}.png")
    bundle = auto_built[0]
    assert bf16_record(bundle) is None
    # Through the CLI: `build --precision bf16 --from-bundle B --eval-images DIR` (assemble -> precision.bf16).
    result = CliRunner().invoke(app, ["build", "--precision", "bf16", "--from-bundle", str(bundle.root),
                                      "--eval-images", str(folder), "--out", str(tmp_path / "with-bf16")])
    assert result.exit_code == 0, result.output
    out = load_bundle(tmp_path / "with-bf16")
    record = bf16_record(out)
    assert record is not None
    assert f"OpenVINO plan {record.plan_label}: SRCC {record.plan_scores['srcc']:.5f}" in result.stdout
    # Per graph: tensor errors on recorded calls and the scores with only that graph in bf16; the plan, its deltas.
    for g in GRAPH_NAMES:
        entry = record.graphs[g]
        assert 0 < entry["tensor"]["max_abs"] < 0.1 * entry["tensor"]["reference_max_abs"]
        assert entry["tensor"]["cosine"] > 0.999 and entry["scores"]["images"] == 8
    assert record.plan_scores["images"] == 8 and record.budget.min_srcc == 0.995
    assert record.plan_scores["srcc"] >= 0.995 and record.plan_scores["max_abs_fraction"] <= 0.02
    assert record.within_budget and record.over_budget == () and set(record.plan.values()) == {"bf16"}
    assert {"avx512_bf16", "amx_bf16"} & set(record.cpu["isa_flags"]) and record.cpu["model"]
    # The graphs and every other manifest field are unchanged; the fp32 plan stays the default.
    assert out.manifest.graphs == bundle.manifest.graphs and out.run_plan(None).label() == "fp32"
    assert bf16_note(out, parse_plan("bf16")) is None and bf16_note(bundle, parse_plan("bf16")) is not None


def test_a_branch_with_fusion_weight_zero_is_not_measured(auto_built: tuple[Any, str], photos: list[np.ndarray],
                                                         tmp_path: Path) -> None:
    """The paper preset fuses with VCG weight 0: the pipeline never calls vcg, so bf16 has nothing to measure there
    (the measurement used to fail on its empty list of recorded calls, after scoring the whole set)."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'diffv2iqa-trt[openvino]'")
    from diffv2iqa_trt.bundle import write_bundle
    from diffv2iqa_trt.runtime.backends.openvino_backend import bf16_problem_here

    problem = bf16_problem_here()
    if problem:
        pytest.skip(problem)
    bundle = auto_built[0]
    doc = bundle.manifest.to_dict()
    for key in ("files", "created", "environment", "toolkit_version"):
        doc.pop(key)
    doc["pipeline"]["fusion"] = {"vcg_weight": 0.0, "vda_weight": 1.0}
    vda_only = load_bundle(write_bundle(tmp_path / "vda-only", doc,
                                        {n: bundle.file_path(n) for n in bundle.manifest.files}))
    folder = tmp_path / "eval"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(distort(photos[i % 4][:96, :96], SET_DISTORTIONS[i % 3], 2, seed=i)).save(folder / f"{i}.png")
    record = bf16_record(load_bundle(add_bf16(vda_only, tmp_path / "out", [folder])))
    assert record is not None and record.plan["vcg"] == "fp32"
    assert record.graphs["vcg"]["tensor"] is None and "fusion weight is 0" in record.graphs["vcg"]["not_run"]
    assert record.graphs["vda"]["tensor"]["rows"] > 0 and record.plan_scores["images"] == 8

"""Precision plans and variants: plan parsing and the choice rule on hand-made numbers; FP16/INT8/int8-cpu variants of
the embedded demo model made from a real calibration set, measured, written into a bundle and run by the runtime;
bad requests refused with exit code 2 and nothing written."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt.assemble import BuildOptions, build_onnx_bundle
from diffv2iqa_trt.benchmarks.parity import variants as parity_variants
from diffv2iqa_trt.benchmarks.precision_report import PrecisionReport
from diffv2iqa_trt.bundle import Bundle, load_bundle, sha256_file
from diffv2iqa_trt.calibration import MIN_IMAGES, calibration_set
from diffv2iqa_trt.cli import _print_precision, app
from diffv2iqa_trt.contract import GRAPH_NAMES, RESTORE_STEP, VCG, VDA
from diffv2iqa_trt.data.distortions import distort
from diffv2iqa_trt.data.photos import photos
from diffv2iqa_trt.errors import BundleError, ConfigError, ExportError
from diffv2iqa_trt.metrics import srcc
from diffv2iqa_trt.precision.evaluate import Budget, score_deltas, step_errors
from diffv2iqa_trt.precision.groups import GROUPS, excluded_nodes
from diffv2iqa_trt.precision.quantize import FeedReader, Recipe, _int8_modelopt, check_float_graph, make_variant
from diffv2iqa_trt.precision.search import Candidate, choose
from diffv2iqa_trt.precision.variants import VariantOptions, add_variants
from diffv2iqa_trt.precision_plan import lowest_precision, parse_plan, runnable_plan
from diffv2iqa_trt.reference.loading import load_model
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
from diffv2iqa_trt.runtime.images import load_image

runner = CliRunner()


# --- plans ----------------------------------------------------------------------------------------------------------

def test_plan_shorthands_and_pairs() -> None:
    assert parse_plan("fp16").to_dict() == {RESTORE_STEP: "fp16", VCG: "fp16", VDA: "fp16"}
    plan = parse_plan(" restore_step=fp16, vda=int8 ")
    assert plan.to_dict() == {RESTORE_STEP: "fp16", VCG: "fp32", VDA: "int8"}
    assert parse_plan(plan.label()) == plan and parse_plan("int8-cpu").label() == "int8-cpu"
    assert parse_plan("best", allow_best=True).searched == GRAPH_NAMES
    assert lowest_precision(plan) == "int8" and lowest_precision(parse_plan("fp32")) == "fp32"


@pytest.mark.parametrize("text, words", [
    ("fp8", "unknown precision 'fp8'"), ("unet=fp16", "unknown graph 'unet'"), ("vcg=int4", "for vcg"),
    ("vcg=fp16,vcg=int8", "named twice"), ("vcg", "unknown precision 'vcg'"), ("vcg=", "write graph=precision"),
    ("", "is empty"), ("best", "unknown precision 'best'")])
def test_bad_plans_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as info:
        parse_plan(text)
    assert info.value.exit_code == 2


def test_runnable_plan_uses_the_cpu_layout_only_where_it_exists() -> None:
    have = {RESTORE_STEP: ("fp32", "fp16"), VCG: ("fp32", "int8"), VDA: ("fp32", "int8", "int8-cpu")}
    plan = parse_plan("restore_step=fp16,vcg=int8,vda=int8")
    assert runnable_plan(plan, have, cpu=True).to_dict() == {RESTORE_STEP: "fp16", VCG: "int8", VDA: "int8-cpu"}
    assert runnable_plan(plan, have, cpu=False) == plan
    with pytest.raises(BundleError, match="graph restore_step has no int8 variant \\(it has fp32, fp16\\)") as info:
        runnable_plan(parse_plan("int8"), have, cpu=True)
    assert info.value.exit_code == 2


# --- the choice rule ------------------------------------------------------------------------------------------------

def test_budget_and_deltas_on_hand_computed_numbers() -> None:
    ref = np.array([0.0, 0.25, 0.5, 1.0])
    got = ref + np.array([0.0, 0.01, -0.03, 0.0])  # ranks kept; max |Δ| 0.03 = 3 % of the range 1.0
    d = score_deltas(ref, got)
    assert d["max_abs"] == pytest.approx(0.03) and d["max_abs_fraction"] == pytest.approx(0.03)
    assert d["srcc"] == 1.0 and d["rank_flips"] == 0
    assert Budget().failures(d) == ["max |Δ| 0.03 = 3.00 % of the score range > 2 %"]
    assert Budget(max_abs_fraction=0.05).failures(d) == []
    swapped = score_deltas(ref, np.array([0.0, 0.5, 0.25, 1.0]))
    assert swapped["rank_flips"] == 1 and swapped["srcc"] == pytest.approx(0.8)
    assert Budget(max_abs_fraction=1).failures(swapped) == ["SRCC 0.80000 < 0.995"]


def _deltas(frac: float) -> dict[str, float]:
    return {"srcc": 1.0, "max_abs": frac, "max_abs_fraction": frac}


def test_choose_takes_the_lowest_passing_and_raises_the_worst_graph_when_the_sum_breaks_the_budget() -> None:
    budget = Budget()
    cands = {
        RESTORE_STEP: [Candidate("int8", "int8", _deltas(0.5), ["over"]), Candidate("fp16", "fp16", _deltas(0.015)),
                       Candidate("fp32", "fp32")],
        VCG: [Candidate("int8", "int8", _deltas(0.012)), Candidate("fp16", "fp16", _deltas(0.001)),
              Candidate("fp32", "fp32")],
        VDA: [Candidate("int8", "int8", _deltas(0.004)), Candidate("fp32", "fp32")],
    }
    seen = []

    def measure(plan: dict[str, Candidate]) -> dict[str, float]:
        keys = {g: c.key for g, c in plan.items()}
        seen.append(keys)
        # deltas add up (a stand-in for the end-to-end run): 0.015 + 0.012 + 0.004 > 2 %
        total = sum(c.alone["max_abs_fraction"] for c in plan.values() if c.alone)
        return _deltas(total)

    result = choose(cands, budget, measure)
    assert seen[0] == {RESTORE_STEP: "fp16", VCG: "int8", VDA: "int8"}
    # restore_step moved the scores most alone (1.5 %): it goes up to fp32, then the rest fits (1.6 %)
    assert {g: c.key for g, c in result.chosen.items()} == {RESTORE_STEP: "fp32", VCG: "int8", VDA: "int8"}
    assert result.plan_deltas["max_abs_fraction"] == pytest.approx(0.016) and len(result.rounds) == 2
    assert result.rounds[0]["failures"] and not result.rounds[1]["failures"]


def test_choose_measures_fixed_graphs_even_when_the_search_ends_in_fp32() -> None:
    cands = {VCG: [Candidate("int8", "int8", _deltas(0.03), ["over"]), Candidate("fp32", "fp32")]}
    seen = []

    def measure(plan: dict[str, Candidate]) -> dict[str, float]:
        seen.append(plan[VCG].key)
        return _deltas(0.05)  # a graph outside the search (fixed at int8) breaks the budget by itself

    result = choose(cands, Budget(), measure, others_reduced=True)
    assert seen == ["fp32"] and result.rounds[-1]["failures"]
    assert choose(cands, Budget(), measure).rounds[-1]["failures"] == [] and seen == ["fp32"]


# --- variants of the demo model ---------------------------------------------------------------------------------------

def _save(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Disjoint calibration and evaluation folders: distorted scikit-image photographs (long side 96)."""
    base = list(photos(max_side=96).values())
    kinds = ("gaussian_blur", "white_noise", "jpeg", "contrast")
    calib = [distort(p, kinds[i % 4], 2 + i % 3, seed=i) for i, p in enumerate(base[:9])]
    evals = [distort(p, kinds[(i + j) % 4], 1 + (i + 2 * j) % 5, seed=100 + i)
             for j in range(2) for i, p in enumerate(base[9:18])]
    root = tmp_path_factory.mktemp("precision-images")
    return _save(root / "calib", calib), _save(root / "eval", evals)


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    loaded = load_model()  # the embedded demo weights: trained, so its scores spread and SRCC means something
    out = tmp_path_factory.mktemp("bundles") / "demo"
    return load_bundle(build_onnx_bundle(loaded.model, loaded.info, out, BuildOptions(include_checkpoint=False)).path)


@pytest.fixture(scope="module")
def mixed(demo_bundle: Bundle, image_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    calib, evals = image_sets
    # A budget for 18 small evaluation images (10 % of the range, SRCC 0.95; the product default is 2 %, 0.995):
    # whether vda's int8-cpu variant is offered to the CPU depends on it keeping the budget, and on so few images
    # that verdict flips with the noise bank (schema 4 made it 4.2 %, SRCC 0.981). These tests check the wiring.
    options = VariantOptions(calibration_images=[calib], evaluation_images=[evals], max_crops=16, methods=("max",),
                             cache_dir=tmp_path_factory.mktemp("cache"),
                             budget=Budget(min_srcc=0.95, max_abs_fraction=0.10))
    out = tmp_path_factory.mktemp("bundles") / "mixed"
    return load_bundle(add_variants(demo_bundle, parse_plan("restore_step=fp16,vcg=fp16,vda=int8"), out, options))


def test_census_intent_of_real_variants(mixed: Bundle) -> None:
    """What the engine census expects from each variant ModelOpt made: AutoCast's FP16 graphs ask for FP16 in
    (nearly) every Conv/MatMul, the Q/DQ graph for INT8 in most, and the FP32 graphs for FP32 only."""
    from diffv2iqa_trt.engine.census import onnx_intent

    def intent(graph: str, precision: str) -> dict[str, int]:
        return onnx_intent(onnx.load(str(mixed.onnx_path(graph, precision)), load_external_data=False))

    for g in GRAPH_NAMES:
        assert set(intent(g, "fp32")) == {"fp32"}
    for g in (RESTORE_STEP, VCG):
        fp16 = intent(g, "fp16")
        assert fp16.get("fp16", 0) >= 0.8 * sum(fp16.values()) and "int8" not in fp16, fp16
    int8 = intent(VDA, "int8")
    assert int8.get("int8", 0) >= 0.5 * sum(int8.values()), int8
    assert sum(int8.values()) == sum(intent(VDA, "fp32").values())  # same compute nodes, other precision


def test_variants_are_listed_hashed_measured_and_chosen(mixed: Bundle) -> None:
    m = mixed.manifest
    assert m.precision is not None
    report = m.precision.report
    why = (report["failed"], [(c["recipe"], c["over_budget"]) for c in report["candidates"][VDA]])
    assert {g: mixed.precisions(g) for g in GRAPH_NAMES} == {
        RESTORE_STEP: ("fp32", "fp16"), VCG: ("fp32", "fp16"), VDA: ("fp32", "int8", "int8-cpu")}, why
    assert dict(m.precision.plan) == {RESTORE_STEP: "fp16", VCG: "fp16", VDA: "int8"}
    for g in GRAPH_NAMES:
        for p, v in m.graphs[g].variants.items():
            assert v.precision == p and v.sha256 == sha256_file(mixed.file_path(v.file)) == m.files[v.file].sha256
            if p != "fp32":
                assert v.extra["calibration"] == m.precision.report["calibration"]["key"]
                # the exact calibration data, by hash (issue 22, case 3)
                assert re.fullmatch("[0-9a-f]{64}", v.extra["calibration_sha256"])
                assert v.extra["calibration_sha256"] == m.precision.report["calibration"]["sha256"]
                tensor = v.extra["accuracy"]["tensor"]
                assert 0 < tensor["max_abs"] < 0.5 * tensor["reference_max_abs"] and tensor["cosine"] > 0.99
    # The plan's figures are in the report. On these 18 small images this plan measured SRCC 0.988 and max |Δ| under
    # 4 % of the range: hold it to the int8 parity gate.
    scores = m.precision.report["plan_scores"]
    assert scores["images"] == 18 and scores["srcc"] >= 0.98 and scores["max_abs_fraction"] < 0.05
    # each variant really is what its name says
    fp16 = onnx.load(str(mixed.onnx_path(VCG, "fp16")))
    assert sum(n.op_type == "Cast" for n in fp16.graph.node) > 0
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in fp16.graph.input)
    for p in ("int8", "int8-cpu"):
        ops = {n.op_type for n in onnx.load(str(mixed.onnx_path(VDA, p))).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops



def test_a_built_bundles_precision_report_reads_back(mixed: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    # `build --precision` ended in a TypeError after writing the bundle: the typed report did not know the
    # calibration set's sha256 the build records (the committed reports predate it).
    doc = mixed.manifest.precision.report  # type: ignore[union-attr]
    report = PrecisionReport.from_bundle(mixed)
    assert report.report.calibration is not None and report.report.calibration.to_dict() == doc["calibration"]
    assert re.fullmatch(r"[0-9a-f]{64}", report.report.calibration.sha256 or "")
    _print_precision(mixed.root)  # what `build` prints at its end
    assert "plan end to end on" in capsys.readouterr().out

def test_runtime_runs_the_chosen_plan_and_the_cpu_layout(mixed: Bundle, image_sets: tuple[Path, Path]) -> None:
    images = [load_image(p) for p in sorted(image_sets[1].glob("*.png"))[:6]]
    default = bundle_pipeline(mixed, batch_size=4)
    assert default.executor.plan == "restore_step=fp16,vcg=fp16,vda=int8-cpu"  # the CPU picks int8-cpu
    exact = bundle_pipeline(mixed, precision="restore_step=fp16,vcg=fp16,vda=int8", batch_size=4)
    fp32 = bundle_pipeline(mixed, precision="fp32", batch_size=4)
    ref = np.array([r.score for r in fp32.score(images)])
    for pipe in (default, exact):
        got = np.array([r.score for r in pipe.score(images)])
        # within the fixture's budget (10 % of the range), on these 6 of its images
        assert not np.array_equal(got, ref) and np.max(np.abs(got - ref)) < 0.10 * np.ptp(ref)
        assert srcc(ref, got) > 0.9
    with pytest.raises(BundleError, match="graph restore_step has no int8 variant"):
        bundle_pipeline(mixed, precision="int8")
    plans = [p for _, p in parity_variants(mixed)]
    assert plans == ["fp32", "restore_step=fp16,vcg=fp16,vda=int8", "restore_step=fp16,vcg=fp16,vda=int8-cpu"]


def test_calibration_batches_reach_modelopt_distinct(demo_bundle: Bundle, image_sets: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    # One ModelOpt snapshot built its batch list as `[{}] * n` (every batch the last). Our reader records what the
    # calibrator actually pulled.
    cs, _ = calibration_set(demo_bundle, [image_sets[0]], max_crops=16, cache_dir=tmp_path / "cache")
    reader = FeedReader(cs, VDA, 4)
    _int8_modelopt(demo_bundle.onnx_path(VDA), VDA, [], cs, tmp_path, 4, "max", reader=reader)
    assert len(reader) == -(-cs.crops // 4) >= 3 and len(reader.served) >= len(reader)
    assert len(set(reader.served)) == len(reader)
    # A capped reader (ONNX Runtime's calibrator at large crops) spreads its batches over the loop's steps.
    capped = FeedReader(cs, RESTORE_STEP, 4, max_batches=3)
    feeds = list(capped)
    gammas = sorted({float(f["gamma"][0]) for f in feeds})
    assert len(capped) == len(feeds) == 3 and len(gammas) == 3
    assert gammas[0] == float(cs.gamma.min()) and gammas[-1] == float(cs.gamma.max())


def test_step_errors_cover_every_step(mixed: Bundle, image_sets: tuple[Path, Path], tmp_path: Path) -> None:
    cs, _ = calibration_set(mixed, [image_sets[0]], max_crops=16, cache_dir=tmp_path / "cache")
    fp32, fp16 = mixed.onnx_path(RESTORE_STEP, "fp32"), mixed.onnx_path(RESTORE_STEP, "fp16")
    same = step_errors(fp32, fp32, cs)
    steps = mixed.manifest.pipeline.steps
    assert [s["step"] for s in same] == list(range(steps - 1, -1, -1)) and all(s["max_abs"] == 0 for s in same)
    half = step_errors(fp32, fp16, cs)
    assert all(0 < s["rel"] < 0.05 for s in half)


def test_node_groups_find_real_nodes(demo_bundle: Bundle) -> None:
    for graph, groups in GROUPS.items():
        model = onnx.load(str(demo_bundle.onnx_path(graph)), load_external_data=False)
        for name in groups:
            nodes = excluded_nodes(model, graph, [name])
            assert 0 < len(nodes) < len(model.graph.node), (graph, name)
    with pytest.raises(ConfigError, match="unknown node group 'heads' for restore_step"):
        excluded_nodes(onnx.ModelProto(), RESTORE_STEP, ["heads"])



class _KilledPool(concurrent.futures.ProcessPoolExecutor):
    """A real process pool whose worker dies without an exception, as the kernel's OOM killer makes it die."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        return super().submit(os._exit, 9)


def test_a_killed_int8_cpu_quantizer_is_named_as_such(demo_bundle: Bundle, image_sets: tuple[Path, Path],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a 24 GB machine shared with another build, the kernel killed quantize_static's process (15 GB for the paper
    # restore_step); the build reported only "BrokenProcessPool: A process in the process pool was terminated".
    cs, _ = calibration_set(demo_bundle, [image_sets[0]], max_crops=8, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _KilledPool)
    dst = tmp_path / "vda.int8-cpu.onnx"
    with pytest.raises(ExportError, match=r"quantizer of vda was killed by the system, most likely out of memory.*"
                                          r"its 8 calibration rows.*smaller --calib-crops"):
        make_variant(demo_bundle.onnx_path(VDA), dst, VDA, Recipe("int8-cpu", (), "max"), cs, tmp_path / "scratch")
    assert not dst.exists()

# --- bad requests -----------------------------------------------------------------------------------------------------

def test_a_quantised_graph_is_not_quantised_again(mixed: Bundle, tmp_path: Path) -> None:
    path = mixed.onnx_path(VDA, "int8")
    with pytest.raises(ConfigError, match="already holds quantisation nodes"):
        check_float_graph(onnx.load(str(path)), path)
    with pytest.raises(ConfigError, match="already holds quantisation nodes"):
        make_variant(path, tmp_path / "x.onnx", VDA, Recipe("int8", (), "max"), None, tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / "x.onnx").exists()


def test_too_few_or_overlapping_images_are_refused_before_any_work(demo_bundle: Bundle, image_sets: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    calib, evals = image_sets
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(calib.glob("*.png"))[:MIN_IMAGES - 1]:
        shutil.copy(p, few)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=f"at least {MIN_IMAGES} distinct images"):
        add_variants(demo_bundle, parse_plan("vda=fp16"), out, VariantOptions(calibration_images=[few],
                                                                                cache_dir=tmp_path / "c"))
    overlap = tmp_path / "overlap"
    shutil.copytree(evals, overlap)
    shutil.copy(sorted(calib.glob("*.png"))[0], overlap / "from-calib.png")
    with pytest.raises(ConfigError, match="also calibration images"):
        add_variants(demo_bundle, parse_plan("best", allow_best=True), out,
                     VariantOptions(calibration_images=[calib], evaluation_images=[overlap], cache_dir=tmp_path / "c"))
    with pytest.raises(ConfigError, match="needs an evaluation set"):
        add_variants(demo_bundle, parse_plan("best", allow_best=True), out, VariantOptions(calibration_images=[calib]))
    assert not out.exists()


def test_cli_refuses_bad_precision_requests_with_exit_2(mixed: Bundle, demo_bundle: Bundle,
                                                        image_sets: tuple[Path, Path], tmp_path: Path) -> None:
    image = str(sorted(image_sets[1].glob("*.png"))[0])
    cases = [
        (["build", "--out", str(tmp_path / "a"), "--precision", "vcg=fp8"], "unknown precision 'fp8' for vcg"),
        (["build", "--out", str(tmp_path / "a"), "--precision", "int8"], "needs calibration images"),
        (["build", "--out", str(tmp_path / "a"), "--precision", "best", "--calib-images", str(image_sets[0])],
         "needs an evaluation set"),
        (["build", "--out", str(tmp_path / "a"), "--calib-images", str(image_sets[0])], "only apply with"),
        (["build", "--from-bundle", str(demo_bundle.root), "--out", str(demo_bundle.root), "--precision", "fp16",
          "--calib-images", str(image_sets[0])], "pass --overwrite to replace it in place"),
        (["score", image, "--bundle", str(mixed.root), "--precision", "int8"], "no int8 variant"),
        (["score", image, "--precision", "fp16"], "--precision needs --bundle"),
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert words in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "a").exists()


def test_score_uses_the_bundle_plan_by_default(mixed: Bundle, image_sets: tuple[Path, Path]) -> None:
    image = str(sorted(image_sets[1].glob("*.png"))[0])
    runs = {p: json.loads(runner.invoke(app, ["score", image, "--bundle", str(mixed.root), "--format", "json",
                                              *([] if p is None else ["--precision", p])]).output)
            for p in (None, "restore_step=fp16,vcg=fp16,vda=int8-cpu", "fp32")}
    first = {p: r["results"][0]["score"] for p, r in runs.items()}
    assert runs[None]["precision"] == "restore_step=fp16,vcg=fp16,vda=int8-cpu" and runs["fp32"]["precision"] == "fp32"
    assert first[None] == first["restore_step=fp16,vcg=fp16,vda=int8-cpu"] != first["fp32"]

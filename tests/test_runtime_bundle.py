"""A tiny bundle end to end: build, score with ONNX Runtime against the torch reference, refusal of damaged bundles,
and a runtime that needs neither torch nor the model code."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from diffv2iqa_trt.assemble import BuildOptions, build_onnx_bundle
from diffv2iqa_trt.bundle import BundleError, load_bundle
from diffv2iqa_trt.bundle.gates import DEFAULT_GATES
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.config import ScoringConfig
from diffv2iqa_trt.data.distortions import distort
from diffv2iqa_trt.data.photos import SET_DISTORTIONS, photos
from diffv2iqa_trt.reference.loading import load_model
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    # Seeded random weights: the export and runtime do not depend on training (the demo checkpoint's own parity
    # is reported by `diffv2iqa-trt parity`).
    loaded = load_model(preset_name="tiny")
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = build_onnx_bundle(loaded.model, loaded.info, out, BuildOptions(), init_seed=loaded.init_seed)
    assert all(rep.ok for by_major in result.lint.values() for rep in by_major.values())
    return result.path


@pytest.fixture(scope="module")
def distorted_photos():
    """21 real photographs with synthetic distortions (7 photos x 3 kinds), small so the test stays quick."""
    base = list(photos(max_side=96).values())[:7]
    return [distort(p, kind, 3, seed=i) for i, p in enumerate(base) for kind in SET_DISTORTIONS]


def test_onnxruntime_matches_torch_on_real_photos(tiny_bundle, distorted_photos):
    bundle = load_bundle(tiny_bundle)
    ort_scores = np.array([r.score for r in bundle_pipeline(bundle, "onnxruntime").score(distorted_photos)])
    ref_scores = np.array([r.score for r in bundle_pipeline(bundle, "torch").score(distorted_photos)])
    spread = ref_scores.max() - ref_scores.min()
    assert len(distorted_photos) >= 20 and spread > 0
    assert np.abs(ort_scores - ref_scores).max() <= 1e-4 * spread


def test_bundle_pipeline_equals_reference_pipeline(tiny_bundle, distorted_photos):
    """The manifest's tables, seed and fusion reproduce the config-driven reference exactly."""
    from diffv2iqa_trt.reference.loading import reference_pipeline

    loaded = load_model(preset_name="tiny")
    scoring = ScoringConfig(crops="five", mode="faithful", noise_seed=3)
    ref = reference_pipeline(loaded.model, scoring).score(distorted_photos[:2])
    via_bundle = bundle_pipeline(load_bundle(tiny_bundle), "torch", scoring=scoring).score(distorted_photos[:2])
    assert [r.score for r in via_bundle] == [r.score for r in ref]


def test_cli_build_score_inspect(tiny_bundle, tmp_path, distorted_photos):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(distorted_photos[0]).save(img)
    res = runner.invoke(app, ["score", str(img), "--bundle", str(tiny_bundle), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["backend"] == "onnxruntime-cpu" and "UNTRAINED" in doc["model"]["label"]
    ref = runner.invoke(app, ["score", str(img), "--bundle", str(tiny_bundle), "--backend", "torch",
                              "--format", "json"])
    # Two backends agree to the fp32 parity gate, not to 1e-6: a 1e-6 difference in a restored pixel can flip its
    # uint8 round trip (bundle/gates.py); this image differs by 1.6e-6 with the version-4 noise bank.
    ref_score = json.loads(ref.stdout)["results"][0]["score"]
    assert ref_score == pytest.approx(doc["results"][0]["score"], abs=DEFAULT_GATES["fp32"]["max_abs"])
    info = runner.invoke(app, ["inspect", str(tiny_bundle), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["model"] == "tiny"
    again = runner.invoke(app, ["build", "--out", str(tiny_bundle)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def _damaged_copy(src, dst, damage):
    shutil.copytree(src, dst)
    damage(dst)
    return dst


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "vcg.fp32.onnx").write_bytes(b"\x00" + (d / "vcg.fp32.onnx").read_bytes()[1:]),
     "vcg.fp32.onnx"),
    (lambda d: (d / "vda.fp32.onnx").write_bytes((d / "vda.fp32.onnx").read_bytes()[:1000]), "vda.fp32.onnx"),
    (lambda d: (d / "restore_step.fp32.onnx").unlink(), "restore_step.fp32.onnx"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace(
        '"schema_version": 4', '"schema_version": 5')), "schema version 5"),
])
def test_damaged_bundles_are_refused(tiny_bundle, tmp_path, damage, message):
    bad = _damaged_copy(tiny_bundle, tmp_path / "bad", damage)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)
    res = runner.invoke(app, ["score", str(tmp_path), "--bundle", str(bad)])
    assert res.exit_code == 2 and message in res.stderr


def test_runtime_needs_neither_torch_nor_the_model(tiny_bundle, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from diffv2iqa_trt.bundle import load_bundle
        from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
        pipe = bundle_pipeline(load_bundle({str(tiny_bundle)!r}), "onnxruntime")
        score = pipe.score([np.full((80, 80, 3), 120, np.uint8)])[0].score
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "diffv2iqa_trt.model",
                                                                                  "diffv2iqa_trt.export")))
        print(score, leaked)
        assert not leaked, leaked
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _perturbed_bundle(src, dst, factor=1.01):
    """A valid bundle (hashes match) whose vda graph scales its score: what a broken export would look like."""
    import onnx

    from diffv2iqa_trt.bundle import write_bundle

    b = load_bundle(src)
    model = onnx.load(str(b.onnx_path("vda")))
    out = model.graph.output[0].name
    for node in model.graph.node:  # rename the producer's output, then scale it into the graph output
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(factor, np.float32), "perturb_factor"))
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_raw", "perturb_factor"], [out]))
    onnx.save(model, str(dst.parent / "vda_perturbed.onnx"))
    files = {name: b.file_path(name) for name in b.manifest.files}
    files["vda.fp32.onnx"] = dst.parent / "vda_perturbed.onnx"
    manifest = {k: v for k, v in b.manifest.to_dict().items() if k != "files"}
    return write_bundle(dst, manifest, files)


def test_parity_passes_and_a_perturbed_bundle_fails(tiny_bundle, tmp_path, distorted_photos):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i, rgb in enumerate(distorted_photos[:6]):
        Image.fromarray(rgb).save(images / f"{i}.png")
    (images / "labels.csv").write_text("image,score\n" + "".join(f"{i}.png,{i / 10}\n" for i in range(6)))
    ok = runner.invoke(app, ["parity", "--bundle", str(tiny_bundle), "--images", str(images),
                             "--labels", str(images / "labels.csv"), "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok" / "parity.json").read_text())
    v = report["variants"]["onnxruntime-fp32"]
    assert v["passed"] and v["metrics"]["abs_error"]["max"] <= 1e-4 and report["labels"]["images"] == 6
    assert all((tmp_path / "ok" / f).stat().st_size > 0 for f in ("parity.md", "parity_scatter.png",
                                                                 "parity_errors.png"))
    bad = _perturbed_bundle(tiny_bundle, tmp_path / "perturbed")
    res = runner.invoke(app, ["parity", "--bundle", str(bad), "--images", str(images), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1
    report = json.loads((tmp_path / "bad" / "parity.json").read_text())
    failure = report["variants"]["onnxruntime-fp32"]
    assert not failure["passed"] and any("max |Δ|" in f for f in failure["failures"])
    assert failure["tensor_errors"]["vda"] > 1e-3 and failure["tensor_errors"]["vcg"] < 1e-5


def test_bench_reports_latency_throughput_stages_and_roofline(tiny_bundle, tmp_path):
    res = runner.invoke(app, ["bench", "--bundle", str(tiny_bundle), "--batch-sizes", "1,2", "--min-iters", "2",
                              "--min-seconds", "0", "--warmup", "1", "--offline-images", "2",
                              "--out", str(tmp_path / "bench")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "bench" / "bench_tiny.json").read_text())
    assert report["command"].startswith("diffv2iqa-trt bench")
    for name in ("torch", "onnxruntime"):
        b = report["backends"][name]
        lat = b["single_stream"]["no_decode"]
        assert lat["iterations"] >= 2 and 0 < lat["min"] <= lat["median"] <= lat["max"]
        stages = b["single_stream"]["stage_mean_s"]
        assert stages["restoration steps"] > 0 and stages["decode + preprocess"] > 0
        # the stages of the executor calls cannot add up to more than the measured latency
        assert sum(v for k, v in stages.items() if k != "decode + preprocess") <= lat["mean"] * 1.05
        assert [o["batch"] for o in b["offline"]] == [1, 2] and all(o["images_per_s"] > 0 for o in b["offline"])
        frac = report["roofline"][name]["fraction_of_peak"]["restoration steps"]
        assert 0 < frac < 1.5
    assert report["roofline"]["stage_macs"]["restoration steps"] > 0
    for suffix in ("throughput", "latency_cdf", "stages"):
        assert (tmp_path / "bench" / f"bench_tiny_{suffix}.png").stat().st_size > 1000


def test_faithful_mode_on_onnxruntime_matches_torch(tiny_bundle, distorted_photos):
    """Whole-image restoration at several resolutions (not only crop size) through the ONNX graphs."""
    bundle = load_bundle(tiny_bundle)
    scoring = ScoringConfig(crops="grid:2", mode="faithful")
    # Three restoration sizes: 96x96, 80x96 and 96x72 (-> 64 wide after rounding down to a multiple of 16).
    images = [distorted_photos[0], distorted_photos[3][:80], distorted_photos[6][:, :72]]
    ort = np.array([r.score for r in bundle_pipeline(bundle, "onnxruntime", scoring=scoring).score(images)])
    ref = np.array([r.score for r in bundle_pipeline(bundle, "torch", scoring=scoring).score(images)])
    assert np.all(np.isfinite(ort))
    assert np.abs(ort - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_manifest_normalisation_is_bit_exact_with_the_runtime(tiny_bundle):
    """A native runtime that applies the manifest's recorded formula to every uint8 value gets exactly the float32
    inputs the Python runtime feeds the graphs (the previous scale/offset were 1 ulp off for 111 of 256 values)."""
    from diffv2iqa_trt.runtime.crops import normalise

    n = load_bundle(tiny_bundle).manifest.pipeline.normalisation
    v = np.arange(256, dtype=np.uint8)
    f32 = np.float32
    from_manifest = (v.astype(f32) / f32(n.divisor) - f32(n.mean)) / f32(n.std)
    runtime = normalise(np.stack([v, v, v], axis=1)[None])[:, 0, :]  # (H=1, W=256, 3) -> (3, 1, 256)
    assert runtime.dtype == np.float32
    for channel in runtime:
        assert channel.tobytes() == from_manifest.tobytes()
    old_scale_offset = v.astype(f32) * f32(2.0 / 255.0) + f32(-1.0)
    assert int(np.sum(old_scale_offset != from_manifest)) > 0  # the formula the manifest used to record


def test_build_steps_and_no_checkpoint(tmp_path, distorted_photos):
    from PIL import Image

    out = tmp_path / "b6"
    res = runner.invoke(app, ["build", "--out", str(out), "--preset", "tiny", "--steps", "6", "--no-checkpoint"])
    assert res.exit_code == 0, res.output
    b = load_bundle(out)
    assert b.manifest.pipeline.steps == 6 and len(b.manifest.pipeline.gamma) == 6
    assert "model.safetensors" not in b.manifest.files and not (out / "model.safetensors").exists()
    # --preset weights are reproducible from the recorded seed, so the reference still runs without a checkpoint;
    # and its 6-step scores agree with the 6-step ONNX graphs.
    img = distorted_photos[0]
    ort = bundle_pipeline(b, "onnxruntime").score([img])[0].score
    ref = bundle_pipeline(b, "torch").score([img])[0].score
    assert ort == pytest.approx(ref, abs=1e-4)
    loaded = load_model(preset_name="tiny")
    from diffv2iqa_trt.reference.loading import reference_pipeline

    assert ref == pytest.approx(reference_pipeline(loaded.model, ScoringConfig(), steps=6).score([img])[0].score,
                                abs=1e-6)
    Image.fromarray(img).save(tmp_path / "a.png")
    res = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--bundle", str(out), "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["steps"] == 6


def test_no_checkpoint_bundle_of_a_trained_model_refuses_the_torch_backend(tmp_path, distorted_photos):
    from PIL import Image

    out = tmp_path / "nockpt"
    res = runner.invoke(app, ["build", "--out", str(out), "--no-checkpoint"])  # the trained demo checkpoint
    assert res.exit_code == 0, res.output
    Image.fromarray(distorted_photos[0]).save(tmp_path / "a.png")
    res = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--bundle", str(out), "--backend", "torch"])
    assert res.exit_code == 2 and "holds no checkpoint" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--bundle", str(out)])
    assert res.exit_code == 0, res.output


def test_lint_failure_stops_the_build_unless_allowed(tmp_path, monkeypatch):
    from diffv2iqa_trt import assemble
    from diffv2iqa_trt.errors import BuildError
    from diffv2iqa_trt.export.trt_lint import LintReport, lint_onnx

    def failing(path, major):
        report = lint_onnx(path, major)
        # One row the parser of that TensorRT major would reject.
        bad = dataclasses.replace(report.rows[0], status="fail", detail="not supported (injected)")
        return dataclasses.replace(report, rows=[*report.rows, bad])

    monkeypatch.setattr(assemble, "lint_onnx", failing)
    loaded = load_model(preset_name="tiny")
    options = BuildOptions(include_checkpoint=False)
    with pytest.raises(BuildError, match=r"TensorRT compatibility lint failed for restore_step \(TensorRT 10\)"):
        build_onnx_bundle(loaded.model, loaded.info, tmp_path / "refused", options)
    assert not (tmp_path / "refused").exists()
    result = build_onnx_bundle(loaded.model, loaded.info, tmp_path / "allowed",
                               dataclasses.replace(options, allow_lint_failures=True))
    assert isinstance(result.lint["vcg"][11], LintReport) and not result.lint["vcg"][11].ok
    lint_doc = load_bundle(result.path).manifest.lint
    assert lint_doc is not None and lint_doc["vda"]["10"]["ok"] is False


def test_manifest_records_no_build_paths(tiny_bundle):
    """manifest.json names files as the bundle does; the staging folder of the build must not leak into it."""
    text = (tiny_bundle / "manifest.json").read_text()
    assert "diffv2iqa-build-" not in text and str(tiny_bundle.parent) not in text
    lint = load_bundle(tiny_bundle).manifest.lint
    assert lint is not None and lint["restore_step"]["11"]["path"] == "restore_step.fp32.onnx"


def test_golden_scores_are_what_the_runtime_gives(tiny_bundle):
    """The bundle's golden inputs, scored again from the bundle alone, give exactly the recorded scores."""
    import hashlib

    from diffv2iqa_trt.golden import read_ppm
    from diffv2iqa_trt.runtime import philox

    bundle = load_bundle(tiny_bundle)
    golden = bundle.manifest.golden
    assert golden is not None and [i["file"] for i in golden["images"]] == [
        "golden/astronaut-64x64.ppm", "golden/coffee-20x30.ppm"]
    for image in golden["images"]:
        assert image["file"] in bundle.manifest.files
        rgb = read_ppm(tiny_bundle / image["file"])
        assert rgb.shape == (image["height"], image["width"], 3)
        assert [c["mode"] for c in image["scores"]] == ["crops", "faithful"]
        for case in image["scores"]:
            scoring = ScoringConfig(crops=case["crops"], mode=case["mode"], noise_seed=golden["noise_seed"])
            [got] = bundle_pipeline(bundle, "onnxruntime", scoring=scoring).score([rgb])
            assert (got.score, got.vcg, got.vda, got.crops) == (case["score"], case["vcg"], case["vda"],
                                                               case["crop_count"])
    # The 20x30 input is upscaled to 64x96: faithful restores all of it, crops mode only the centre, so they differ.
    coffee = golden["images"][1]["scores"]
    assert coffee[0]["score"] != coffee[1]["score"]
    # The noise test vectors are the generator's rows at crop size (recomputed from philox.py directly).
    p = bundle.manifest.pipeline
    tv = p.noise.test_vectors
    assert tv["shape"] == [3, p.crop_size, p.crop_size] and len(tv["row_sha256"]) == p.steps + 1
    for r in (0, p.steps // 2, p.steps):
        row = philox.normal_row(p.noise.seed, r, (3, p.crop_size, p.crop_size))
        assert tv["row_sha256"][r] == hashlib.sha256(row.astype("<f4").tobytes()).hexdigest()
    assert tv["first8_bits"][str(p.steps)] == [f"0x{int(b):08x}" for b in row.reshape(-1)[:8].view(np.uint32)]

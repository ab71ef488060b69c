"""Real engine builds: need TensorRT and an NVIDIA GPU, and skip (with the reason) where either is missing.

Neither the machines this project is developed on nor the GPU machines it has been lent have TensorRT, so these
tests have never run; where TensorRT is available, run `pytest -m tensorrt` and quote the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import load_bundle, sha256_file
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.engine.bundle_engines import engines_unavailable
from diffv2iqa_trt.engine.compatibility import Machine, check_loadable, refusal
from diffv2iqa_trt.errors import BundleError

WHY = engines_unavailable()
SHORT_WHY = (WHY or "").split(". ")[0]
pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(WHY is not None, reason=f"no engines here: {SHORT_WHY}")]
runner = CliRunner()


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trt")
    out = root / "tiny-trt"
    result = runner.invoke(app, ["build", "--preset", "tiny", "--target", "tensorrt", "--out", str(out),
                                 "--timing-cache", str(root / "timing.cache"), "--max-batch", "4",
                                 "--opt-batch", "2", "--max-size", "128"])
    assert result.exit_code == 0, result.output
    assert (root / "timing.cache").stat().st_size > 0
    return out


def test_every_fp32_graph_has_a_verified_engine(engine_bundle: Path) -> None:
    bundle = load_bundle(engine_bundle)
    for graph in ("restore_step", "vcg", "vda"):
        entry = bundle.engine(graph, "fp32")
        assert entry.extra["sha256"] == sha256_file(bundle.engine_path(graph, "fp32"))
        assert entry.extra["source_sha256"] == bundle.graph(graph).variants["fp32"].sha256
        assert entry.extra["census"]["verdict"]["ok"], entry.extra["census"]
        assert entry.extra["device_memory_bytes"] > 0
        layers = json.loads(bundle.file_path(entry.extra["layer_information"]).read_text())
        assert layers["Layers"] and isinstance(layers["Layers"][0], dict)  # DETAILED verbosity
        here = Machine(entry.tensorrt, entry.gpu, entry.sm)
        check_loadable(str(engine_bundle), graph, "fp32", entry, here)
        assert refusal(entry, Machine("99.0.0", entry.gpu, entry.sm)) is not None
        with pytest.raises(BundleError, match="rebuild the engines on this machine"):
            check_loadable(str(engine_bundle), graph, "fp32", entry, Machine(entry.tensorrt, entry.gpu, "1.0"))


def test_engines_deserialise_and_take_the_profile_shapes(engine_bundle: Path) -> None:
    import tensorrt as trt

    bundle = load_bundle(engine_bundle)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(bundle.engine_path("restore_step", "fp32").read_bytes())
    assert engine is not None
    context = engine.create_execution_context()
    for name, shapes in bundle.engine("restore_step", "fp32").profile.items():
        assert context.set_input_shape(name, trt.Dims(shapes.max))


def test_rebuilding_from_the_bundle_reuses_the_timing_cache(engine_bundle: Path, tmp_path: Path) -> None:
    cache = engine_bundle.parent / "timing.cache"
    before = cache.stat().st_size
    out = tmp_path / "again"
    result = runner.invoke(app, ["build", "--target", "tensorrt", "--from-bundle", str(engine_bundle), "--out",
                                 str(out), "--timing-cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert cache.stat().st_size >= before
    assert load_bundle(out).engine_precisions("vcg") == ("fp32",)


def test_tensorrt_scores_match_onnx_runtime_in_fp32(auto_built: tuple[Any, str], photos: list[np.ndarray],
                                                    tmp_path: Path) -> None:
    """The parity check the first TensorRT machine runs: engines built for the tiny bundle (add_engines, as `build
    --target tensorrt --from-bundle` does), scored through the real TensorRTLauncher and CudaDevice in the stream
    pipeline, with and without CUDA graphs and branch streams, against the ONNX Runtime CPU pipeline: FP32 scores
    agree to 1e-3."""
    from diffv2iqa_trt.config import ScoringConfig
    from diffv2iqa_trt.engine.builder import BuildSettings
    from diffv2iqa_trt.engine.bundle_engines import add_engines
    from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline, bundle_stream_pipeline

    source = auto_built[0]
    if source.engine_precisions("vcg"):  # where TensorRT is installed, `build --target auto` built them already
        bundle = source
    else:
        bundle = load_bundle(add_engines(source, tmp_path / "engines", BuildSettings(
            timing_cache=tmp_path / "timing.cache"), precisions=["fp32"]))
    scoring = ScoringConfig(crops="five", mode="crops")
    images = [p[:256, :256] for p in photos[:3]]
    want = np.array([r.score for r in bundle_pipeline(bundle, "onnxruntime", scoring=scoring,
                                                      batch_size=4).score(images)])
    for streams in (True, False):
        for graph in (True, False):
            pipe = bundle_stream_pipeline(bundle, "tensorrt", precision="fp32", scoring=scoring, batch_size=4,
                                          streams=streams, cuda_graph=graph)
            try:
                got = np.array([r.score for r in pipe.score(images)])
                again = np.array([r.score for r in pipe.score(images)])  # with graphs: the captured replay
            finally:
                close = getattr(pipe, "close", None)
                if close is not None:
                    close()
            assert np.isfinite(got).all()
            assert np.abs(got - want).max() <= 1e-3, (streams, graph, got, want)
            assert np.abs(again - want).max() <= 1e-3, (streams, graph, again, want)

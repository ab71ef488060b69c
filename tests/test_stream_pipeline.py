"""The stream pipeline's orchestration, run on the CPU through HostDevice: the same scores as the host pipeline.

HostDevice executes enqueued work in order and, while capturing, records it instead of running it; so the
capture-then-replay path is exercised for real (a batch scored from a replay computed nothing during the capture),
and every buffer starts as NaN, so a buffer read before it is written would show up in the scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import Bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.config import ScoringConfig
from diffv2iqa_trt.data.photos import photos
from diffv2iqa_trt.errors import BackendError, ConfigError
from diffv2iqa_trt.reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher
from diffv2iqa_trt.reference.torch_executor import model_from_bundle
from diffv2iqa_trt.runtime.device import ExecutorLauncher, HostDevice
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
from diffv2iqa_trt.runtime.stream_pipeline import BufferPlan, StreamPipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Bundle, str]) -> Bundle:
    return auto_built[0]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(photos(max_side=80).values())[:5]


def test_buffer_plan_on_numbers() -> None:
    plan = BufferPlan(batch=2, height=64, width=96, crops_per_image=4, crop_size=32, steps=5, direct=False)
    shapes = plan.shapes()
    assert shapes["x"] == shapes["y_b"] == (2, 3, 64, 96)
    assert shapes["gamma"] == (5, 2) and shapes["coef"] == (5, 2, 5) and shapes["noise"] == (5, 1, 3, 64, 96)
    assert shapes["crop_t2"] == (8, 3, 32, 32) and shapes["vda"] == (8,)
    images, tables = 6 * 2 * 3 * 64 * 96, 5 * 2 + 5 * 2 * 5 + 5 * 3 * 64 * 96
    assert plan.device_bytes == 4 * (images + tables + 4 * 8 * 3 * 32 * 32 + 2 * 8)
    # Steps run 4, 3, 2, 1, 0 from y_a: step 4 writes y_b, step 3 y_a, ... step 0 y_b.
    assert [plan.written_by(i) for i in (4, 3, 2, 1, 0)] == ["y_b", "y_a", "y_b", "y_a", "y_b"]
    direct = dataclasses.replace(plan, height=32, width=32, crops_per_image=1, direct=True)
    assert "crop_x" not in direct.shapes() and direct.crops == 2


def test_host_device_records_while_capturing_and_replays() -> None:
    d = HostDevice()
    s = d.stream()
    a, b = d.empty((3,)), d.empty((3,))
    assert np.isnan(a).all()  # never plausible zeros
    d.begin_capture(s)
    d.upload(np.arange(3, dtype=np.float32), a, s)
    d.copy(a, b, s)
    with pytest.raises(RuntimeError, match="while capturing"):
        d.synchronize(s)
    graph = d.end_capture(s)
    assert np.isnan(b).all()  # nothing ran during the capture
    d.replay(graph, s)
    assert b.tolist() == [0.0, 1.0, 2.0] and d.log == {"captured": 2, "replay": 1}


@pytest.mark.parametrize(("crops", "mode", "batch"), [("center", "crops", 2), ("five", "crops", 3),
                                                      ("grid:2", "faithful", 2)])
def test_same_scores_as_the_host_pipeline(bundle: Bundle, images: list[np.ndarray], crops: str, mode: str,
                                          batch: int) -> None:
    reference = bundle_pipeline(bundle, scoring=ScoringConfig(crops=crops, mode=mode), batch_size=batch)
    want = np.array([r.score for r in reference.score(images)])
    prepared = [reference.prepare(rgb) for rgb in images]
    for streams in (True, False):
        for graph in (False, True):
            device = HostDevice()
            pipe = StreamPipeline(device, ExecutorLauncher(reference.executor), reference.spec, batch_size=batch,
                                  streams=streams, cuda_graph=graph)
            got = pipe.score_prepared(prepared)
            assert np.abs(np.array([r.score for r in got]) - want).max() <= 1e-6, (streams, graph)
            assert [r.crops for r in got] == [len(u) * len(u[0].boxes) for u in prepared]
            if graph and crops == "five":  # 25 crops in batches of 3: slots are reused, so graphs replay
                assert device.log["replay"] > 0 and device.log["captured"] > 0
            assert len(pipe.timings) == -(-sum(len(u) for u in prepared) // batch) if mode == "crops" else True


def test_torch_launcher_matches_the_torch_reference(bundle: Bundle, images: list[np.ndarray]) -> None:
    """The torch-cuda backend's launcher, run on the CPU (HostDevice) against the torch reference pipeline."""
    reference = bundle_pipeline(bundle, "torch", scoring=ScoringConfig(crops="five"), batch_size=4)
    want = np.array([r.score for r in reference.score(images[:3])])
    launcher = TorchGraphLauncher(model_from_bundle(bundle))
    pipe = StreamPipeline(HostDevice(), launcher, reference.spec, batch_size=4, cuda_graph=True)
    got = np.array([r.score for r in pipe.score(images[:3])])
    assert np.abs(got - want).max() <= 1e-6


def test_a_branch_with_zero_weight_is_not_run(bundle: Bundle, images: list[np.ndarray]) -> None:
    reference = bundle_pipeline(bundle, batch_size=2)
    spec = dataclasses.replace(reference.spec, vcg_weight=0.0)
    reference.spec = spec
    want = reference.score(images[:2])
    pipe = StreamPipeline(HostDevice(), ExecutorLauncher(reference.executor), spec, batch_size=2)
    got = pipe.score(images[:2])
    assert [g.vcg for g in got] == [None, None]
    assert max(abs(a.score - b.score) for a, b in zip(want, got, strict=True)) <= 1e-6


def test_options_are_checked(bundle: Bundle) -> None:
    reference = bundle_pipeline(bundle, batch_size=2)
    with pytest.raises(ConfigError, match="batch size must be at least 1"):
        StreamPipeline(HostDevice(), ExecutorLauncher(reference.executor), reference.spec, batch_size=0)
    with pytest.raises(ConfigError, match="runs fp32 or fp16"):
        TorchGraphLauncher(model_from_bundle(bundle), "int8")


def test_torch_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        TorchCudaDevice()


def test_cli_gpu_backends_and_their_options(bundle: Bundle, tmp_path: Path, images: list[np.ndarray]) -> None:
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "a.png")
    base = ["score", str(tmp_path / "a.png"), "--bundle", str(bundle.root)]
    result = runner.invoke(app, [*base, "--backend", "torch-cuda"])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output, result.output
    result = runner.invoke(app, [*base, "--backend", "tensorrt"])
    assert result.exit_code == 2 and "TensorRT" in result.output, result.output
    result = runner.invoke(app, [*base, "--cuda-graph", "off"])
    assert result.exit_code == 2 and "--streams and --cuda-graph apply to the GPU backends" in result.output
    result = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--backend", "torch-cuda"])
    assert result.exit_code == 2 and "needs --bundle" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_torch_cuda_stream_pipeline_on_a_gpu(bundle: Bundle, images: list[np.ndarray]) -> None:
    from diffv2iqa_trt.runtime.from_bundle import bundle_stream_pipeline

    reference = bundle_pipeline(bundle, "torch", scoring=ScoringConfig(crops="five"), batch_size=4)
    want = np.array([r.score for r in reference.score(images[:3])])
    for streams in (True, False):
        for graph in (True, False):
            pipe = bundle_stream_pipeline(bundle, "torch-cuda", scoring=ScoringConfig(crops="five"), batch_size=4,
                                          streams=streams, cuda_graph=graph)
            got = np.array([r.score for r in pipe.score(images[:3])])
            assert np.abs(got - want).max() <= 1e-3, (streams, graph)


def test_bench_measures_a_stream_backend_with_its_event_stages(bundle: Bundle, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """bench's stream path, run for real on the CPU: a stream backend registered for the test (HostDevice and ONNX
    Runtime), measured beside the plain onnxruntime backend."""
    from diffv2iqa_trt.benchmarks.bench import BenchSettings, run_bench
    from diffv2iqa_trt.runtime.backends import STREAM_BACKENDS

    def host_stream(b: Bundle, spec: object, *, batch_size: int, **_: object) -> StreamPipeline:
        executor = bundle_pipeline(b).executor
        return StreamPipeline(HostDevice(), ExecutorLauncher(executor), spec, batch_size=batch_size)  # type: ignore

    monkeypatch.setitem(STREAM_BACKENDS, "host-stream", host_stream)
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(list(photos(max_side=80).values())[0]).save(path)
    settings = BenchSettings(backends=("onnxruntime", "host-stream"), batch_sizes=(1, 2), min_iters=2,
                             min_seconds=0.0, offline_images=2)
    report = run_bench(bundle, [path], settings)
    stream = report["backends"]["host-stream"]
    stages = stream["single_stream"]["stage_mean_s"]
    assert {"host-to-device", "restoration steps", "VCG + VDA", "device-to-host"} <= set(stages)
    assert stages["restoration steps"] > 0 and stages["VCG + VDA"] > 0
    assert [o["batch"] for o in stream["offline"]] == [1, 2] and all(o["crops_per_s"] > 0 for o in stream["offline"])
    assert "host-stream" not in report["roofline"]


def test_bench_cli_on_a_gpu_backend_without_a_gpu(bundle: Bundle, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--bundle", str(bundle.root), "--backends", "onnxruntime,torch-cuda",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output, result.output

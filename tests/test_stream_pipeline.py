"""The stream pipeline's orchestration, run on the CPU through the strict simulated device (runtime/sim_device.py):
the same scores as the host pipeline over many seeded interleavings, no race, every shape inside the profiles.

StrictDevice queues every copy and launch per stream and runs them only when the host waits, in a seeded order that
honours only stream order and event waits; a use of a buffer across streams without a wait is reported as a race;
buffers start as NaN, so one read before it is written shows in the scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from toy_graphs import FailOnce, ToyExecutor
from typer.testing import CliRunner

from diffv2iqa_trt.bundle import Bundle
from diffv2iqa_trt.bundle.manifest import Profiles
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.config import ScoringConfig
from diffv2iqa_trt.contract import GRAPH_NAMES
from diffv2iqa_trt.data.photos import photos
from diffv2iqa_trt.errors import BackendError, ConfigError
from diffv2iqa_trt.reference.torch_cuda import TorchCudaDevice, TorchGraphLauncher
from diffv2iqa_trt.reference.torch_executor import model_from_bundle
from diffv2iqa_trt.runtime.batching import BatchLimits
from diffv2iqa_trt.runtime.crops import ImageSizeError
from diffv2iqa_trt.runtime.device import ExecutorLauncher, HostDevice
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
from diffv2iqa_trt.runtime.pipeline import Pipeline, is_direct
from diffv2iqa_trt.runtime.sim_device import ProfileLauncher, StrictDevice
from diffv2iqa_trt.runtime.stream_pipeline import BufferPlan, StreamPipeline

runner = CliRunner()
CUDA = __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def bundle(auto_built: tuple[Bundle, str]) -> Bundle:
    return auto_built[0]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(photos(max_side=80).values())[:5]


def small_profiles(bundle: Bundle, batch: int, size: int) -> dict[str, Profiles]:
    """The bundle's profiles with the largest batch (every graph) and restoration size cut to `batch` and `size`, as a
    bundle built with --max-batch batch --max-size size would record them."""
    out = {}
    for g in GRAPH_NAMES:
        p = bundle.graph(g).profiles
        top: dict[str, tuple[int, ...]] = {}
        for name, shape in p.max.items():
            dims = list(shape)
            if name != "z":  # the noise row is broadcast: always batch 1
                dims[0] = batch
            if g == "restore_step" and len(dims) == 4:
                dims[2:] = [size, size]
            top[name] = tuple(dims)
        out[g] = dataclasses.replace(p, max=top)
    return out


def test_buffer_plan_on_numbers() -> None:
    plan = BufferPlan(batch=2, height=64, width=96, crops_per_image=4, crop_size=32, steps=5, direct=False,
                      branch_batch=3)
    shapes = plan.shapes()
    assert shapes["x"] == shapes["y_b"] == (2, 3, 64, 96)
    assert shapes["gamma"] == (5, 2) and shapes["coef"] == (5, 2, 5) and shapes["noise"] == (5, 1, 3, 64, 96)
    # 8 crops in branch batches of at most 3: 3, 3, 2.
    assert plan.chunks() == [(0, 3), (3, 6), (6, 8)]
    assert shapes["crop_t2/0"] == (3, 3, 32, 32) and shapes["crop_t2/2"] == (2, 3, 32, 32)
    assert shapes["vda/1"] == (3,) and shapes["vcg/2"] == (2,)
    images, tables = 6 * 2 * 3 * 64 * 96, 5 * 2 + 5 * 2 * 5 + 5 * 3 * 64 * 96
    assert plan.device_bytes == 4 * (images + tables + 4 * 8 * 3 * 32 * 32 + 2 * 8)
    # Steps run 4, 3, 2, 1, 0 from y_a: step 4 writes y_b, step 3 y_a, ... step 0 y_b.
    assert [plan.written_by(i) for i in (4, 3, 2, 1, 0)] == ["y_b", "y_a", "y_b", "y_a", "y_b"]
    direct = dataclasses.replace(plan, height=32, width=32, crops_per_image=1, direct=True, branch_batch=0)
    assert "crop_x/0" not in direct.shapes() and direct.crops == 2 and direct.chunks() == [(0, 2)]


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


CONFIGS = [(crops, mode) for mode in ("crops", "faithful") for crops in ("center", "five", "grid:2", "resize224")]
TOY_SEEDS = tuple(range(6))


def _restore_batches(prepared: list[list[Any]], batch: int, limits: BatchLimits, crop_size: int) -> int:
    """Restoration batches the batching rule makes: per resolution, runs of the rule's restoration batch."""
    groups: dict[tuple[int, ...], list[Any]] = {}
    for units in prepared:
        for u in units:
            groups.setdefault(u.shape, []).append(u)
    return sum(-(-len(g) // limits.restore_batch_for(batch, is_direct(g[0], crop_size))) for g in groups.values())


@pytest.mark.parametrize(("crops", "mode"), CONFIGS)
def test_orchestration_over_interleavings(bundle: Bundle, images: list[np.ndarray], crops: str, mode: str) -> None:
    """Both modes, every crop policy, streams on/off, graphs on/off, each over six interleavings on the strict device,
    through a launcher that enforces the bundle's profiles (cut to batch 3 so branch batches are split): the host
    pipeline's scores bit for bit, and no race."""
    batch = 4
    profiles = small_profiles(bundle, batch=3, size=512)
    limits = BatchLimits.from_profiles(profiles)
    spec = dataclasses.replace(bundle_pipeline(bundle).spec, crops=crops, mode=mode)
    reference = Pipeline(ToyExecutor(), spec, batch, limits=limits)
    want = [r.score for r in reference.score(images)]
    prepared = [reference.prepare(rgb) for rgb in images]
    runs = 0
    for streams in (True, False):
        for graph in (False, True):
            for seed in TOY_SEEDS:
                device = StrictDevice(seed)
                launcher = ProfileLauncher(ExecutorLauncher(ToyExecutor()), profiles)
                with StreamPipeline(device, launcher, spec, batch_size=batch, streams=streams, cuda_graph=graph,
                                    limits=limits) as pipe:
                    got = pipe.score_prepared(prepared)
                    assert len(pipe.timings) == _restore_batches(prepared, batch, limits, spec.crop_size)
                assert [r.score for r in got] == want, (streams, graph, seed)
                assert [r.crops for r in got] == [len(u) * len(u[0].boxes) for u in prepared]
                assert device.races == []
                runs += 1
                if graph and len(pipe.timings) > 2:  # slots are reused: graphs are captured and replayed
                    assert device.log["replay"] > 0 and device.log["captured"] > 0
    assert runs == 4 * len(TOY_SEEDS)


@pytest.mark.parametrize(("crops", "mode"), [("center", "crops"), ("grid:2", "faithful")])
def test_same_scores_as_the_host_pipeline_on_the_model(bundle: Bundle, images: list[np.ndarray], crops: str,
                                                       mode: str) -> None:
    """The real graphs (ONNX Runtime) through the stream pipeline on the strict device, streams and graphs on and
    off: the host pipeline's scores."""
    batch = 2
    reference = bundle_pipeline(bundle, scoring=ScoringConfig(crops=crops, mode=mode), batch_size=batch)
    imgs = images[:3]
    want = np.array([r.score for r in reference.score(imgs)])
    prepared = [reference.prepare(rgb) for rgb in imgs]
    profiles = {g: bundle.graph(g).profiles for g in GRAPH_NAMES}
    for streams, graph in ((True, True), (False, False), (True, False)):
        device = StrictDevice(7)
        launcher = ProfileLauncher(ExecutorLauncher(reference.executor), profiles)
        with StreamPipeline(device, launcher, reference.spec, batch_size=batch, streams=streams, cuda_graph=graph,
                            limits=reference.limits) as pipe:
            got = pipe.score_prepared(prepared)
        assert np.abs(np.array([r.score for r in got]) - want).max() <= 1e-6, (streams, graph)
        assert device.races == []


def test_branch_batches_stay_inside_the_profile(bundle: Bundle, images: list[np.ndarray]) -> None:
    """Faithful mode with `five` at batch 8 makes 5 crops per image; engines built for at most 4 crops must never be
    asked for more (the old pipeline sent all crops of a restoration batch at once), and restorations above the
    profile's size are that image's error."""
    spec = dataclasses.replace(bundle_pipeline(bundle).spec, crops="five", mode="faithful")
    profiles = small_profiles(bundle, batch=4, size=96)
    limits = BatchLimits.from_profiles(profiles)
    assert (limits.restore_batch, limits.branch_batch, limits.max_height) == (4, 4, 96)
    imgs = images[:3]
    want = [r.score for r in Pipeline(ToyExecutor(), spec, 8).score(imgs)]
    launcher = ProfileLauncher(ExecutorLauncher(ToyExecutor()), profiles)
    with StreamPipeline(StrictDevice(0), launcher, spec, batch_size=8, cuda_graph=True, limits=limits) as pipe:
        assert [r.score for r in pipe.score(imgs)] == want
        big = np.zeros((120, 160, 3), np.uint8)
        with pytest.raises(ImageSizeError, match="larger than the 96x96 the bundle's restore_step engine accepts"):
            pipe.prepare(big)
    branch_batches = sorted(shapes[0][0] for g in ("vcg", "vda") for shapes in launcher.shapes_seen[g])
    assert max(branch_batches) == 4 and 3 in branch_batches  # 15 crops of 3 images: 4, 4, 4, 3
    # Without the limits (branch batches of --batch-size 8, restoration batches of 3 images: 15 crops as 8 + 7), the
    # same launcher refuses them, as TensorRT's set_input_shape would.
    with pytest.raises(BackendError, match="engine does not accept x of shape \\([78], 3, 64, 64\\)"), \
            StreamPipeline(StrictDevice(0), launcher, spec, batch_size=8) as plain:
        plain.score(imgs)
    # The host pipeline follows the same rule.
    host = Pipeline(ToyExecutor(), spec, 8, limits=limits)
    assert [r.score for r in host.score(imgs)] == want
    with pytest.raises(ImageSizeError, match="rebuild the bundle with a larger --max-size"):
        host.prepare(big)


def test_a_failure_inside_a_capture_leaves_the_stream_usable(bundle: Bundle, images: list[np.ndarray]) -> None:
    """An error while the loop is being captured (a launch that fails while it is recorded) must end the capture:
    the next batches are captured, replayed and scored normally."""
    spec = dataclasses.replace(bundle_pipeline(bundle).spec, crops="center", mode="crops")
    want = [r.score for r in Pipeline(ToyExecutor(), spec, 2).score(images)]

    launcher = FailOnce(ToyExecutor(), "vda", BackendError("injected failure"))
    device = StrictDevice(0)
    pipe = StreamPipeline(device, launcher, spec, batch_size=2, cuda_graph=True)
    assert [r.score for r in pipe.score(images)] == want  # 5 images: batches 2, 2, 1: every slot's eager run
    launcher.armed = True
    with pytest.raises(BackendError, match="injected failure"):
        pipe.score(images)  # the (2, parity 0) slot is captured now: its vda launch fails mid-capture
    assert device.log["captured"] > 0 and "replay" not in device.log
    device.drain()
    assert [r.score for r in pipe.score(images)] == want
    assert [r.score for r in pipe.score(images)] == want
    assert device.log["replay"] >= 2


def test_torch_launcher_matches_the_torch_reference(bundle: Bundle, images: list[np.ndarray]) -> None:
    """The torch-cuda backend's launcher, run on the CPU (strict device) against the torch reference pipeline: the
    first run is eager, the second is captured and replayed. (The tiny model costs seconds per image in torch here.)"""
    reference = bundle_pipeline(bundle, "torch", scoring=ScoringConfig(crops="center"), batch_size=1)
    want = reference.score(images[:1])[0].score
    launcher = TorchGraphLauncher(model_from_bundle(bundle))
    device = StrictDevice(0)
    with StreamPipeline(device, launcher, reference.spec, batch_size=1, cuda_graph=True) as pipe:
        for _ in range(2):
            assert abs(pipe.score(images[:1])[0].score - want) <= 1e-6
    assert device.log["replay"] == 1 and device.races == []


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


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is visible to torch: this test is about machines without one")
def test_torch_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        TorchCudaDevice()


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is visible to torch: this test is about machines without one")
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
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible to torch")
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
    stream = report.backends["host-stream"]
    stages = stream.single_stream.stage_mean_s
    assert {"host-to-device", "restoration steps", "VCG + VDA", "device-to-host"} <= set(stages)
    assert stages["restoration steps"] > 0 and stages["VCG + VDA"] > 0
    assert [o.batch for o in stream.offline] == [1, 2] and all(o.crops_per_s > 0 for o in stream.offline)
    assert "host-stream" not in report.roofline.backends and "onnxruntime" in report.roofline.backends


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is visible to torch: this test is about machines without one")
def test_bench_cli_on_a_gpu_backend_without_a_gpu(bundle: Bundle, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--bundle", str(bundle.root), "--backends", "onnxruntime,torch-cuda",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output, result.output


def test_close_releases_the_launcher_and_the_device_once(bundle: Bundle, images: list[np.ndarray]) -> None:
    spec = dataclasses.replace(bundle_pipeline(bundle).spec, crops="center", mode="crops")
    closed: list[str] = []

    class Tracked(ExecutorLauncher):
        def close(self) -> None:
            closed.append("launcher")

    class TrackedDevice(StrictDevice):
        def close(self) -> None:
            closed.append("device")
            super().close()

    with StreamPipeline(TrackedDevice(0), Tracked(ToyExecutor()), spec, batch_size=2, cuda_graph=True) as pipe:
        pipe.score(images[:3])
        assert pipe._slots
    assert closed == ["launcher", "device"] and not pipe._slots
    pipe.close()  # idempotent
    assert closed == ["launcher", "device"]
    with pytest.raises(ConfigError, match="was closed"):
        pipe.score(images[:1])

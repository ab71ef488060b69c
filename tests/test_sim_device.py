"""The strict simulated device (runtime/sim_device.py) on its own, and checking the checker: copies of the stream
pipeline with one event wait removed, or a staging buffer released early, must be caught."""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

import numpy as np
import pytest
from toy_graphs import FailOnce, ToyExecutor

from diffv2iqa_trt.config import ScoringConfig, tiny_config
from diffv2iqa_trt.data.photos import photos
from diffv2iqa_trt.runtime import stream_pipeline
from diffv2iqa_trt.runtime.device import ExecutorLauncher, Launch
from diffv2iqa_trt.runtime.pipeline import Pipeline, PipelineSpec
from diffv2iqa_trt.runtime.sim_device import DeviceOrderError, StrictDevice


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(photos(max_side=80).values())[:4]


def spec(crops: str = "five", mode: str = "faithful") -> PipelineSpec:
    return PipelineSpec.from_config(tiny_config(), ScoringConfig(crops=crops, mode=mode))


def test_nothing_runs_until_the_host_waits_and_streams_interleave() -> None:
    for seed in range(8):
        d = StrictDevice(seed)
        s1, s2 = d.stream(), d.stream()
        host = d.pinned((4,))
        host[:] = [1, 2, 3, 4]
        a, b = d.empty((4,)), d.empty((4,))
        d.upload(host, a, s1)
        d.upload(host, b, s2)
        assert np.isnan(a).all() and np.isnan(b).all()  # queued, not run
        d.synchronize(s1)
        assert a.tolist() == [1, 2, 3, 4]
        d.drain()
        assert b.tolist() == [1, 2, 3, 4]
        d.close()
    # Independent streams run in more than one order over the seeds.
    first_b_before_a = [seed for seed in range(8) if _b_first(seed)]
    assert 0 < len(first_b_before_a) < 8


def _b_first(seed: int) -> bool:
    d = StrictDevice(seed)
    s1, s2 = d.stream(), d.stream()
    ran: list[str] = []
    out, out2 = d.empty((1,)), d.empty((1,))

    def mark(name: str) -> Any:
        def run(*_: Any) -> None:
            ran.append(name)
        run.__name__ = name
        return run

    d.enqueue(Launch(mark("a"), (), out, s1), s1)
    d.enqueue(Launch(mark("b"), (), out2, s2), s2)
    d.drain()
    return ran == ["b", "a"]


def test_a_read_across_streams_needs_an_event_wait() -> None:
    d = StrictDevice(0, raise_races=False)
    s1, s2 = d.stream(), d.stream()
    a, b, c = d.empty((4,)), d.empty((4,)), d.empty((4,))
    d.copy(a, b, s1)
    d.copy(b, c, s2)  # reads b, written on s1, with no wait
    assert len(d.races) == 1 and "reads device#1[4], last written by copy on stream 0" in d.races[0]
    e = d.event()
    d.record(e, s1)
    d.wait(s2, e)
    d.copy(b, c, s2)  # ordered now
    d.copy(a, c, s1)  # but this write of c races with s2's write of it (no wait back)
    assert len(d.races) == 2 and "writes device#2[4]" in d.races[1]
    d.synchronize(s1)
    d.synchronize(s2)
    d.copy(c, a, s1)  # the host waited for both streams: everything before is ordered
    assert len(d.races) == 2
    with pytest.raises(DeviceOrderError, match="race: copy on stream 1 reads"):
        strict = StrictDevice(0)
        t1, t2 = strict.stream(), strict.stream()
        x, y = strict.empty((2,)), strict.empty((2,))
        strict.copy(x, y, t1)
        strict.copy(y, x, t2)


def test_a_wait_refers_to_the_latest_record_and_the_host_sees_only_finished_work() -> None:
    d = StrictDevice(3)
    s1, s2 = d.stream(), d.stream()
    host_in, host_out = d.pinned((2,)), d.pinned((2,))
    host_in[:] = [5, 6]
    a = d.empty((2,))
    e = d.event()
    d.wait(s2, e)  # never recorded yet: waits for nothing, as cudaStreamWaitEvent does
    d.upload(host_in, a, s1)
    d.record(e, s1)
    d.wait(s2, e)
    d.download(a, host_out, s2)
    d.wait_host(e)
    assert host_out.tolist() != [5, 6] or d.log.get("download") == 1
    d.synchronize(s2)
    assert host_out.tolist() == [5, 6]


def test_capture_rules() -> None:
    d = StrictDevice(0)
    s1, s2 = d.stream(), d.stream()
    a, b = d.empty((2,)), d.empty((2,))
    d.begin_capture(s1)
    for bad in (lambda: d.synchronize(s1), lambda: d.empty((2,)), lambda: d.pinned((2,)),
                lambda: d.wait_host(d.event())):
        with pytest.raises(DeviceOrderError, match="inside a graph capture|while capturing"):
            bad()
    outside = d.event()
    with pytest.raises(DeviceOrderError, match="recorded outside the capture"):
        d.wait(s1, outside)
    fork = d.event()
    d.record(fork, s1)
    d.wait(s2, fork)  # s2 joins the capture
    d.copy(a, b, s2)
    with pytest.raises(DeviceOrderError, match="never waited on by the capturing stream"):
        d.end_capture(s1)  # s2 never rejoined s1
    d.abort_capture(s1)
    d.copy(a, b, s1)  # usable again
    d.synchronize(s1)


def test_replay_runs_the_captured_work_again_with_its_dependencies() -> None:
    d = StrictDevice(5)
    s1, s2 = d.stream(), d.stream()
    host = d.pinned((3,))
    a, b, c = d.empty((3,)), d.empty((3,)), d.empty((3,))
    fork, join = d.event(), d.event()
    d.begin_capture(s1)
    d.upload(host, a, s1)
    d.record(fork, s1)
    d.wait(s2, fork)
    d.copy(a, b, s2)
    d.record(join, s2)
    d.wait(s1, join)
    d.copy(b, c, s1)
    graph = d.end_capture(s1)
    for value in (1.0, 2.0):
        host[:] = value
        d.replay(graph, s1)
        d.synchronize(s1)
        assert c.tolist() == [value] * 3
    assert d.races == [] and d.log["replay"] == 2


def test_buffers_are_held_weakly_and_copies_need_pinned_memory() -> None:
    d = StrictDevice(0)
    s = d.stream()
    a = d.empty((2,))
    with pytest.raises(DeviceOrderError, match="pageable host memory"):
        d.upload(np.zeros(2, np.float32), a, s)
    staged = d.pinned((2,))
    d.upload(staged, a, s)
    del staged  # freed before its copy ran
    with pytest.raises(DeviceOrderError, match="freed before this work ran"):
        d.synchronize(s)


def _mutant(name: str, old: str, new: str) -> types.ModuleType:
    """A copy of runtime/stream_pipeline.py with one line changed (the change must apply exactly once)."""
    source = inspect.getsource(stream_pipeline)
    assert source.count(old) == 1, old
    module = types.ModuleType(f"diffv2iqa_trt.runtime._mutant_{name}")
    module.__package__ = "diffv2iqa_trt.runtime"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.replace(old, new), f"<mutant {name}>", "exec"), module.__dict__)
    return module


def _run(module: Any, device: StrictDevice, images: list[np.ndarray], **options: Any) -> list[float]:
    pipe = module.StreamPipeline(device, ExecutorLauncher(ToyExecutor()), spec(), batch_size=2, **options)
    return [r.score for r in pipe.score(images)]


@pytest.mark.parametrize(("name", "line"), [
    ("no-fork-wait", "                d.wait(stream, slot.fork)\n"),
    ("no-join-wait", "                d.wait(loop, join)\n"),
], ids=["fork", "join"])
def test_the_strict_device_catches_a_removed_wait(images: list[np.ndarray], name: str, line: str) -> None:
    want = [r.score for r in Pipeline(ToyExecutor(), spec(), 2).score(images)]
    assert _run(stream_pipeline, StrictDevice(0), images) == want  # the real pipeline: right, no race
    mutant = _mutant(name, line, line.replace(line.strip(), "pass"))
    wrong = 0
    for seed in range(4):
        device = StrictDevice(seed, raise_races=False)
        got = _run(mutant, device, images)
        assert device.races, f"seed {seed}: the removed wait went unnoticed"
        wrong += got != want
    # Reported at every seed; and the unordered work really did run in the wrong order at some of them.
    assert wrong > 0
    with pytest.raises(DeviceOrderError, match="race: "):
        _run(mutant, StrictDevice(0), images)


def test_the_strict_device_catches_a_staging_buffer_released_early(images: list[np.ndarray]) -> None:
    """The old slot setup rebound its staging buffer per table before the synchronize, freeing the earlier ones while
    their copies were still queued."""
    mutant = _mutant("staging", "            staging.append(staged)\n", "            pass\n")
    with pytest.raises(DeviceOrderError, match="pinned buffer .* was freed before this work ran"):
        _run(mutant, StrictDevice(0), images)


def test_the_strict_device_catches_a_capture_left_open(images: list[np.ndarray]) -> None:
    """Without the abort, a failure inside a capture leaves the device capturing: the next batch fails."""
    mutant = _mutant("no-abort", "            d.abort_capture(loop)\n", "            pass\n")

    for module, survives in ((stream_pipeline, True), (mutant, False)):
        launcher = FailOnce(ToyExecutor(), "vcg", RuntimeError("injected"))
        device = StrictDevice(0)
        pipe = module.StreamPipeline(device, launcher, spec("center", "crops"), batch_size=2, cuda_graph=True)
        pipe.score(images)
        launcher.armed = True
        with pytest.raises(RuntimeError, match="injected"):
            pipe.score(images)
        if survives:
            assert len(pipe.score(images)) == len(images)
        else:
            with pytest.raises(DeviceOrderError, match="while capturing|already in progress"):
                pipe.score(images)

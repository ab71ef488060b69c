"""A strict simulated device: the stream pipeline's `Device` on the CPU, adversarial enough to catch on the CPU what a
GPU would (ordering bugs, races, work inside a capture that a CUDA graph forbids, shapes outside the profiles).

`HostDevice` (device.py) runs every call at once, in program order, so a missing event wait cannot show. Here:
- **Asynchrony.** Every copy, launch and event record is queued on its stream; nothing runs when it is enqueued. Work
  runs only when the host waits (`synchronize`, `wait_host`) or the device is drained, and then in a seeded random
  interleaving that honours only each stream's order and its event waits (a wait holds its stream until the record it
  waits for has run; CUDA semantics: the latest record at the time of the wait). A missing wait therefore lets a branch
  read a buffer before the loop wrote it, or the host read scores before they arrive: the scores change.
- **Races.** Each buffer use is checked when it is enqueued with vector clocks (stream order, event record/wait, host
  synchronisation): a read or write of memory last written (or read, for a write) on another stream with no chain of
  waits in between is reported in `races` (and raised at once with `raise_races=True`), whatever the interleaving.
- **Memory.** The device holds its buffers weakly, as a GPU does: a host staging buffer (or device buffer) freed before
  the copy that uses it ran is an error. Host copies must use page-locked buffers from `pinned`.
- **Capture.** While a stream captures, its work (and that of streams that join it through events) is recorded as a
  graph; `synchronize`, `wait_host`, `elapsed_ms`, `empty` and `pinned` are errors, as is waiting on an event recorded
  outside the capture or ending a capture with a stream that never rejoined. A replay re-enqueues the graph's work on
  fresh internal streams with the same dependencies, so replays are interleaved and race-checked too.
A launcher may have a host side: `before_enqueue(graph, inputs, out, stream)` runs when the launch is enqueued (as
TensorRT's shape checks and enqueue call do on the host), the graph itself when the device runs it.
`ProfileLauncher` wraps a launcher and refuses any input shape outside the bundle's profile, on the host side,
exactly where TensorRT's `set_input_shape` would (HostDevice runs the host side at enqueue too).
"""

from __future__ import annotations

import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import GRAPH_INPUTS
from ..errors import BackendError
from .device import Launch, Launcher


class DeviceOrderError(RuntimeError):
    """An orchestration error a GPU would punish: a race, a freed buffer in use, a sync inside a capture."""


# ------------------------------------------------------------------------------------------------ memory regions


@dataclass(frozen=True)
class Region:
    """A buffer use, held weakly: the root allocation, where the view starts in it, and the view's layout."""

    root: weakref.ref[np.ndarray]
    root_id: int
    kind: str  # "device" or "pinned"
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype[Any]
    lo: int  # absolute byte bounds, for overlap checks
    hi: int
    label: str

    def array(self, what: str) -> np.ndarray:
        root = self.root()
        if root is None:
            raise DeviceOrderError(f"{what}: the {self.kind} buffer {self.label} was freed before this work ran (a GPU "
                                   "would read or write released memory): keep it alive until an event or "
                                   "synchronize says the work is done")
        view: np.ndarray = np.ndarray(self.shape, self.dtype, buffer=root, offset=self.offset, strides=self.strides)
        return view


@dataclass
class Access:
    root_id: int
    lo: int
    hi: int
    write: bool
    stream: int
    clock: int
    label: str


# ------------------------------------------------------------------------------------------ streams, events, ops


@dataclass(eq=False)
class Op:
    label: str
    run: Callable[[], None]
    stream: SimStream
    waits_for: Op | None = None  # a wait op: the record op it waits for
    done: bool = False
    time: float | None = None


@dataclass(eq=False)
class SimStream:
    index: int
    queue: deque[Op] = field(default_factory=deque)
    clock: dict[int, int] = field(default_factory=dict)  # vector clock of the work enqueued so far


@dataclass(eq=False)
class SimEvent:
    timing: bool
    last_record: Op | None = None  # the most recent record op (what a wait or wait_host refers to)
    clock: dict[int, int] = field(default_factory=dict)
    captured_in: Capture | None = None  # recorded inside a capture (a graph node), not on the device
    record_node: int | None = None  # index of that record among the capture's nodes


@dataclass(eq=False)
class Node:
    """A captured operation: a callable that enqueues it again on mapped streams at replay."""

    stream: SimStream
    kind: str  # "work", "record", "wait"
    enqueue: Callable[[dict[int, SimStream], dict[int, SimEvent]], None]
    event: SimEvent | None = None


@dataclass(eq=False)
class Capture:
    origin: SimStream
    streams: set[int]
    nodes: list[Node] = field(default_factory=list)
    joined: set[int] = field(default_factory=set)  # node indices of records the origin waited on


@dataclass(eq=False)
class SimGraph:
    origin: int
    nodes: list[Node]
    streams: list[int]


def _bounds(a: np.ndarray) -> tuple[int, int]:
    """[first byte, past the last byte) of a view (numpy's byte_bounds, which moved between releases)."""
    start = int(a.__array_interface__["data"][0])
    if a.size == 0:
        return start, start
    low = sum(s * (n - 1) for s, n in zip(a.strides, a.shape, strict=True) if s < 0)
    high = sum(s * (n - 1) for s, n in zip(a.strides, a.shape, strict=True) if s > 0)
    return start + low, start + high + a.itemsize


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class StrictDevice:
    """runtime.device.Device with the semantics in the module docstring. `seed` picks the interleaving."""

    name = "strict"

    def __init__(self, seed: int = 0, *, raise_races: bool = True) -> None:
        self.rng = random.Random(seed)
        self.raise_races = raise_races
        self.races: list[str] = []
        self.log: dict[str, int] = {}
        self._streams: list[SimStream] = []
        self._roots: dict[int, tuple[weakref.ref[np.ndarray], str, str]] = {}
        self._accesses: dict[int, list[Access]] = {}
        self._host_clock: dict[int, int] = {}
        self._capture: Capture | None = None
        self._closed = False

    # ---------------------------------------------------------------------------------------------------- memory

    def _allocate(self, shape: tuple[int, ...], dtype: type, kind: str) -> np.ndarray:
        if self._capture is not None:
            raise DeviceOrderError(f"{'cudaMalloc' if kind == 'device' else 'cudaMallocHost'} inside a graph capture: "
                                   "allocate every buffer before capturing")
        a: np.ndarray = np.empty(shape, dtype)
        if np.issubdtype(a.dtype, np.floating):
            a.fill(np.nan)  # a buffer read before it is written shows up as NaN
        key = id(a)
        self._roots[key] = (weakref.ref(a, lambda _: self._forget(key)), kind, f"{kind}#{len(self._roots)}"
                            f"{list(shape)}")
        return a

    def _forget(self, key: int) -> None:
        self._roots.pop(key, None)
        self._accesses.pop(key, None)

    def empty(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        return self._allocate(shape, dtype, "device")

    def pinned(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        return self._allocate(shape, dtype, "pinned")

    def _region(self, a: Any, kind: str, what: str) -> Region:
        if not isinstance(a, np.ndarray):
            raise DeviceOrderError(f"{what}: {type(a).__name__} is not a buffer of this device")
        root = _root(a)
        entry = self._roots.get(id(root))
        if entry is None or entry[0]() is not root:
            where = ("pageable host memory (not from pinned())" if kind == "pinned"
                     else "memory this device did not allocate")
            raise DeviceOrderError(f"{what}: a buffer in {where}; asynchronous copies need page-locked host "
                                   "memory and device buffers from this device")
        if entry[1] != kind:
            raise DeviceOrderError(f"{what}: expected a {kind} buffer, got a {entry[1]} one ({entry[2]})")
        lo, hi = _bounds(a)
        base = root.__array_interface__["data"][0]
        return Region(entry[0], id(root), kind, a.__array_interface__["data"][0] - base, a.shape, a.strides, a.dtype,
                      lo, hi, entry[2])

    # ------------------------------------------------------------------------------------------ streams, events

    def stream(self) -> SimStream:
        s = SimStream(len(self._streams))
        self._streams.append(s)
        return s

    def event(self, timing: bool = False) -> SimEvent:
        return SimEvent(timing)

    def _capturing(self, stream: SimStream) -> bool:
        return self._capture is not None and stream.index in self._capture.streams

    def _tick(self, stream: SimStream) -> dict[int, int]:
        """Advance a stream's clock for one new op enqueued by the host (which orders it after what the host has
        already waited for)."""
        clock = stream.clock
        for k, v in self._host_clock.items():
            clock[k] = max(clock.get(k, 0), v)
        clock[stream.index] = clock.get(stream.index, 0) + 1
        return clock

    def _check(self, stream: SimStream, reads: Iterable[Region], writes: Iterable[Region], label: str) -> None:
        clock = stream.clock
        uses = [(r, False) for r in reads] + [(w, True) for w in writes]
        for region, write in uses:
            history = self._accesses.setdefault(region.root_id, [])
            for a in history:
                overlap = a.lo < region.hi and region.lo < a.hi
                if overlap and (write or a.write) and a.stream != stream.index and a.clock > clock.get(a.stream, 0):
                    self._race(f"{label} on stream {stream.index} {'writes' if write else 'reads'} "
                               f"{region.label}, last {'written' if a.write else 'read'} by {a.label} on stream "
                               f"{a.stream} with no event wait in between")
                    break  # one report per use
        for region, write in uses:
            history = self._accesses[region.root_id]
            # Forget uses every later op is ordered after (the host waited for them); keep the list short.
            history[:] = [a for a in history if a.clock > self._host_clock.get(a.stream, 0)]
            history.append(Access(region.root_id, region.lo, region.hi, write, stream.index,
                                  clock[stream.index], label))

    def _race(self, message: str) -> None:
        self.races.append(message)
        if self.raise_races:
            raise DeviceOrderError(f"race: {message}")

    def _op(self, stream: SimStream, label: str, run: Callable[[], None], reads: Iterable[Region] = (),
            writes: Iterable[Region] = ()) -> None:
        """Queue work on a stream (or record it into the capture)."""
        if self._closed:
            raise DeviceOrderError(f"{label} on a closed device")
        reads, writes = list(reads), list(writes)
        if self._capturing(stream):
            capture = self._capture
            assert capture is not None

            def again(streams: dict[int, SimStream], events: dict[int, SimEvent]) -> None:
                self._op(streams[stream.index], label, run, reads, writes)

            capture.nodes.append(Node(stream, "work", again))
            self.log["captured"] = self.log.get("captured", 0) + 1
            return
        self._tick(stream)
        self._check(stream, reads, writes, label)
        stream.queue.append(Op(label, run, stream))

    # ----------------------------------------------------------------------------------------------- copies

    def upload(self, src: np.ndarray, dst: np.ndarray, stream: SimStream) -> None:
        s, d = self._region(src, "pinned", "upload source"), self._region(dst, "device", "upload destination")
        _same(src, dst, "upload")
        self._op(stream, "upload", lambda: np.copyto(d.array("upload"), s.array("upload")), [s], [d])

    def download(self, src: np.ndarray, dst: np.ndarray, stream: SimStream) -> None:
        s, d = self._region(src, "device", "download source"), self._region(dst, "pinned", "download destination")
        _same(src, dst, "download")
        self._op(stream, "download", lambda: np.copyto(d.array("download"), s.array("download")), [s], [d])

    def copy(self, src: np.ndarray, dst: np.ndarray, stream: SimStream) -> None:
        s, d = self._region(src, "device", "copy source"), self._region(dst, "device", "copy destination")
        _same(src, dst, "copy")
        self._op(stream, "copy", lambda: np.copyto(d.array("copy"), s.array("copy")), [s], [d])

    def copy_window(self, src: np.ndarray, top: int, left: int, dst: np.ndarray, stream: SimStream) -> None:
        h, w = dst.shape[-2:]
        if src.ndim != 3 or dst.ndim != 3 or top + h > src.shape[1] or left + w > src.shape[2]:
            raise ValueError(f"window {h}x{w} at ({top}, {left}) does not fit {src.shape}")
        s = self._region(src[:, top:top + h, left:left + w], "device", "window source")
        d = self._region(dst, "device", "window destination")
        self._op(stream, "copy_window", lambda: np.copyto(d.array("copy_window"), s.array("copy_window")), [s], [d])

    def enqueue(self, work: Any, stream: SimStream) -> None:
        if not isinstance(work, Launch):
            raise DeviceOrderError("StrictDevice.enqueue takes a runtime.device.Launch (its buffers must be known "
                                   f"to check their ordering), got {type(work).__name__}")
        work.host_side()  # now, on the host; only the device side waits in the queue
        fn, label = work.fn, work.graph
        inputs = [self._region(a, "device", f"{label} input") for a in work.inputs]
        out = self._region(work.out, "device", f"{label} output")

        def run(stream: SimStream = stream) -> None:
            fn(*[r.array(label) for r in inputs], out.array(label), stream)

        # A replay re-enqueues `run` as recorded: the launch then sees the stream it was captured on, as a CUDA graph
        # node keeps the kernel's arguments.
        self._op(stream, label, run, inputs, [out])

    # ----------------------------------------------------------------------------------------------- ordering

    def record(self, event: SimEvent, stream: SimStream) -> None:
        if self._capturing(stream):
            capture = self._capture
            assert capture is not None
            event.captured_in, event.record_node = capture, len(capture.nodes)
            key = id(event)

            def again(streams: dict[int, SimStream], events: dict[int, SimEvent]) -> None:
                self.record(events.setdefault(key, SimEvent(event.timing)), streams[stream.index])

            capture.nodes.append(Node(stream, "record", again, event))
            return
        if self._capture is not None and event.captured_in is self._capture:
            raise DeviceOrderError("an event recorded inside the capture is recorded again outside it")
        self._tick(stream)
        event.clock = dict(stream.clock)
        event.captured_in = None
        op = Op("record", lambda: None, stream)  # its time is stamped when it runs (_run_until)
        event.last_record = op
        stream.queue.append(op)

    def wait(self, stream: SimStream, event: SimEvent) -> None:
        capture = self._capture
        if capture is not None and event.captured_in is capture:
            # A stream that waits on a captured event joins the capture (CUDA's fork into other streams).
            capture.streams.add(stream.index)
            if stream is capture.origin and event.record_node is not None:
                capture.joined.add(event.record_node)
            key = id(event)

            def again(streams: dict[int, SimStream], events: dict[int, SimEvent]) -> None:
                self.wait(streams[stream.index], events[key])

            capture.nodes.append(Node(stream, "wait", again))
            return
        if self._capturing(stream):
            raise DeviceOrderError("a capturing stream waits on an event recorded outside the capture (CUDA refuses "
                                   "it: record the event inside the capture, or wait before capturing)")
        if event.captured_in is not None:
            raise DeviceOrderError("a wait outside a graph on an event last recorded inside a graph capture")
        for k, v in event.clock.items():
            stream.clock[k] = max(stream.clock.get(k, 0), v)
        stream.queue.append(Op("wait", lambda: None, stream, waits_for=event.last_record))

    def _not_capturing(self, what: str) -> None:
        if self._capture is not None:
            raise DeviceOrderError(f"{what} while capturing a graph: the orchestration waits inside the capture")

    def synchronize(self, stream: SimStream) -> None:
        self._not_capturing("synchronize")
        self._run_until(lambda: not stream.queue)
        for k, v in stream.clock.items():
            self._host_clock[k] = max(self._host_clock.get(k, 0), v)

    def wait_host(self, event: SimEvent) -> None:
        self._not_capturing("wait_host")
        target = event.last_record
        if target is None:
            return
        self._run_until(lambda: target.done)
        for k, v in event.clock.items():
            self._host_clock[k] = max(self._host_clock.get(k, 0), v)

    def elapsed_ms(self, start: SimEvent, end: SimEvent) -> float:
        self._not_capturing("elapsed_ms")
        a, b = start.last_record, end.last_record
        if a is None or b is None or a.time is None or b.time is None or not (start.timing and end.timing):
            raise DeviceOrderError("elapsed_ms of an event that was not recorded, has not run, or was made without "
                                   "timing")
        return 1000.0 * (b.time - a.time)

    def _ready(self, stream: SimStream) -> bool:
        if not stream.queue:
            return False
        head = stream.queue[0]
        return head.waits_for is None or head.waits_for.done

    def _run_until(self, done: Callable[[], bool]) -> None:
        """Run queued work in a random order that honours stream order and waits, until `done()`."""
        while not done():
            ready = [s for s in self._streams if self._ready(s)]
            if not ready:
                pending = [f"stream {s.index}: {s.queue[0].label}" for s in self._streams if s.queue]
                raise DeviceOrderError(f"deadlock: nothing can run ({'; '.join(pending) or 'no work queued'})")
            stream = self.rng.choice(ready)
            op = stream.queue.popleft()
            op.run()
            op.done = True
            if op.time is None:
                op.time = time.perf_counter()
            self.log[op.label] = self.log.get(op.label, 0) + 1

    def drain(self) -> None:
        """Run everything queued (tests call it to finish work nobody waited for)."""
        self._run_until(lambda: not any(s.queue for s in self._streams))

    # ------------------------------------------------------------------------------------------------- graphs

    def begin_capture(self, stream: SimStream) -> None:
        if self._capture is not None:
            raise DeviceOrderError("a capture is already in progress")
        self._capture = Capture(stream, {stream.index})

    def end_capture(self, stream: SimStream) -> SimGraph:
        capture = self._capture
        if capture is None or capture.origin is not stream:
            raise DeviceOrderError("end_capture on a stream that is not capturing")
        self._capture = None
        for index in capture.streams - {stream.index}:
            own = [i for i, n in enumerate(capture.nodes) if n.stream.index == index]
            last = own[-1] if own else None
            if last is None or capture.nodes[last].kind != "record" or last not in capture.joined:
                raise DeviceOrderError(f"stream {index} joined the capture but its last work was never waited on by "
                                       "the capturing stream (CUDA: cudaErrorStreamCaptureUnjoined)")
        return SimGraph(stream.index, capture.nodes, sorted(capture.streams))

    def abort_capture(self, stream: SimStream) -> None:
        self._capture = None

    def replay(self, graph: SimGraph, stream: SimStream) -> None:
        """Enqueue the graph's work again on internal streams (the origin on `stream`), with the captured
        dependencies; the graph starts after `stream`'s earlier work and `stream`'s later work waits for all of it."""
        self._not_capturing("replay inside a capture")
        self.log["replay"] = self.log.get("replay", 0) + 1
        streams = {i: (stream if i == graph.origin else self.stream()) for i in graph.streams}
        start = self.event()
        self.record(start, stream)
        for s in streams.values():
            if s is not stream:
                self.wait(s, start)
        events: dict[int, SimEvent] = {}
        for node in graph.nodes:
            node.enqueue(streams, events)
        for s in streams.values():
            if s is not stream:
                end = self.event()
                self.record(end, s)
                self.wait(stream, end)

    def close(self) -> None:
        if not self._closed:
            self._capture = None
            self.drain()  # like cudaDeviceSynchronize before the streams go
            self._closed = True


def _same(src: np.ndarray, dst: np.ndarray, what: str) -> None:
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ValueError(f"{what}: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")


# ----------------------------------------------------------------------------------------------- profile limits


class ProfileLauncher:
    """A launcher that refuses input shapes outside each graph's profile (min <= shape <= max on every axis), where
    TensorRT's `set_input_shape` would, and otherwise runs `inner`. `profiles`: graph -> Profiles (the manifest's)."""

    def __init__(self, inner: Launcher, profiles: Mapping[str, Any]) -> None:
        self.inner = inner
        self.profiles = profiles
        self.name = f"profiled:{inner.name}"
        self.capturable = inner.capturable
        self.plan = getattr(inner, "plan", None)
        self.shapes_seen: dict[str, set[tuple[tuple[int, ...], ...]]] = {}

    def before_enqueue(self, graph: str, inputs: tuple[np.ndarray, ...], out: np.ndarray, stream: Any) -> None:
        """The host side of a launch (devices call it when the launch is enqueued): the profile check."""
        p = self.profiles[graph]
        for name, array in zip(GRAPH_INPUTS[graph], inputs, strict=True):
            if name not in p.min:
                continue
            lo, hi = p.min[name], p.max[name]
            if len(array.shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, array.shape, hi,
                                                                                  strict=True)):
                raise BackendError(f"the {graph} engine does not accept {name} of shape {tuple(array.shape)} "
                                   f"(its profile allows {list(lo)} to {list(hi)})")
        self.shapes_seen.setdefault(graph, set()).add(tuple(tuple(a.shape) for a in inputs))

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray, z: np.ndarray,
                     out: np.ndarray, stream: Any) -> None:
        self.inner.restore_step(x, y, gamma, coef, z, out, stream)

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray, out: np.ndarray,
            stream: Any) -> None:
        self.inner.vcg(x, y0, yt1, yt2, out, stream)

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray, out: np.ndarray,
            stream: Any) -> None:
        self.inner.vda(x, y0, yt1, yt2, out, stream)

    def close(self) -> None:
        self.inner.close()

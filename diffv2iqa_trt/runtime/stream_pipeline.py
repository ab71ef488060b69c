"""The stream pipeline: the fixed-step loop and the branch fusion kept on a device, over streams, events and optional
CUDA graphs, on any `Device` and `Launcher` (device.py).

It shares the CPU pipeline's logic (pipeline.py): the spec, work units and crop boxes, the noise bank and the fusion.
What differs is where data lives and when the host waits:
- per (batch, height, width) a slot of device buffers is planned once (`BufferPlan`): x, ping-pong y buffers, the
  starting sample, the two snapshots, the step tables gamma (T,B) and coef (T,B,k) and the noise rows (T,1,3,H,W),
  all uploaded once; step i reads entry i of each table (one allocation per step, so that every address TensorRT
  sees is aligned; no per-step copy);
- the loop runs on one stream; the snapshots after steps t1 and t2 are copied device-to-device; the last step's
  buffer is y0;
- VCG and VDA run on two streams after an event (fork) and the loop stream waits for both (join); in `crops` mode
  the restored images are the crops, otherwise each crop is cut on the device (copy_window) into branch batches of
  at most the rule's branch batch (batching.py: the engines' profiles bound every batch);
- only the scores come back (into page-locked host buffers); the fusion is on the host;
- with `cuda_graph=True` a slot's first batch runs eagerly, its second is captured (the whole loop and both branches
  as one graph) and every later one replays it; a failure during the capture ends (aborts) it, so the stream stays
  usable;
- host staging buffers live until the copies that read them are known to be done (a synchronize or an event).
- each slot exists twice and batches alternate between the two, so the host prepares (and uploads) the next batch
  while the device works on the current one.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import COEF_WIDTH
from ..errors import ConfigError
from .batching import UNLIMITED, BatchLimits
from .crops import WorkUnit
from .device import Device, Launch, Launcher, take_capture_refs
from .noise import noise_bank
from .pipeline import DEFAULT_NOISE_BANKS, ImageScore, PipelineSpec, _aggregate, check_steps, is_direct, prepare_within

IMAGE_BUFFERS = ("x", "start", "y_a", "y_b", "y_t1", "y_t2")
PER_STEP = ("gamma", "coef", "noise")  # per-step inputs: step i reads entry i (its own allocation, see _slot)
CROP_BUFFERS = ("crop_x", "crop_y0", "crop_t1", "crop_t2")
BRANCHES = ("vcg", "vda")
DEFAULT_SLOTS = 8  # (shape, parity) slots kept; each holds one batch's buffers (and graph)


@dataclass(frozen=True)
class BufferPlan:
    """The device buffers of one slot: a batch of `batch` images of height x width, `crops_per_image` crops each,
    scored in branch batches of at most `branch_batch` crops (`direct`: the restored images are the crops)."""

    batch: int
    height: int
    width: int
    crops_per_image: int
    crop_size: int
    steps: int
    direct: bool  # the restored images are the crops (crops mode): no crop buffers
    branch_batch: int = 0  # 0: all crops in one branch batch

    @property
    def crops(self) -> int:
        return self.batch * self.crops_per_image

    def chunks(self) -> list[tuple[int, int]]:
        """[start, stop) of each branch batch over the slot's crops, in crop order."""
        size = self.branch_batch or self.crops
        return [(c, min(c + size, self.crops)) for c in range(0, self.crops, size)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every buffer's shape; branch buffers are per branch batch k: `vcg/k`, `crop_x/k`, ..."""
        image = (self.batch, 3, self.height, self.width)
        out: dict[str, tuple[int, ...]] = dict.fromkeys(IMAGE_BUFFERS, image)
        out |= {"gamma": (self.steps, self.batch), "coef": (self.steps, self.batch, COEF_WIDTH),
                "noise": (self.steps, 1, 3, self.height, self.width)}
        for k, (start, stop) in enumerate(self.chunks()):
            out |= {f"{name}/{k}": (stop - start,) for name in BRANCHES}
            if not self.direct:
                out |= {f"{name}/{k}": (stop - start, 3, self.crop_size, self.crop_size) for name in CROP_BUFFERS}
        return out

    @property
    def device_bytes(self) -> int:
        return 4 * sum(int(np.prod(s)) for s in self.shapes().values())

    def written_by(self, step: int) -> str:
        """The ping-pong buffer holding y after step `step` (steps run T-1 ... 0, starting from y_a)."""
        return "y_b" if (self.steps - step) % 2 else "y_a"


@dataclass
class Slot:
    plan: BufferPlan
    boxes: tuple[tuple[int, int], ...]
    buffers: dict[str, Any]
    host_x: np.ndarray
    host_scores: dict[str, np.ndarray]
    marks: list[Any]  # timing events: before upload, uploaded, restored, device work done, downloaded
    fork: Any
    joins: tuple[Any, Any]
    graph: Any = None
    graph_refs: list[Any] = field(default_factory=list)  # what the graph's launches need alive (take_capture_refs)
    runs: int = 0


@dataclass
class StageTimes:
    """Milliseconds per stage of the last batch, from device events (wall clocks lie about asynchronous work)."""

    upload_ms: float = 0.0
    restore_ms: float = 0.0  # the loop (with graphs: loop and branches together, as one replay)
    branches_ms: float = 0.0
    download_ms: float = 0.0


@dataclass
class StreamPipeline:
    device: Device
    launcher: Launcher
    spec: PipelineSpec
    batch_size: int = 8
    streams: bool = True  # VCG and VDA on their own streams (False: everything on the loop stream)
    cuda_graph: bool = False
    max_slots: int = DEFAULT_SLOTS
    limits: BatchLimits = UNLIMITED  # the batching rule (batching.py), from the bundle's profiles
    timings: list[StageTimes] = field(default_factory=list, repr=False)
    _slots: OrderedDict[tuple[int, ...], Slot] = field(default_factory=OrderedDict, repr=False)
    _banks: OrderedDict[tuple[int, int], np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        check_steps(self.spec.steps)
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_slots < 2:  # the slot being collected and the one just submitted are both in use
            raise ConfigError(f"max_slots must be at least 2, got {self.max_slots}")
        if self.cuda_graph and not self.launcher.capturable:
            raise ConfigError(f"the {self.launcher.name} launcher cannot be captured into a CUDA graph; use "
                              "--cuda-graph off")
        d = self.device
        self.loop_stream = d.stream()
        self.branch_streams = (d.stream(), d.stream()) if self.streams else (self.loop_stream, self.loop_stream)
        self._closed = False

    # ---------------------------------------------------------------------------------------------------- buffers

    def _slot(self, units: Sequence[WorkUnit], parity: int) -> Slot:
        b = len(units)
        _, h, w = units[0].shape
        boxes = tuple(units[0].boxes)
        key = (b, h, w, parity)
        if key in self._slots:
            self._slots.move_to_end(key)
            return self._slots[key]
        s, d = self.spec, self.device
        direct = is_direct(units[0], s.crop_size)
        plan = BufferPlan(b, h, w, len(boxes), s.crop_size, s.steps, direct,
                          branch_batch=self.limits.branch_batch_for(self.batch_size))
        buffers: dict[str, Any] = {name: d.empty(shape) for name, shape in plan.shapes().items()
                                   if name not in PER_STEP}
        # Constant inputs, uploaded once per slot: start sample, step tables, noise rows.
        bank = self._bank(h, w)
        host = {"start": np.ascontiguousarray(np.broadcast_to(bank[s.steps], (b, 3, h, w)), np.float32),
                "gamma": np.ascontiguousarray(np.broadcast_to(s.gamma[:, None], (s.steps, b)), np.float32),
                "coef": np.ascontiguousarray(np.broadcast_to(s.coef[:, None, :], (s.steps, b, s.coef.shape[1])),
                                             np.float32),
                "noise": np.ascontiguousarray(bank[:-1, None], np.float32)}
        staging: list[np.ndarray] = []  # alive until the synchronize below: the copies read them asynchronously
        for name, array in host.items():
            staged = d.pinned(array.shape)
            np.copyto(staged, array)
            staging.append(staged)
            if name in PER_STEP:
                # One allocation per step row, not rows of one table: TensorRT needs every tensor address 256-byte
                # aligned, and row i of a (T, B) table starts at i*B*4 bytes.
                buffers[name] = [d.empty(array.shape[1:]) for _ in range(array.shape[0])]
                for row, dst in zip(staged, buffers[name], strict=True):
                    d.upload(row, dst, self.loop_stream)
            else:
                d.upload(staged, buffers[name], self.loop_stream)
        d.synchronize(self.loop_stream)
        del staging  # every copy that read them is done
        slot = Slot(plan, boxes, buffers, d.pinned((b, 3, h, w)),
                    {name: d.pinned((plan.crops,)) for name in BRANCHES},
                    marks=[d.event(timing=True) for _ in range(5)], fork=d.event(), joins=(d.event(), d.event()))
        self._slots[key] = slot
        while len(self._slots) > self.max_slots:
            self._slots.popitem(last=False)  # the oldest slot: its last batch was collected, nothing uses it
        return slot

    def _bank(self, height: int, width: int) -> np.ndarray:
        """The host noise bank of a resolution, made once for both slots of every batch size of that resolution."""
        key = (height, width)
        if key not in self._banks:
            self._banks[key] = noise_bank(self.spec.noise_seed, self.spec.steps, height, width)
            while len(self._banks) > DEFAULT_NOISE_BANKS:
                self._banks.popitem(last=False)
        self._banks.move_to_end(key)
        return self._banks[key]

    # ------------------------------------------------------------------------------------------------------- work

    def _device_work(self, slot: Slot, eager: bool) -> None:
        """Everything between the upload of x and the download of the scores: what a CUDA graph captures (then the
        timing mark between loop and branches is left out: a replay is timed as a whole)."""
        d, la, s, buf, plan = self.device, self.launcher, self.spec, slot.buffers, slot.plan
        loop = self.loop_stream
        d.copy(buf["start"], buf["y_a"], loop)
        for i in reversed(range(s.steps)):
            src = "y_a" if (s.steps - 1 - i) % 2 == 0 else "y_b"
            dst = plan.written_by(i)
            d.enqueue(Launch(la.restore_step, (buf["x"], buf[src], buf["gamma"][i], buf["coef"][i],
                                               buf["noise"][i]), buf[dst], loop), loop)
            if i == s.capture_t1:
                d.copy(buf[dst], buf["y_t1"], loop)
            if i == s.capture_t2:
                d.copy(buf[dst], buf["y_t2"], loop)
        y0 = buf[plan.written_by(0)]
        chunks = plan.chunks()
        if plan.direct:  # one branch batch: the restoration batch is capped by the branches (batching.py)
            batches = [(buf["x"], y0, buf["y_t1"], buf["y_t2"])]
        else:
            batches = [tuple(buf[f"{n}/{k}"] for n in CROP_BUFFERS) for k in range(len(chunks))]
            size = chunks[0][1] - chunks[0][0]
            for j in range(plan.batch):
                for m, (top, left) in enumerate(slot.boxes):
                    c = j * plan.crops_per_image + m
                    for src_buf, dst in zip((buf["x"], y0, buf["y_t1"], buf["y_t2"]), batches[c // size],
                                            strict=True):
                        d.copy_window(src_buf[j], top, left, dst[c % size], loop)
        if eager:
            d.record(slot.marks[2], loop)
        d.record(slot.fork, loop)
        branches = [(la.vcg, "vcg", self.spec.vcg_weight), (la.vda, "vda", self.spec.vda_weight)]
        for (launch, name, weight), stream, join in zip(branches, self.branch_streams, slot.joins, strict=True):
            if weight == 0:
                continue
            if stream is not loop:
                d.wait(stream, slot.fork)
            for k, inputs in enumerate(batches):
                d.enqueue(Launch(launch, inputs, buf[f"{name}/{k}"], stream), stream)
            if stream is not loop:
                d.record(join, stream)
                d.wait(loop, join)

    def _capture(self, slot: Slot) -> None:
        """Capture the slot's device work as a graph; on any failure the capture is ended and discarded, so the loop
        stream is usable again (a stream left capturing fails every later call)."""
        d, loop = self.device, self.loop_stream
        d.begin_capture(loop)
        try:
            self._device_work(slot, eager=False)
            slot.graph = d.end_capture(loop)
        except BaseException:
            d.abort_capture(loop)
            raise
        finally:
            refs = take_capture_refs(self.launcher)  # taken even after a failure: a later capture starts clean
        slot.graph_refs = refs

    def _submit(self, units: Sequence[WorkUnit], parity: int) -> Slot:
        """Upload a batch and enqueue its device work; returns without waiting for the device."""
        d, loop = self.device, self.loop_stream
        slot = self._slot(units, parity)
        for row, unit in zip(slot.host_x, units, strict=True):  # straight into page-locked memory, no stacked copy
            np.copyto(row, unit.x)
        d.record(slot.marks[0], loop)
        d.upload(slot.host_x, slot.buffers["x"], loop)
        d.record(slot.marks[1], loop)
        if not self.cuda_graph or slot.runs == 0:
            self._device_work(slot, eager=True)  # the first run of a slot is always eager
        else:
            if slot.graph is None:
                self._capture(slot)
            d.replay(slot.graph, loop)
        d.record(slot.marks[3], loop)
        for name in BRANCHES:
            host = slot.host_scores[name]
            for k, (start, stop) in enumerate(slot.plan.chunks()):
                d.download(slot.buffers[f"{name}/{k}"], host[start:stop], loop)
        d.record(slot.marks[4], loop)
        slot.runs += 1
        return slot

    def _collect(self, slot: Slot) -> tuple[np.ndarray, np.ndarray]:
        d = self.device
        m = slot.marks
        d.wait_host(m[4])  # this batch only: the next one, already submitted, keeps the device busy
        graph_run = self.cuda_graph and slot.graph is not None
        self.timings.append(StageTimes(
            upload_ms=d.elapsed_ms(m[0], m[1]),
            restore_ms=d.elapsed_ms(m[1], m[3] if graph_run else m[2]),
            branches_ms=0.0 if graph_run else d.elapsed_ms(m[2], m[3]),
            download_ms=d.elapsed_ms(m[3], m[4])))
        n = slot.plan.crops
        vcg = slot.host_scores["vcg"].copy() if self.spec.vcg_weight else np.full(n, np.nan, np.float32)
        vda = slot.host_scores["vda"].copy() if self.spec.vda_weight else np.full(n, np.nan, np.float32)
        return vcg, vda

    # ----------------------------------------------------------------------------------------------------- scores

    @property
    def executor(self) -> Launcher:
        """The launcher, under the name the host pipeline uses (scorers read its `name` and `plan`)."""
        return self.launcher

    def prepare(self, rgb: np.ndarray) -> list[WorkUnit]:
        """One decoded image's work units (ImageSizeError for an image the crop rules or the limits refuse)."""
        return prepare_within(rgb, self.spec, self.limits)

    def score(self, images: Sequence[np.ndarray]) -> list[ImageScore]:
        return self.score_prepared([self.prepare(rgb) for rgb in images])

    def crop_scores(self, units: Sequence[tuple[int, WorkUnit]]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Like Pipeline.crop_scores: (owning image of each crop, VCG per crop, VDA per crop). Batches of one
        resolution go to the device one after the other, the next submitted before the current is collected."""
        if self._closed:
            raise ConfigError("this stream pipeline was closed; make a new one")
        by_shape: dict[tuple[int, ...], list[tuple[int, WorkUnit]]] = defaultdict(list)
        for item in units:
            by_shape[item[1].shape].append(item)
        chunks = []
        for group in by_shape.values():
            size = self.limits.restore_batch_for(self.batch_size, is_direct(group[0][1], self.spec.crop_size))
            chunks += [group[i:i + size] for i in range(0, len(group), size)]
        owners: list[int] = []
        vcg_all: list[np.ndarray] = []
        vda_all: list[np.ndarray] = []
        pending: tuple[list[tuple[int, WorkUnit]], Slot] | None = None
        for n, chunk in enumerate([*chunks, None]):
            submitted = None if chunk is None else (chunk, self._submit([u for _, u in chunk], n % 2))
            if pending is not None:
                done, slot = pending
                vcg, vda = self._collect(slot)
                vcg_all.append(vcg)
                vda_all.append(vda)
                owners += [owner for owner, unit in done for _ in unit.boxes]
            pending = submitted
        if not vcg_all:
            return owners, np.zeros(0, np.float32), np.zeros(0, np.float32)
        return owners, np.concatenate(vcg_all), np.concatenate(vda_all)

    def score_prepared(self, prepared: Sequence[Sequence[WorkUnit]]) -> list[ImageScore]:
        if not prepared:
            return []
        owners, vcg, vda = self.crop_scores([(index, u) for index, units in enumerate(prepared) for u in units])
        return _aggregate(owners, vcg, vda, len(prepared), self.spec.vcg_weight, self.spec.vda_weight)

    # -------------------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Drop the slots (buffers and graphs), then close the launcher and the device; idempotent. Graphs go before
        the launcher's contexts and the device's streams they point at."""
        if self._closed:
            return
        self._closed = True
        self._slots.clear()
        self._banks.clear()
        self.launcher.close()
        self.device.close()

    def __enter__(self) -> StreamPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

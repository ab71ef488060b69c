"""`score_dataset`: score every image of a folder, list or table on Ray Data and write the results in parts.

The driver lists the paths (dropping duplicates and those already in the output under the same bundle and settings),
hands them to Ray in blocks of whole batches, and consumes the scored rows as a stream (`iter_batches`): each part is
written, atomically, as soon as it has `part_rows` rows or `part_seconds` have passed, so the driver holds at most
one part of results, and Ray's streaming executor bounds what is in flight between the stages (backpressure).

Ray is imported only here (an optional extra); without it the call raises a DependencyError that says how to install
it. A local Ray instance is started for the run unless `address` names a cluster (or Ray is already initialised, as
in the tests); only an instance started here is shut down here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import load_bundle, sha256_file
from ..config import ScoringConfig
from ..errors import EXIT_FAILED, ConfigError, DependencyError, DiffV2IQAError
from ..runtime.backends import STREAM_BACKENDS
from ..runtime.images import DEFAULT_MAX_PIXELS, check_max_pixels
from ..runtime.pipeline import PipelineSpec
from ..scorers import ScoreOptions, check_options, choose_backend
from .inputs import DEFAULT_PATH_COLUMN, iter_paths, source_kind
from .local_ray import private_root, quiet_ray_data_console, session_logs, start_local_ray, stop_local_ray
from .output import (
    FORMATS,
    PartWriter,
    ScoringKey,
    arrow_schema,
    check_free_space,
    check_part_format,
    estimate_output_bytes,
    make_output_folder,
    output_lock,
    remove_temporary_parts,
    resume_index,
)
from .stages import BundleScorer, CropRules, decode_and_crop

INSTALL_HINT = "score-dataset runs on Ray Data: pip install 'diffv2iqa-trt[ray]' (or pip install 'ray[data]>=2.40,<3')"
DEFAULT_PART_ROWS = 1000
DEFAULT_PART_SECONDS = 60.0
MAX_BATCHES_PER_BLOCK = 16  # an Arrow block of the path list holds at most this many batches...
BLOCKS_PER_WORKER = 8  # ...and there are at least this many blocks per worker where the list is long enough


class ScaleJobError(DiffV2IQAError, RuntimeError):
    """The Ray job failed (a worker could not open the bundle, the cluster went away, ...). Parts written before the
    failure are kept; re-running the same command resumes."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class DatasetOptions:
    workers: int = 1  # scoring actors (each loads the bundle once)
    batch_size: int = 16  # images per batch handed to a stage
    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001", ...); None: a local one for this run
    fmt: str = "parquet"  # of the parts: parquet or csv
    path_column: str = DEFAULT_PATH_COLUMN
    part_rows: int = DEFAULT_PART_ROWS
    part_seconds: float = DEFAULT_PART_SECONDS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_parts: int | None = None  # stop after writing this many parts (a bounded run; the next one resumes)
    local_cpus: int | None = None  # logical CPUs of the local Ray instance (default: enough for the workers)


@dataclass(frozen=True)
class RunProgress:
    total: int  # images to score in this run
    done: int  # rows written so far in this run
    failed: int  # of which errors
    parts: int


@dataclass(frozen=True)
class DatasetSummary:
    out: Path
    key: ScoringKey
    listed: int  # paths in the source
    duplicates: int  # listed again after their first occurrence (scored once)
    skipped: int  # already in the output under the same key
    scored: int  # rows written by this run
    failed: int  # of which errors
    parts: int  # parts written by this run
    remaining: int  # images left for a later run (max_parts reached)
    seconds: float  # the whole run, Ray start-up included
    startup_seconds: float  # from the start until the first result arrived
    workers: int
    gpus_per_worker: float

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["images_per_s"] = self.images_per_s
        return d


def settings_text(score: ScoreOptions) -> str:
    """The settings that change a score, as stored in every row (with a fully resolved `score`)."""
    return (f"backend={score.backend} precision={score.precision or 'bundle'} device={score.device} "
            f"crops={score.crops} mode={score.mode} seed={score.seed}")


def _check(score: ScoreOptions, o: DatasetOptions) -> None:
    if score.bundle is None:
        raise ConfigError("score-dataset needs --bundle (build one with `diffv2iqa-trt build`); every worker loads it")
    check_options(score)
    for name, value in (("--workers", o.workers), ("--batch-size", o.batch_size), ("--part-rows", o.part_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if o.max_parts is not None and (isinstance(o.max_parts, bool) or o.max_parts < 1):
        raise ConfigError(f"--max-parts must be a positive integer, got {o.max_parts!r}")
    if not (isinstance(o.part_seconds, (int, float)) and math.isfinite(o.part_seconds) and o.part_seconds > 0):
        raise ConfigError(f"part_seconds must be a positive number of seconds, got {o.part_seconds!r}")
    if o.fmt not in FORMATS:
        raise ConfigError(f"unknown output format {o.fmt!r}; use {' or '.join(FORMATS)} (--format)")
    check_max_pixels(o.max_pixels)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise DependencyError(f"Ray is not installed; {INSTALL_HINT}") from None
    return ray


def resolve(score: ScoreOptions) -> tuple[ScoreOptions, CropRules, ScoringKey]:
    """The options with the bundle's defaults filled in (what every worker opens), the crop rules and the run's key.

    The bundle is loaded and its files' hashes checked here, once, before any worker starts."""
    assert score.bundle is not None
    bundle = load_bundle(score.bundle)
    p = bundle.manifest.pipeline
    scoring = ScoringConfig(crops=score.crops or p.crops, mode=score.mode or p.mode,
                            noise_seed=p.noise.seed if score.seed is None else score.seed)
    gpu_stream = score.backend in STREAM_BACKENDS
    resolved = dataclasses.replace(
        score, bundle=Path(os.path.abspath(score.bundle)), backend=choose_backend(score.backend, score.bundle),
        crops=scoring.crops, mode=scoring.mode, seed=scoring.noise_seed,
        device="cuda" if gpu_stream else score.device,
        threads=None if gpu_stream else (score.threads or 1))  # a CPU actor uses its own cores, not all of them
    rules = CropRules.of(PipelineSpec.from_manifest(p, scoring))
    # The manifest lists the sha256 of every file of the bundle: its own hash stands for the whole bundle.
    key = ScoringKey(sha256_file(bundle.manifest_path), settings_text(resolved))
    return resolved, rules, key


def gpus_per_worker(score: ScoreOptions) -> float:
    return 1.0 if score.backend in STREAM_BACKENDS or score.device in ("cuda", "tensorrt") else 0.0


def score_dataset(source: str | os.PathLike[str], out: str | os.PathLike[str], score: ScoreOptions,
                  options: DatasetOptions = DatasetOptions(), *,
                  progress: Callable[[RunProgress], None] | None = None) -> DatasetSummary:
    """Score every image of `source` (a folder tree, a .txt/.csv list of paths or a .parquet table with a path
    column) into parts under the folder `out`; images already there under the same bundle and settings are skipped.

    Raises ConfigError (bad options, input or output), BundleError, DependencyError (Ray missing) or ScaleJobError
    (the Ray job failed; what was written stays and a re-run resumes). A file that cannot be scored is a row with
    its error, not an exception. `progress` is called after each part."""
    started = time.monotonic()
    _check(score, options)
    source_kind(Path(source))  # a missing source is refused before anything is created
    ray = _import_ray()
    resolved, rules, key = resolve(score)
    out_dir = Path(out)
    # Before Ray starts: the folder is writable, its lock a plain file, its parts of this format, the disk has room.
    created = make_output_folder(out_dir)
    with output_lock(out_dir) as lock:
        writer = PartWriter(out_dir, options.fmt)
        try:
            check_part_format(out_dir, options.fmt)
            remove_temporary_parts(out_dir)
            index = resume_index(out_dir, key)
            listed, duplicates, skipped, paths = _pending_paths(source, options, index.done)
            del index  # the done set is no longer needed
            total = len(paths)
            gpus = gpus_per_worker(resolved)
            summary = DatasetSummary(out=out_dir, key=key, listed=listed, duplicates=duplicates, skipped=skipped,
                                     scored=0, failed=0, parts=0, remaining=total, seconds=0.0, startup_seconds=0.0,
                                     workers=options.workers, gpus_per_worker=gpus)
            if total == 0:
                return dataclasses.replace(summary, seconds=time.monotonic() - started)
            now = total if options.max_parts is None else min(total, options.max_parts * options.part_rows)
            check_free_space(out_dir, estimate_output_bytes(paths[:now], math.ceil(now / options.part_rows)), now)
            with _ray_session(ray, options, resolved):
                return _run(ray, paths, resolved, rules, key, options, writer, summary, started, progress)
        except BaseException:
            if writer.written == 0:  # a failed start leaves the folder as it found it
                lock.discard(created)
            raise


def _pending_paths(source: str | os.PathLike[str], options: DatasetOptions,
                   done: set[bytes]) -> tuple[int, int, int, list[bytes]]:
    """(listed, duplicates, skipped, the paths to score in the source's order). Only path bytes are kept: about
    100 bytes per image in the driver, never pixels."""
    seen: set[bytes] = set()
    order: list[bytes] = []
    listed = duplicates = skipped = 0
    for raw in iter_paths(source, options.path_column):
        listed += 1
        if raw in done:
            skipped += 1
        elif raw in seen:
            duplicates += 1
        else:
            seen.add(raw)
            order.append(raw)
    if listed == 0:
        raise ConfigError(f"no images found in {source}")
    return listed, duplicates, skipped, order


def block_count(images: int, options: DatasetOptions) -> int:
    """Blocks of whole batches: enough blocks to keep every worker busy, not so many that Ray's bookkeeping grows."""
    b = options.batch_size
    rows = b * min(MAX_BATCHES_PER_BLOCK, max(1, images // (b * options.workers * BLOCKS_PER_WORKER)))
    return max(1, math.ceil(images / rows))


@contextlib.contextmanager
def _ray_session(ray: Any, options: DatasetOptions, score: ScoreOptions) -> Iterator[None]:
    """Ray for the run: the caller's instance if Ray is already initialised (left as it is), else the cluster at
    `address`, else a local instance for this run (loopback only, see local_ray). Only what is started here is shut
    down here."""
    if ray.is_initialized():
        yield
        return
    if options.address is not None:  # the cluster's own settings hold (Ray Client refuses some local ones)
        try:
            ray.init(address=options.address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ScaleJobError(f"cannot reach the Ray cluster at {options.address!r} ({exc}); start it (`ray "
                                "start --head`) or check --address") from None
        try:
            quiet_ray_data_console()
            yield
        finally:
            ray.shutdown()
        return
    # Logical CPUs: every actor holds its own, and the decoding tasks need at least one more to run at all.
    per_worker = 1 if score.threads is None else score.threads
    cpus = options.local_cpus or max(os.cpu_count() or 1, options.workers * per_worker + 1)
    root = private_root()
    try:
        start_local_ray(ray, cpus, root)
    except BaseException as exc:
        logs = session_logs(root)
        if isinstance(exc, DiffV2IQAError) or not isinstance(exc, Exception) or not logs.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiffV2IQAError):  # Ray's own errors
            where = f"Ray's logs are in {logs} (remove {root} after reading them)" if logs.is_dir() else \
                "Ray wrote no logs"
            raise ScaleJobError(f"the local Ray instance did not start: {_first_line(exc)}; nothing was scored; "
                                f"{where}; or start Ray yourself (`ray start --head`) and pass --address") from None
        raise
    try:
        quiet_ray_data_console()
        yield
    finally:
        stop_local_ray(ray, root)


def _run(ray: Any, paths: list[bytes], score: ScoreOptions, rules: CropRules, key: ScoringKey,
         options: DatasetOptions, writer: PartWriter, summary: DatasetSummary, started: float,
         progress: Callable[[RunProgress], None] | None) -> DatasetSummary:
    import pyarrow as pa

    total = len(paths)
    pending = set(paths)
    gpus = summary.gpus_per_worker
    # from_items builds the blocks in the driver (one binary column, `item`) and puts them in the object store.
    ds = ray.data.from_items(paths, override_num_blocks=block_count(total, options))
    del paths
    ds = ds.map_batches(decode_and_crop, fn_kwargs={"rules": rules, "max_pixels": options.max_pixels},
                        batch_size=options.batch_size, batch_format="pyarrow", num_cpus=1)
    ds = ds.map_batches(BundleScorer, fn_constructor_kwargs={"options": score, "rules": rules},
                        compute=ray.data.ActorPoolStrategy(size=options.workers), batch_size=options.batch_size,
                        batch_format="pyarrow", num_cpus=score.threads or 1, num_gpus=gpus or None)
    schema = arrow_schema()
    held: list[Any] = []
    held_rows = 0
    written = failed = 0
    first_result: float | None = None
    last_write = time.monotonic()

    def write(rows: int) -> None:
        """Write the first `rows` held rows as one part (and keep the rest)."""
        nonlocal held, held_rows, last_write
        table = pa.concat_tables(held)
        part, rest = table.slice(0, rows), table.slice(rows)
        n = part.num_rows
        part = part.drop_columns(["path_bytes"]).append_column(
            "bundle_sha256", pa.array([key.bundle_sha256] * n, pa.string())).append_column(
            "settings", pa.array([key.settings] * n, pa.string()))
        try:
            writer.write(part.select(schema.names).cast(schema))
        except OSError as exc:
            fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
            raise ScaleJobError(f"cannot write a result part in {writer.out} ({exc.strerror or exc}); the "
                                f"{writer.written} parts written before are complete and kept: {fix} and run the "
                                "same command again to resume") from None
        held, held_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        last_write = time.monotonic()
        if progress is not None:
            progress(RunProgress(total, written, failed, writer.written))

    def stop() -> bool:
        return options.max_parts is not None and writer.written >= options.max_parts

    for batch in _results(ds):
        if first_result is None:
            first_result = time.monotonic()
        # A row whose path is not pending was delivered already (a retried batch, seen twice): drop it.
        raws = batch.column("path_bytes").to_pylist()
        keep = [raw in pending for raw in raws]
        pending.difference_update(raws)
        if not all(keep):
            batch = batch.filter(pa.array(keep))
        if batch.num_rows == 0:
            continue
        held.append(batch)
        held_rows += batch.num_rows
        while held_rows >= options.part_rows and not stop():
            written += options.part_rows
            failed += _failures(held, options.part_rows)
            write(options.part_rows)
        if stop():
            break
        if held_rows and time.monotonic() - last_write >= options.part_seconds:
            written += held_rows
            failed += _failures(held, held_rows)
            write(held_rows)
            if stop():
                break
    else:
        if held_rows:
            written += held_rows
            failed += _failures(held, held_rows)
            write(held_rows)
    now = time.monotonic()
    return dataclasses.replace(summary, scored=written, failed=failed, parts=writer.written, remaining=total - written,
                               seconds=now - started, startup_seconds=(first_result or now) - started)


def _failures(held: list[Any], rows: int) -> int:
    """Errors among the first `rows` held rows."""
    failed = 0
    for table in held:
        statuses = table.column("status").to_pylist()[:rows]
        failed += sum(status != "ok" for status in statuses)
        rows -= len(statuses)
        if rows <= 0:
            break
    return failed


def _results(ds: Any) -> Iterator[Any]:
    """The dataset's output blocks as they arrive; a failure of the Ray job becomes a ScaleJobError."""
    it = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:  # Ray's errors wrap the worker's; the first line of the cause is what matters
            raise ScaleJobError(f"the Ray job failed: {_first_line(exc)}; the parts written so far are complete and "
                                "kept: fix the cause and run the same command again to resume") from exc
        yield batch


def _first_line(exc: BaseException) -> str:
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip() or type(cause).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else text}"

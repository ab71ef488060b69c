"""score-dataset under hostile input (issue 22: cases 4, 8, 10, 11c, new-user 7), without starting Ray: the bundle and
Ray are replaced by fakes that record what the run asks of them; one slow test starts a real local Ray and looks at
what it listens on."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
import threading
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffv2iqa_trt.cli import app
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.scale import DatasetOptions, ScoringKey, score_dataset
from diffv2iqa_trt.scale.inputs import iter_paths
from diffv2iqa_trt.scale.output import LOCK_NAME, PartWriter, arrow_schema, output_lock, part_files, resume_index
from diffv2iqa_trt.scale.stages import CropRules, decode_and_crop, result_schema
from diffv2iqa_trt.scorers import ScoreOptions

runner = CliRunner()
KEY = ScoringKey("ab" * 32, "backend=onnxruntime precision=bundle device=cpu crops=center mode=crops seed=0")
RULES = CropRules("center", "crops", 224, 16)


class FakeRay:
    """A Ray that "scores" every listed path (0.5, or an error for a name containing `bad`) and records what it was
    asked; `initialized=False` makes the run start it (init/shutdown recorded with the environment they saw)."""

    def __init__(self, initialized: bool = True) -> None:
        self.initialized = initialized
        self.data = self
        self.util = self
        self.node_ip = "127.0.0.1"
        self.items: list[bytes] | None = None  # None: no Ray job was built
        self.init_calls: list[dict[str, Any]] = []
        self.shutdowns = 0
        self.fail_start: Exception | None = None

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        temp = Path(kwargs["_temp_dir"]) if "_temp_dir" in kwargs else None
        self.init_calls.append({"kwargs": kwargs, "env": dict(os.environ),
                                "temp_parent_mode": stat.S_IMODE(temp.parent.stat().st_mode) if temp else None})
        # What Ray 2.60 says on every local start where RAY_AUTH_MODE is unset:
        logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
            "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        if self.fail_start is not None:
            assert temp is not None
            (temp / "session_latest" / "logs").mkdir(parents=True)
            raise self.fail_start
        self.initialized = True

    def get_node_ip_address(self) -> str:
        return self.node_ip

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def ActorPoolStrategy(self, size: int) -> dict[str, int]:  # noqa: N802 - Ray's name
        return {"size": size}

    def from_items(self, items: list[bytes], override_num_blocks: int) -> FakeRay:
        self.items = list(items)
        return self

    def map_batches(self, fn: object, **kwargs: object) -> FakeRay:
        return self

    def iter_batches(self, **kwargs: object) -> Iterator[pa.Table]:
        assert self.items is not None
        for start in range(0, len(self.items), 2):
            raws = self.items[start:start + 2]
            bad = [b"bad" in raw for raw in raws]
            yield pa.table({
                "path_bytes": pa.array(raws, pa.binary()), "path": [os.fsdecode(r) for r in raws],
                "score": [None if b else 0.5 for b in bad], "vcg": [None if b else 0.4 for b in bad],
                "vda": [None if b else 0.6 for b in bad], "crops": pa.array([0 if b else 1 for b in bad], pa.int32()),
                "status": ["error" if b else "ok" for b in bad],
                "error": ["file not found" if b else None for b in bad],
                "path_bytes_hex": pa.array([None] * len(raws), pa.string())}, schema=result_schema())


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    """A fake Ray and a fake bundle (resolve is the only thing that opens it)."""
    fake = FakeRay()
    monkeypatch.setattr("diffv2iqa_trt.scale.job._import_ray", lambda: fake)
    options = ScoreOptions(bundle=Path("/models/bundle"), backend="onnxruntime", crops="center", mode="crops",
                           seed=0, threads=1)
    monkeypatch.setattr("diffv2iqa_trt.scale.job.resolve", lambda score: (options, RULES, KEY))
    return fake


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A list of 6 paths (their files are never opened: the fake Ray scores them); 2 named `bad` fail."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/img{i}.png\n" for i in range(4)) + f"{tmp_path}/bad1.png\n"
                       f"{tmp_path}/bad2.png\n")
    return listing


def _verb(source: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["score-dataset", str(source), "--out", str(out), "--bundle", "/models/bundle", *extra])


def _refused(result: Any, *fragments: str) -> None:
    """Exit 2, a message, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.output.split())  # rich wraps long lines
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------------------------
# 4. The output folder: read-only, full disk, what sits at the lock's name, a failed start


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make folders behave as on a read-only file system (EROFS on any write inside them), for root as well (root
    ignores permission bits, and this machine's tests run as root)."""
    folders: list[str] = []

    def inside(path: Any) -> bool:
        p = os.path.abspath(os.fsdecode(path))
        return any(p == f or p.startswith(f + os.sep) for f in folders)

    def erofs(path: Any) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_open, real_mkdir, real_path_open = os.open, os.mkdir, Path.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(path) and flags & writing:
            raise erofs(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path) and not os.path.isdir(path):
            raise erofs(path)
        real_mkdir(path, *args, **kwargs)

    def path_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if inside(self) and any(c in mode for c in "wax+"):
            raise erofs(self)
        return real_path_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(Path, "open", path_open)
    return lambda folder: folders.append(os.path.abspath(folder))


def test_read_only_out_is_refused_before_ray(fake_ray: FakeRay, images: Path, tmp_path: Path, read_only: Any) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    read_only(out)
    _refused(_verb(images, out), f"--out {out}: cannot write in this folder (Read-only file system)",
             "make it writable or choose another --out")
    assert fake_ray.items is None and list(out.iterdir()) == []
    (tmp_path / "ro-parent").mkdir()
    read_only(tmp_path / "ro-parent")
    _refused(_verb(images, tmp_path / "ro-parent" / "new"), "cannot create the folder (Read-only file system)")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions; test_read_only_out_is_refused_before_ray simulates a "
                           "read-only file system instead")
def test_folder_without_write_permission_is_refused(fake_ray: FakeRay, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    out.chmod(0o555)
    try:
        _refused(_verb(images, out), "cannot write in this folder (Permission denied)")
    finally:
        out.chmod(0o755)


def test_full_disk_is_refused_before_ray(fake_ray: FakeRay, images: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 50_000}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free["bytes"], free["bytes"]))
    out = tmp_path / "scores"
    # 6 images: at least 6 x 320 bytes + 64 KiB for a part > 50,000 bytes free.
    _refused(_verb(images, out), f"--out {out}: 0.05 MB free on its file system, and the results of 6 images need "
             "about 0.0", "MB; free some space or choose another --out (nothing was scored)")
    assert fake_ray.items is None and not out.exists()  # refused before Ray; the folder it made is gone
    free["bytes"] = 10**6
    result = _verb(images, out)
    assert result.exit_code == 0, result.output
    assert sorted(fake_ray.items or []) == sorted(iter_paths(images))


def test_disk_full_during_the_run_keeps_the_parts_and_says_how_to_resume(fake_ray: FakeRay, images: Path,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = pq.write_table
    calls = {"n": 0}

    def full_after_one_part(table: pa.Table, where: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_after_one_part)
    out = tmp_path / "scores"
    result = _verb(images, out, "--part-rows", "2")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.output.split())
    assert f"cannot write a result part in {out} (No space left on device); the 1 parts written before are " \
           "complete and kept: free some space and run the same command again to resume" in text
    assert len(part_files(out)) == 1 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(pq, "write_table", real_write)
    assert _verb(images, out, "--part-rows", "2").exit_code == 0  # the next run resumes: 4 more rows
    assert resume_index(out, KEY).rows == 6


def _lock_in_thread(out: Path) -> tuple[threading.Thread, list[BaseException | None]]:
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            with output_lock(out):
                pass
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(exc)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=5)
    return thread, outcome


@pytest.mark.parametrize("kind", ["folder", "fifo", "link", "dangling-link"])
def test_lock_must_be_a_plain_file(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    lock = out / LOCK_NAME
    outside = tmp_path / "elsewhere" / "victim.txt"
    outside.parent.mkdir()
    if kind == "folder":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "link":
        outside.write_text("precious\n")
        lock.symlink_to(outside)
    else:
        lock.symlink_to(outside)  # a link to a file that does not exist yet
    thread, outcome = _lock_in_thread(out)
    if thread.is_alive():  # blocked opening the FIFO: open its other end so the thread can finish
        os.close(os.open(lock, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
        pytest.fail(f"taking the lock hung on a {kind} named {LOCK_NAME}")
    assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
    message = str(outcome[0])
    expected = {"folder": "is a folder, not the lock file", "fifo": "is a FIFO (named pipe), not the lock file",
                "link": "is a symbolic link", "dangling-link": "is a symbolic link"}[kind]
    assert expected in message and f"remove {lock}" in message
    if kind == "link":
        assert outside.read_text() == "precious\n"
    else:
        assert not outside.exists()  # nothing written outside --out


def test_lock_problems_end_in_a_message_from_the_verb(fake_ray: FakeRay, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    (out / LOCK_NAME).mkdir(parents=True)
    _refused(_verb(images, out), f"{out / LOCK_NAME} is a folder, not the lock file")
    assert fake_ray.items is None


def test_a_failed_start_leaves_nothing_behind(fake_ray: FakeRay, tmp_path: Path) -> None:
    out = tmp_path / "new" / "scores"
    _refused(_verb(tmp_path / "missing", out), "no such file or folder")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(_verb(empty, out), "no images found")
    assert not (tmp_path / "new").exists()  # the folders the run made, and its lock, are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    _refused(_verb(empty, kept), "no images found")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # a folder the user made stays, without a lock


# --------------------------------------------------------------------------------------------------------------------
# 8. Names kept exactly as written


def test_names_with_spaces_are_kept_and_a_missing_one_is_an_error_row(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "y.png")
    text = tmp_path / "list.txt"
    text.write_bytes(b"y.png \n y.png\ny.png\r\n\t\n")
    table = tmp_path / "list.csv"
    table.write_text('path\n"y.png "\n y.png\n')
    parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["y.png ", "y.png"]}), parquet)
    base = os.fsencode(tmp_path)
    assert list(iter_paths(text)) == [base + b"/y.png ", base + b"/ y.png", base + b"/y.png"]
    assert list(iter_paths(table)) == [base + b"/y.png ", base + b"/ y.png"]
    assert list(iter_paths(parquet)) == [base + b"/y.png ", base + b"/y.png"]
    prepared = decode_and_crop(pa.table({"item": pa.array(list(iter_paths(text)), pa.binary())}), RULES, 10**8)
    assert prepared.column("error").to_pylist() == ["file not found", "file not found", None]


# --------------------------------------------------------------------------------------------------------------------
# 11c. A CSV part is checked whole on resume


def _table(paths: list[str]) -> pa.Table:
    n = len(paths)
    return pa.table({"path": paths, "score": [0.5] * n, "vcg": [0.4] * n, "vda": [0.6] * n, "crops": [1] * n,
                     "status": ["ok"] * n, "error": [None] * n, "path_bytes_hex": [None] * n,
                     "bundle_sha256": [KEY.bundle_sha256] * n, "settings": [KEY.settings] * n},
                    schema=arrow_schema())


def test_a_truncated_csv_part_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    part = PartWriter(out, "csv").write(_table(["/a.png", "/b.png", "/c,d.png"]))
    check = part.with_name(f".{part.name}.check")
    assert json.loads(check.read_text())["rows"] == 3
    assert resume_index(out, KEY).done == {b"/a.png", b"/b.png", b"/c,d.png"}
    whole = part.read_bytes()
    lines = whole.splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:-1]))  # cut at a row boundary: only the check file can tell
    with pytest.raises(ConfigError, match=rf"{part.name}: it does not match its check file {check.name}: rows 2 "
                                          r"\(written: 3\).*move it \(and .*\.check beside it\) out"):
        resume_index(out, KEY)
    check.unlink()  # a part without a check file (written before they existed): its rows are still checked
    part.write_bytes(whole[:-12])  # cut inside the last row
    with pytest.raises(ConfigError, match="its last row has no line break"):
        resume_index(out, KEY)
    assert lines[-1].count(b',"ok",') == 1
    part.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b',"ok",', b","))  # a row without its status
    with pytest.raises(ConfigError, match="line 4 has 9 fields, not 10"):
        resume_index(out, KEY)


def test_format_of_an_existing_folder_is_kept(fake_ray: FakeRay, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    assert _verb(images, out).exit_code == 0  # Parquet parts
    before = sorted(p.name for p in out.iterdir())
    _refused(_verb(images, out, "--format", "csv"), f"--out {out} holds parquet parts and this run would add csv",
             "run with --format parquet to resume it, or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == before


# --------------------------------------------------------------------------------------------------------------------
# New user 7: the progress line


def test_progress_line_says_done_scored_and_failed(fake_ray: FakeRay, images: Path, tmp_path: Path) -> None:
    result = _verb(images, tmp_path / "scores", "--part-rows", "3")
    assert result.exit_code == 0, result.output
    assert "part 1: 3/6 images done: 3 scored, 0 failed" in result.output
    assert "part 2: 6/6 images done: 4 scored, 2 failed" in result.output


# --------------------------------------------------------------------------------------------------------------------
# 10. The local Ray instance on a shared host


def test_local_ray_is_loopback_private_and_authenticated(fake_ray: FakeRay, images: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    fake_ray.initialized = False
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                 "RAY_TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.WARNING)
    summary = score_dataset(images, tmp_path / "scores", ScoreOptions(bundle=Path("/models/bundle")),
                            DatasetOptions(workers=1))
    assert summary.scored == 6 and fake_ray.shutdowns == 1
    (call,) = fake_ray.init_calls
    kwargs, env = call["kwargs"], call["env"]
    assert kwargs["_node_ip_address"] == "127.0.0.1" and kwargs["include_dashboard"] is False
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # else Ray turns 127.0.0.1 into the outward address
    assert call["temp_parent_mode"] == 0o700  # sessions in a private folder...
    assert not Path(kwargs["_temp_dir"]).parent.exists()  # ...removed after the run
    token = home / ".ray" / "auth_token"  # Ray finds a token there and turns token authentication on
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert "Token authentication is enabled" not in caplog.text  # Ray's notice on every run is dropped
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # the process's environment is restored

    token.chmod(0o644)  # a token file Ray wrote with the umask's mode is made private
    fake_ray.init_calls.clear()
    score_dataset(images, tmp_path / "scores2", ScoreOptions(bundle=Path("/models/bundle")))
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(fake_ray.init_calls) == 1

    fake_ray.node_ip = "192.0.2.2"  # a Ray that ignored the settings: the run stops before any work
    with pytest.raises(ConfigError, match="took the address 192.0.2.2, not 127.0.0.1"):
        score_dataset(images, tmp_path / "scores3", ScoreOptions(bundle=Path("/models/bundle")))
    assert fake_ray.shutdowns == 3 and not (tmp_path / "scores3").exists()


def test_ray_that_does_not_start_is_a_message(fake_ray: FakeRay, images: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ray.initialized = False
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))  # the user's own: left alone
    fake_ray.fail_start = RuntimeError("Failed to start GCS.\nray.exceptions.AuthenticationError: token is missing")
    out = tmp_path / "scores"
    result = _verb(images, out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.output.split())
    assert "the local Ray instance did not start: RuntimeError: ray.exceptions.AuthenticationError: token is " \
           "missing; nothing was scored; Ray's logs are in" in text and "Traceback" not in result.output
    logs = Path(fake_ray.init_calls[0]["kwargs"]["_temp_dir"]) / "session_latest" / "logs"
    assert logs.is_dir() and str(logs) in text  # kept for reading
    assert not out.exists() and fake_ray.shutdowns == 1 and not (tmp_path / "token").exists()
    shutil.rmtree(logs.parent.parent.parent)


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    found = {pid}
    grew = True
    while grew:
        more = {child for child, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of `pids` holds (from /proc, like ss -ltnp)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found: list[tuple[str, int]] = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints the address as 32-bit words in host order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


@pytest.mark.slow
def test_a_real_local_run_listens_on_loopback_only(auto_built: tuple[object, str], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process")
    bundle = auto_built[0].root  # type: ignore[attr-defined]
    for i in range(3):
        Image.fromarray(np.full((48 + 8 * i, 64, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    seen: list[tuple[str, int]] = []
    sessions: list[str] = []

    def look(progress: object) -> None:
        seen.extend(_listening(_descendants(os.getpid())))
        sessions.append(ray._private.worker.global_worker.node.get_session_dir_path())

    summary = score_dataset(tmp_path, tmp_path / "scores", ScoreOptions(bundle=bundle),
                            DatasetOptions(part_rows=1, local_cpus=2), progress=look)
    assert summary.scored == 3 and summary.failed == 0
    print("listening while the run ran:", sorted(set(seen)))
    assert seen and all(_loopback(address) for address, _ in seen), sorted(set(seen))
    session = Path(sessions[0])
    print("session folder:", session)
    assert session.parent.parent.name.startswith("diffv2iqa-ray-") and not session.exists()

"""Bundle directories: the loaded `Bundle`, and writing and loading them.

`write_bundle` assembles the bundle in a hidden sibling directory and renames it into place only once every file and
then `manifest.json` are written, so an interrupted build never leaves a directory that looks like a bundle.
`load_bundle` refuses anything that is not exactly what was written (missing, truncated or altered files).

A bundle is a closed world: every file the runtime opens (the manifest, graphs, their external data, engines,
checkpoints) is a regular file inside the bundle directory, reached without following any symbolic link, and listed
and hashed in the manifest. Links, devices, FIFOs and unlisted references are refused without opening or hashing
what they point to, so a refusal never tells anything about a file outside the bundle.

Crash safety: a writer killed between the two renames of an overwrite leaves the previous bundle in
`.<name>.old-…` and no `<name>`; the next `write_bundle` or `load_bundle` of that path renames it back and reports
it with a `BundleRecoveredWarning` (the library does not print: callers show warnings as they like). Staging
directories `.<name>.tmp-…` of writers that are gone are removed by the next `write_bundle` to that path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import normal_permissions
from ..contract import PRECISIONS, check_graph
from ..errors import BundleError, DependencyError
from ..precision_plan import PrecisionPlan, parse_plan
from .manifest import EngineEntry, FileEntry, GraphEntry, Manifest
from .schema import (
    _CHUNK,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    REBUILD,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    _relpath_problem,
    check_header,
    environment_versions,
    sha256_file,
    to_plain_json,
    utc_timestamp,
    validate_manifest,
)

_WRITE_HINT = "fix the manifest given to write_bundle; if `diffv2iqa-trt build` made it, this is a toolkit bug"


class BundleRecoveredWarning(UserWarning):
    """An interrupted overwrite was undone: the previous bundle was renamed back into place."""


# --------------------------------------------------------------------------------------------------------------------
# The closed world: regular files inside the bundle, reached without links

# O_NOFOLLOW: the last component may not be a link (the earlier ones are checked with lstat); O_NONBLOCK: opening a
# FIFO must not wait for a writer. Both are absent on Windows, which has neither FIFOs nor (by default) symlinks.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))
_LINK_ADVICE = ("a bundle holds its own files, and a link may point anywhere: replace it by a copy of the file "
                "(`cp -L`) or rebuild the bundle")


class _Refused(Exception):
    """A bundle entry that is not a regular file inside the bundle; the message says so and nothing about a target."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _entry_stat(root: Path, name: str) -> os.stat_result:
    """lstat of bundle entry `name` ('/'-separated, already checked relative): every component below `root` must be
    a real directory and the last one a regular file, none a link. Raises FileNotFoundError or _Refused; never
    looks at what a link points to. (`root` itself may be a link, e.g. /models/current.)"""
    parts = name.split("/")
    path = root
    for i, part in enumerate(parts):
        path = path / part
        st = os.lstat(path)
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            what = "is a symbolic link" if last else f"lies under {'/'.join(parts[:i + 1])!r}, a symbolic link"
            raise _Refused(f"{root / name} {what}: {_LINK_ADVICE}")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise _Refused(f"{root / name} cannot exist: {'/'.join(parts[:i + 1])!r} in the bundle is "
                           f"{_kind(st.st_mode)}, not a directory; {REBUILD}")
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"{root / name} is {_kind(st.st_mode)}, not a regular file; {REBUILD}")
    # Belt and braces: with no link below root, the resolved path stays under the resolved root.
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(root / name)]) != real_root:
        raise _Refused(f"{root / name} lies outside the bundle directory; {REBUILD}")
    return st


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[Any, os.stat_result]]:
    """Open a file for reading only if it is a regular file: a link, FIFO, device or directory is refused from its
    lstat, without being opened (opening some devices acts on them); the flags and fstat cover a swap in between.
    Yields the binary file and its fstat."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        advice = _LINK_ADVICE if stat.S_ISLNK(st.st_mode) else f"not a regular file; {REBUILD}"
        raise _Refused(f"{path} is {_kind(st.st_mode)}{':' if stat.S_ISLNK(st.st_mode) else ','} {advice}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        if os.path.islink(path):  # O_NOFOLLOW's ELOOP: swapped for a link since the lstat
            raise _Refused(f"{path} is a symbolic link: {_LINK_ADVICE}") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{path} is {_kind(st.st_mode)}, not a regular file; {REBUILD}")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st


def _sha256_open(f: Any) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def _external_locations(model: Any) -> list[str | None]:
    """The external-data `location` of every tensor of an ONNX model that has one (None for an external tensor
    without a location): initializers, sparse initializers and tensor attributes, in the main graph, every subgraph
    (If/Loop/Scan bodies) and every local function. Iterative, so a hostile nesting depth cannot recurse."""
    locations: list[str | None] = []

    def tensor(t: Any) -> None:
        entries = {e.key: e.value for e in t.external_data}
        if t.data_location == _EXTERNAL or "location" in entries:
            locations.append(entries.get("location"))

    def sparse(sp: Any) -> None:
        tensor(sp.values)
        tensor(sp.indices)

    # Every field that can hold a tensor or a graph is read whatever the attribute's declared `type` says (a
    # mistyped attribute still reaches ONNX Runtime's loader), and functions' default attributes too.
    graphs: list[Any] = [model.graph]
    attributes: list[Any] = [a for f in model.functions for a in f.attribute_proto]
    attributes += [a for f in model.functions for n in f.node for a in n.attribute]
    while graphs or attributes:
        if graphs:
            g = graphs.pop()
            for t in g.initializer:
                tensor(t)
            for sp in g.sparse_initializer:
                sparse(sp)
            attributes.extend(a for n in g.node for a in n.attribute)
            continue
        a = attributes.pop()
        if a.HasField("t"):
            tensor(a.t)
        for t in a.tensors:
            tensor(t)
        if a.HasField("sparse_tensor"):
            sparse(a.sparse_tensor)
        for sp in a.sparse_tensors:
            sparse(sp)
        if a.HasField("g"):
            graphs.append(a.g)
        graphs.extend(a.graphs)
    return locations


# ONNX Runtime's tag for "the tensor's offset is a memory address in this process": never a file, never accepted.
_ORT_MEMORY_ADDRESS = "*/_ORT_MEM_ADDR_/*"


def _location_name(graph_file: str, location: str | None) -> str | None:
    """The bundle name an external-data location refers to (ONNX resolves it against the graph file's directory);
    None for an absolute path, a '..' segment, a backslash or anything else that is not a plain relative path."""
    if (not location or "\\" in location or "\x00" in location or location.startswith("/")
            or re.match(r"^[A-Za-z]:", location) or location.startswith(_ORT_MEMORY_ADDRESS)):
        return None
    parts = [part for part in location.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    base = graph_file.rpartition("/")[0]
    return "/".join([base, *parts] if base else parts)


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle directory and its typed manifest."""

    root: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def model_name(self) -> str:
        return self.manifest.model.name

    @property
    def trained(self) -> bool:
        return self.manifest.model.trained

    def graph(self, name: str) -> GraphEntry:
        return self.manifest.graphs[check_graph(name)]

    def file_path(self, name: str) -> Path:
        """Path of a file listed in the manifest (relative or absolute as `root` is). Checked again now, not only at
        load: it must still be a regular file inside the bundle, reached without links."""
        if name not in self.manifest.files:
            raise BundleError(f"{name!r} is not a file of the bundle {self.root} (see {self.manifest_path})",
                              path=self.manifest_path)
        path = self.root / name
        try:
            _entry_stat(self.root, name)
        except FileNotFoundError:
            raise BundleError(f"{path} is missing: bundle {self.root} changed after it was loaded; {REBUILD}, or "
                              f"copy it again", path=path) from None
        except _Refused as exc:
            raise BundleError(str(exc), path=path) from None
        except OSError as exc:
            raise BundleError(f"{path} cannot be read ({exc.strerror}); {REBUILD}", path=path) from None
        return path

    def precisions(self, graph: str) -> tuple[str, ...]:
        """Precisions with an ONNX variant, in the order fp32, fp16, int8."""
        return self.graph(graph).precisions

    def common_precisions(self) -> tuple[str, ...]:
        """Precisions that every graph has an ONNX variant of."""
        return tuple(p for p in PRECISIONS if all(p in g.variants for g in self.manifest.graphs.values()))

    def run_plan(self, requested: str | None) -> PrecisionPlan:
        """The plan to run: `requested` (a --precision text), else the plan the build chose, else fp32."""
        if requested is not None:
            return parse_plan(requested)
        chosen = self.manifest.precision
        return PrecisionPlan(dict(chosen.plan)) if chosen is not None else PrecisionPlan.uniform_plan("fp32")

    def onnx_path(self, graph: str, precision: str = "fp32") -> Path:
        variants = self.graph(graph).variants
        if precision not in variants:
            raise BundleError(f"{self.manifest_path}: graph {graph!r} has no {precision} ONNX variant (it has "
                              f"{', '.join(self.precisions(graph))}); rebuild the bundle with `diffv2iqa-trt build` "
                              f"asking for {graph}={precision}", path=self.manifest_path)
        return self.file_path(variants[precision].file)

    def check_onnx_references(self, graph: str, precision: str = "fp32") -> tuple[str, ...]:
        """Refuse an ONNX variant that would read data the manifest does not list. Every external-data `location`
        of the graph (initializers and tensor attributes, subgraphs and functions included) must be a plain relative
        path naming a file listed in the manifest, a regular file inside the bundle; otherwise BundleError. Returns
        the bundle names of the external-data files. Call it before handing the file to a runtime (the onnxruntime
        backend does); it parses the graph with the onnx package, without loading the external data."""
        path = self.onnx_path(graph, precision)
        file = self.graph(graph).variants[precision].file
        try:
            import onnx
        except ImportError:
            raise DependencyError("checking a bundle's ONNX graphs needs the onnx package: pip install onnx "
                                  "(or 'diffv2iqa-trt[cpu]')") from None
        what = f"{path} (the {precision} {graph} graph)"
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf decode errors of all kinds: the file is not an ONNX model
            raise BundleError(f"{what} is not a readable ONNX model ({type(exc).__name__}); {REBUILD}",
                              path=path) from exc
        names: list[str] = []
        for location in _external_locations(model):
            name = _location_name(file, location)
            if name is None or name not in self.manifest.files:
                shown = "an external tensor without a location" if location is None else repr(location[:200])
                raise BundleError(f"{what} loads external data from {shown}, which is not a file listed in "
                                  f"{self.manifest_path}: a bundle's graphs may read only the bundle's own listed "
                                  f"and hashed files; {REBUILD}", path=path)
            self.file_path(name)
            if name not in names:
                names.append(name)
        return tuple(names)

    def engine_precisions(self, graph: str) -> tuple[str, ...]:
        return self.graph(graph).engine_precisions

    def engine(self, graph: str, precision: str) -> EngineEntry:
        """The engine entry; compatibility with this machine is the engine layer's business, since only it can ask
        TensorRT and the GPU."""
        engines = self.graph(graph).engines
        if precision not in engines:
            have = ", ".join(self.engine_precisions(graph)) or "none"
            raise BundleError(f"{self.manifest_path}: graph {graph!r} has no {precision} TensorRT engine (it has "
                              f"{have}); build engines with `diffv2iqa-trt build` on this machine",
                              path=self.manifest_path)
        return engines[precision]

    def engine_path(self, graph: str, precision: str) -> Path:
        return self.file_path(self.engine(graph, precision).file)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last duplicate, other JSON parsers the first: refuse rather than read it two ways.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_capped(path: Path) -> bytes:
    """The manifest's bytes: a regular file (no link, FIFO or device: refused before reading, a FIFO is never waited
    on) of at most MAX_MANIFEST_BYTES, of which at most one byte more is ever read."""
    try:
        with _open_regular(path) as (f, st):
            if st.st_size > MAX_MANIFEST_BYTES:
                raise _Refused(f"{path} is {st.st_size} bytes, more than a bundle manifest may have "
                               f"({MAX_MANIFEST_BYTES}); {REBUILD}")
            data: bytes = f.read(MAX_MANIFEST_BYTES + 1)  # the size may have grown since fstat
    except _Refused as exc:
        raise BundleError(str(exc), path=path) from None
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: {path.parent} is not a complete bundle (an interrupted build?); "
                          f"{REBUILD}", path=path) from None
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc.strerror or exc}); {REBUILD}", path=path) from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is more than {MAX_MANIFEST_BYTES} bytes, more than a bundle manifest may have; "
                          f"{REBUILD}", path=path)
    return data


def _finite_float(text: str) -> float:
    """A JSON number as a double; one outside the double range (1e400) is refused, as the C++ reader refuses it
    (docs/bundle.md, "JSON"); one that underflows (1e-400) reads as 0.0 on both sides."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is outside the double range")
    return value


def _check_strings(doc: Any) -> None:
    """ValueError for U+0000 in a key or string (C string functions would cut a file name there) or an unpaired
    surrogate escape (not Unicode text), anywhere in the document: the C++ reader's rule. Iterative: the parser
    already bounded the depth."""
    def check(text: str) -> None:
        if "\x00" in text:
            raise ValueError("U+0000 (NUL) in a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("an unpaired surrogate escape in a string") from None

    if isinstance(doc, str):
        check(doc)
    stack = [doc] if isinstance(doc, dict | list) else []
    while stack:  # no per-item objects: the manifest's long number tables cost nothing
        value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                check(key)
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, str):
                check(item)
            elif isinstance(item, dict | list):
                stack.append(item)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a manifest.json strictly (a regular file of at most MAX_MANIFEST_BYTES, no link; no NaN/Infinity, no
    duplicate keys) and check its schema name and version; no full validation (see validate_manifest)."""
    path = Path(path)
    data = _read_capped(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); {REBUILD}",
                          path=path) from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant,
                         parse_float=_finite_float)
        _check_strings(doc)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          f"{REBUILD}", path=path) from None
    except ValueError as exc:  # duplicate keys, NaN, 1e400, U+0000, a lone surrogate, integers of > 4300 digits
        raise BundleError(f"{path} is not valid JSON ({exc}); {REBUILD}", path=path) from None
    except RecursionError:
        raise BundleError(f"{path} is not a bundle manifest: its JSON is nested too deeply to read; {REBUILD}",
                          path=path) from None
    check_header(doc, source=path)
    result: dict[str, Any] = doc
    return result


def _file_problems(root: Path, files: Mapping[str, FileEntry], verify_hashes: bool) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    for name, entry in files.items():
        path = root / name
        digest: str | None = None
        try:
            size = _entry_stat(root, name).st_size
            if size == entry.bytes and verify_hashes:
                with _open_regular(path) as (f, st):
                    size = st.st_size
                    digest = _sha256_open(f) if size == entry.bytes else None
        except FileNotFoundError:
            problems.append((path, f"{path} is missing"))
            continue
        except _Refused as exc:
            problems.append((path, str(exc)))
            continue
        except OSError as exc:
            problems.append((path, f"{path} cannot be read ({exc.strerror or exc})"))
            continue
        if size != entry.bytes:
            problems.append((path, f"{path} is {size} bytes, the manifest says {entry.bytes}: the file is "
                                   f"truncated or was replaced"))
        elif verify_hashes and digest != entry.sha256:
            # The file is the bundle's own (no link was followed), so its hash may be shown.
            problems.append((path, f"{path} has sha256 {(digest or '')[:16]}…, the manifest says {entry.sha256[:16]}…: "
                                   f"the file was altered after the build"))
    return problems


def load_bundle(path: str | os.PathLike[str], *, verify_hashes: bool = True) -> Bundle:
    """Load and check a bundle directory (a path to its manifest.json is accepted too).

    Raises BundleError for a missing directory, a missing or unparseable manifest, another schema name or version,
    schema-invalid content (the message gives the JSON path), and any listed file that is missing, of another size or
    (with verify_hashes, the default) of another sha256, or that is not a regular file inside the bundle (links are
    refused). Files the manifest does not list are ignored. If the directory is missing because an overwrite was
    interrupted, the previous bundle is renamed back first (a BundleRecoveredWarning says so).
    """
    root = Path(path)
    if root.name == MANIFEST_NAME and not root.is_dir() and root.parent.is_dir():
        root = root.parent
    if not root.exists() and not root.is_symlink():
        _recover(Path(os.path.abspath(root)))
    if not root.exists():
        raise BundleError(f"no bundle at {root}: the directory does not exist; build one with "
                          f"`diffv2iqa-trt build --out {root}`{_leftover_hint(root)}", path=root)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory (a bundle is a directory holding {MANIFEST_NAME})",
                          path=root)
    manifest_path = root / MANIFEST_NAME
    doc = read_manifest(manifest_path)
    manifest = Manifest.from_dict(doc, source=manifest_path)
    problems = _file_problems(root, manifest.files, verify_hashes)
    if problems:
        messages = [message for _, message in problems]
        raise BundleError(f"bundle {root} is damaged ({REBUILD}, or copy it again):\n  " + "\n  ".join(messages),
                          path=problems[0][0], problems=messages)
    return Bundle(root=root, manifest=manifest)


# --------------------------------------------------------------------------------------------------------------------
# Crash safety: what interrupted writers leave next to the output directory

# `.<name>.tmp-<host>-<pid>-<random>` (staging) and `.<name>.old-<host>-<pid>-<random>` (the bundle being replaced):
# the host tag and pid say whether the writer can still be running. Names of earlier releases lack them.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_LEFTOVER = re.compile(r"^(?:(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-)?[0-9A-Za-z_]{4,32}$")
# When the writer's liveness cannot be known (another host, an old name, a reused pid), age decides: a writer is
# between its two renames for microseconds, while staging a paper bundle takes minutes.
OLD_GRACE_S = 60.0
STAGING_GRACE_S = 6 * 3600.0
_IN_FLIGHT: set[Path] = set()  # staging and old directories of write_bundle calls running in this process
_IN_FLIGHT_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # unknown: age decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. EPERM: someone else's live process
    return True


def _writer_gone(path: Path, grace_s: float) -> bool:
    """Whether the writer that made leftover `path` has certainly stopped (same host and its pid is dead, or this
    process and not one of its running writes) or, when that cannot be known, the leftover is older than grace_s."""
    tail = re.search(r"\.(?:tmp|old)-([^.]*)$", path.name)
    m = _LEFTOVER.match(tail[1]) if tail else None
    if m is None:
        return False
    if m["host"] == _HOST_TAG and m["pid"] is not None:
        pid = int(m["pid"])
        if pid == os.getpid():
            with _IN_FLIGHT_LOCK:
                return path not in _IN_FLIGHT
        if not _pid_alive(pid):
            return True
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return time.time() - max(st.st_mtime, st.st_ctime) > grace_s  # a rename updates ctime


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    """Directories (not links) named `.<out_dir name>.<kind>-…` next to out_dir."""
    prefix = f".{out_dir.name}.{kind}-"
    try:
        names = sorted(n for n in os.listdir(out_dir.parent) if n.startswith(prefix))
    except OSError:
        return []
    found = []
    for name in names:
        path = out_dir.parent / name
        with contextlib.suppress(OSError):
            if _LEFTOVER.match(name[len(prefix):]) and stat.S_ISDIR(os.lstat(path).st_mode):
                found.append(path)
    return found


def _complete(path: Path) -> bool:
    """A directory holding a regular manifest.json (written last, so the bundle was complete)."""
    try:
        return stat.S_ISREG(os.lstat(path / MANIFEST_NAME).st_mode)
    except OSError:
        return False


def _recover(out_dir: Path) -> None:
    """Undo an overwrite interrupted between its two renames: out_dir missing and exactly one complete
    `.<name>.old-…` whose writer is gone -> rename it back and warn (BundleRecoveredWarning)."""
    if out_dir.exists() or out_dir.is_symlink():
        return
    olds = [p for p in _leftovers(out_dir, "old") if _complete(p)]
    if len(olds) != 1 or not _writer_gone(olds[0], OLD_GRACE_S):
        return  # none, ambiguous (_leftover_hint tells), or a writer may be between its renames right now
    try:
        os.rename(olds[0], out_dir)
    except OSError:
        return  # read-only, or someone else recovered or published meanwhile
    _fsync_dir(out_dir.parent)
    warnings.warn(BundleRecoveredWarning(
        f"{out_dir} was missing after an interrupted overwrite: the previous bundle was restored from "
        f"{olds[0].name}; build again to replace it"), stacklevel=3)


def _leftover_hint(root: Path) -> str:
    olds = [p.name for p in _leftovers(Path(os.path.abspath(root)), "old") if _complete(p)]
    if not olds:
        return ""
    return (f"; interrupted overwrites left {len(olds)} earlier bundle(s) next to it ({', '.join(olds)}): rename "
            f"the one to keep to {root.name}")


def _remove_stale(out_dir: Path, overwrite: bool) -> None:
    """Remove staging directories of writers that are gone, and (when replacing the bundle anyway) the previous
    bundles that writers killed after publishing did not delete."""
    for tmp in _leftovers(out_dir, "tmp"):
        if _writer_gone(tmp, STAGING_GRACE_S):
            shutil.rmtree(tmp, ignore_errors=True)
    if overwrite and _complete(out_dir):
        for old in _leftovers(out_dir, "old"):
            if _writer_gone(old, OLD_GRACE_S):
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _in_flight(path: Path) -> Iterator[Path]:
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.add(path)
    try:
        yield path
    finally:
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.discard(path)


# --------------------------------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(path: Path) -> None:
    # Makes renames durable on POSIX; directories cannot be opened on Windows, where this is skipped.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy and hash in one pass (bundles hold files of hundreds of MB), fsync the copy."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copymode(src, dst)
    return h.hexdigest()


def check_replaceable(out_dir: Path, *, elsewhere: str = "choose another output directory") -> None:
    """Refuse to replace an existing `out_dir` that is not a bundle or an empty directory: overwriting must never
    wipe other data (e.g. `--out ~`). `elsewhere` is the advice in the message (the CLI names its option)."""
    if not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a directory; {elsewhere}", path=out_dir)
    if (out_dir / MANIFEST_NAME).is_file() or not any(out_dir.iterdir()):
        return
    raise BundleError(f"{out_dir} exists and is not a bundle (no {MANIFEST_NAME}); refusing to replace it even with "
                      f"--overwrite: {elsewhere} or remove it yourself", path=out_dir)


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise BundleError(f"{out_dir} already exists; choose another output directory or allow overwriting "
                              f"(`--overwrite`)", path=out_dir)
        check_replaceable(out_dir)


def write_bundle(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any],
                 files: Mapping[str, str | os.PathLike[str]], *, overwrite: bool = False, move: bool = False) -> Path:
    """Write a bundle directory atomically and return its (absolute) path.

    `files` maps each bundle-relative name ('/'-separated, e.g. "restore_step.fp32.onnx", or an ONNX external-data
    file under the name its ONNX refers to) to the source file; sources are copied, or moved with `move=True` (moved
    back if the write fails). The manifest's "files" section is computed here (any given one is replaced); "schema",
    "schema_version", "toolkit_version" and "created" are filled in when absent, "lint", "parity", "precision" and
    "golden" default to null and "environment" to `environment_versions()`. The caller's mapping is not modified.

    The bundle is assembled in `.<name>.tmp-<host>-<pid>-XXXX` next to `out_dir`, validated, `manifest.json` written
    last, and the directory renamed onto `out_dir`. An existing `out_dir` is refused unless `overwrite`; then it is
    replaced only once the new bundle is complete (it must be a bundle or empty: other directories are never
    replaced). On any error the temporary directory is removed and `out_dir` is left as it was.

    Leftovers of writers that were killed are dealt with first: an overwrite interrupted between its two renames is
    undone (the previous bundle is renamed back, with a BundleRecoveredWarning), staging directories of writers that
    are gone are removed, and with `overwrite` so are previous bundles a killed writer had not deleted yet.
    """
    out_dir = Path(os.path.abspath(out_dir))  # "." or "a/.." would have no usable name or parent to rename in
    parent = out_dir.parent
    doc = to_plain_json(manifest)
    doc.setdefault("schema", SCHEMA_NAME)
    doc.setdefault("schema_version", SCHEMA_VERSION)
    doc.setdefault("toolkit_version", __version__)
    doc.setdefault("created", utc_timestamp())
    doc.setdefault("environment", environment_versions())
    doc.setdefault("lint", None)
    doc.setdefault("parity", None)
    doc.setdefault("precision", None)
    doc.setdefault("golden", None)
    target = out_dir / MANIFEST_NAME

    # Fail fast, before copying hundreds of MB: names, sources, everything but the hashes.
    names = list(files)
    bad = [why for name in names if (why := _relpath_problem(name)) is not None]
    if bad:
        raise BundleError(f"cannot write {target}: bad file name(s): {'; '.join(bad)}", path=target)
    sources = {name: Path(src) for name, src in files.items()}
    for name, src in sources.items():
        if not src.is_file():
            raise BundleError(f"cannot write bundle {out_dir}: source file {src} (for {name!r}) "
                              f"{'is not a regular file' if src.exists() else 'does not exist'}; export it first "
                              f"or fix the path", path=src)
    doc["files"] = {name: {"sha256": "0" * 64, "bytes": 0} for name in names}
    _stamp_entry_hashes(doc)
    validate_manifest(doc, source=target, hint=_WRITE_HINT, hashes=False)
    _recover(out_dir)  # an interrupted overwrite: the previous bundle comes back first, then the usual rules apply
    _refuse_existing(out_dir, overwrite)
    _remove_stale(out_dir, overwrite)

    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{_HOST_TAG}-{os.getpid()}-", dir=parent))
    with _in_flight(tmp):
        _publish(doc, sources, tmp, out_dir, overwrite=overwrite, move=move)
    return out_dir


def _stamp_entry_hashes(doc: dict[str, Any]) -> None:
    """Every ONNX variant and engine entry repeats its file's sha256 (readers of one graph entry need not look up
    `files`)."""
    files = doc.get("files") or {}
    for graph in (doc.get("graphs") or {}).values():
        for kind in ("variants", "engines"):
            for precision, entry in ((graph or {}).get(kind) or {}).items():
                if not isinstance(entry, dict):
                    continue  # the schema check names it
                entry.setdefault("precision", precision)
                if entry.get("file") in files:
                    entry["sha256"] = files[entry["file"]]["sha256"]


def _publish(doc: dict[str, Any], sources: Mapping[str, Path], tmp: Path, out_dir: Path, *, overwrite: bool,
             move: bool) -> None:
    """Fill the staging directory tmp, then rename it onto out_dir; on any error remove tmp and move sources back."""
    target = out_dir / MANIFEST_NAME
    moved: list[tuple[Path, Path]] = []
    try:
        for name, src in sources.items():
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if move:
                shutil.move(src, dst)
                moved.append((src, dst))
                digest = sha256_file(dst)
            else:
                digest = _copy_hashing(src, dst)
            doc["files"][name] = {"sha256": digest, "bytes": dst.stat().st_size}
        _stamp_entry_hashes(doc)
        validate_manifest(doc, source=target, hint=_WRITE_HINT)
        # manifest.json last: a directory holding it is complete.
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        normal_permissions(tmp)
        for d, _, _ in os.walk(tmp):
            _fsync_dir(Path(d))
        _install(tmp, out_dir, overwrite)
    except BaseException:
        for src, dst in reversed(moved):
            with contextlib.suppress(OSError):
                shutil.move(dst, src)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory onto out_dir (replacing an old bundle only with overwrite)."""
    parent = out_dir.parent
    if not (out_dir.exists() or out_dir.is_symlink()):
        try:
            os.rename(tmp, out_dir)
        except OSError as exc:
            raise BundleError(f"cannot create {out_dir} ({exc}); was it created meanwhile? choose another output "
                              f"directory or allow overwriting", path=out_dir) from exc
        _fsync_dir(parent)
        return
    _refuse_existing(out_dir, overwrite)  # it may have appeared while the files were copied
    old = parent / f".{out_dir.name}.old-{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
    # Two renames: readers see the old bundle, then briefly no directory, then the new one; never a partial bundle.
    # A writer killed in between leaves `old`, which the next load_bundle or write_bundle renames back (_recover).
    with _in_flight(old):
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            with contextlib.suppress(OSError):  # if this fails too, _recover puts it back later
                os.rename(old, out_dir)
            raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)

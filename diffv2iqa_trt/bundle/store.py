"""Bundle directories: the loaded `Bundle`, and writing and loading them.

`write_bundle` assembles the bundle in a hidden sibling directory and renames it into place only once every file and
then `manifest.json` are written, so an interrupted build never leaves a directory that looks like a bundle.
`load_bundle` refuses anything that is not exactly what was written (missing, truncated or altered files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..contract import PRECISIONS, check_graph
from ..errors import BundleError
from .manifest import EngineEntry, FileEntry, GraphEntry, Manifest
from .schema import (
    _CHUNK,
    MANIFEST_NAME,
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
        """Path of a file listed in the manifest (relative or absolute as `root` is)."""
        if name not in self.manifest.files:
            raise BundleError(f"{name!r} is not a file of the bundle {self.root} (see {self.manifest_path})",
                              path=self.manifest_path)
        return self.root / name

    def precisions(self, graph: str) -> tuple[str, ...]:
        """Precisions with an ONNX variant, in the order fp32, fp16, int8."""
        return self.graph(graph).precisions

    def common_precisions(self) -> tuple[str, ...]:
        """Precisions that every graph has an ONNX variant of."""
        return tuple(p for p in PRECISIONS if all(p in g.variants for g in self.manifest.graphs.values()))

    def onnx_path(self, graph: str, precision: str = "fp32") -> Path:
        variants = self.graph(graph).variants
        if precision not in variants:
            raise BundleError(f"{self.manifest_path}: graph {graph!r} has no {precision} ONNX variant (it has "
                              f"{', '.join(self.precisions(graph))}); rebuild the bundle with `diffv2iqa-trt build` "
                              f"asking for {graph}={precision}", path=self.manifest_path)
        return self.file_path(variants[precision].file)

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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a manifest.json strictly (no NaN/Infinity, no duplicate keys) and check its schema name and version;
    no full validation (see validate_manifest)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: {path.parent} is not a complete bundle (an interrupted build?); "
                          f"{REBUILD}", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} cannot be read ({exc}); {REBUILD}", path=path) from exc
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          f"{REBUILD}", path=path) from exc
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); {REBUILD}", path=path) from exc
    check_header(doc, source=path)
    result: dict[str, Any] = doc
    return result


def _file_problems(root: Path, files: Mapping[str, FileEntry], verify_hashes: bool) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    for name, entry in files.items():
        path = root / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append((path, f"{path} is missing"))
            continue
        if not path.is_file():
            problems.append((path, f"{path} is not a regular file"))
        elif size != entry.bytes:
            problems.append((path, f"{path} is {size} bytes, the manifest says {entry.bytes}: the file is "
                                   f"truncated or was replaced"))
        elif verify_hashes and (digest := sha256_file(path)) != entry.sha256:
            problems.append((path, f"{path} has sha256 {digest[:16]}…, the manifest says {entry.sha256[:16]}…: "
                                   f"the file was altered after the build"))
    return problems


def load_bundle(path: str | os.PathLike[str], *, verify_hashes: bool = True) -> Bundle:
    """Load and check a bundle directory (a path to its manifest.json is accepted too).

    Raises BundleError for a missing directory, a missing or unparseable manifest, another schema name or version,
    schema-invalid content (the message gives the JSON path), and any listed file that is missing, of another size or
    (with verify_hashes, the default) of another sha256. Files the manifest does not list are ignored.
    """
    root = Path(path)
    if root.name == MANIFEST_NAME and root.is_file():
        root = root.parent
    if not root.exists():
        raise BundleError(f"no bundle at {root}: the directory does not exist; build one with "
                          f"`diffv2iqa-trt build --out {root}`", path=root)
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


def _check_replaceable(out_dir: Path) -> None:
    # overwrite=True must never wipe a directory that is not a bundle (e.g. `--out ~`).
    if not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a directory; choose another output path", path=out_dir)
    if (out_dir / MANIFEST_NAME).is_file() or not any(out_dir.iterdir()):
        return
    raise BundleError(f"{out_dir} exists and is not a bundle (no {MANIFEST_NAME}); refusing to replace it: choose "
                      f"another output directory or remove it yourself", path=out_dir)


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise BundleError(f"{out_dir} already exists; choose another output directory or allow overwriting "
                              f"(`--overwrite`)", path=out_dir)
        _check_replaceable(out_dir)


def write_bundle(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any],
                 files: Mapping[str, str | os.PathLike[str]], *, overwrite: bool = False, move: bool = False) -> Path:
    """Write a bundle directory atomically and return its (absolute) path.

    `files` maps each bundle-relative name ('/'-separated, e.g. "restore_step.fp32.onnx", or an ONNX external-data
    file under the name its ONNX refers to) to the source file; sources are copied, or moved with `move=True` (moved
    back if the write fails). The manifest's "files" section is computed here (any given one is replaced); "schema",
    "schema_version", "toolkit_version" and "created" are filled in when absent, "lint" and "parity" default to null
    and "environment" to `environment_versions()`. The caller's mapping is not modified.

    The bundle is assembled in `.<name>.tmp-XXXX` next to `out_dir`, validated, `manifest.json` written last, and the
    directory renamed onto `out_dir`. An existing `out_dir` is refused unless `overwrite`; then it is replaced only
    once the new bundle is complete (it must be a bundle or empty: other directories are never replaced). On any
    error the temporary directory is removed and `out_dir` is left as it was.
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
    validate_manifest(doc, source=target, hint=_WRITE_HINT)
    _refuse_existing(out_dir, overwrite)

    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
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
        validate_manifest(doc, source=target, hint=_WRITE_HINT)
        # manifest.json last: a directory holding it is complete.
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _normal_permissions(tmp)
        for d, _, _ in os.walk(tmp):
            _fsync_dir(Path(d))
        _install(tmp, out_dir, overwrite)
    except BaseException:
        for src, dst in reversed(moved):
            with contextlib.suppress(OSError):
                shutil.move(dst, src)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _normal_permissions(root: Path) -> None:
    """mkdtemp and mkstemp create owner-only entries; a published bundle gets the usual modes under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for d, _, names in os.walk(root):
        os.chmod(d, 0o777 & ~umask)
        for name in names:
            os.chmod(Path(d) / name, 0o666 & ~umask)


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
    old = parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
    # Two renames: readers see the old bundle, then briefly no directory, then the new one; never a partial bundle.
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)

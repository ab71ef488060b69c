#!/usr/bin/env python3
"""Install the TensorRT 10.13 type stubs into a folder that mypy reads (`typings/`, see [tool.mypy] mypy_path).

TensorRT cannot be installed on the machines this project is built on, so every line that calls it is type-checked
against the `tensorrt-stubs` package instead (DESIGN.md, "Verifying what cannot run here"). The stubs need the
fix-up recipe of DESIGN.md before mypy can parse them; this script applies it, so CI and every developer run the
same check:
  1. parameters called `in` (a keyword) are renamed `in_`;
  2. `channel_axis` of `add_scale_nd` gets a default (a parameter without one follows parameters with one);
  3. the `import tensorrt_libs` line goes (that package is TensorRT's shared libraries, absent here).

The stubs go into their own folder rather than site-packages: installed there, `tensorrt/` would import at run
time as an empty namespace package, and every "is TensorRT installed?" check (ours, ModelOpt's, Polygraphy's)
would be fooled. `make lint` runs this script; it needs PyPI once and is a no-op when the folder is up to date.

Usage: python scripts/tensorrt_stubs.py [DEST]   (default: typings)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

STUBS = "tensorrt-stubs==10.13.0.35.1"
PACKAGES = ("tensorrt", "tensorrt_bindings")
STAMP = ".installed"


def fix_up(text: str) -> str:
    """The DESIGN.md recipe, applied to one stub file's text."""
    text = re.sub(r"\bin: ", "in_: ", text)
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    return "".join(line for line in text.splitlines(keepends=True)
                   if line.strip() != "import tensorrt_libs as tensorrt_libs")


def install(dest: Path) -> None:
    stamp = dest / STAMP
    if stamp.is_file() and stamp.read_text().strip() == STUBS:
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, STUBS],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        staged = Path(tmp) / "stubs"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staged)
        for package in PACKAGES:
            for stub in (staged / package).glob("*.pyi"):
                stub.write_text(fix_up(stub.read_text(encoding="utf-8")), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for package in PACKAGES:
            shutil.copytree(staged / package, dest / package)
    stamp.write_text(STUBS + "\n")


if __name__ == "__main__":
    install(Path(sys.argv[1] if len(sys.argv) > 1 else "typings"))

"""Writing benchmark results: JSON with the command and the machine, plus a Markdown summary."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import ConfigError


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "simd": simd_flags()}


def simd_flags() -> list[str]:
    """The CPU's vector and low-precision instruction sets (AVX2, AVX-512 subsets, VNNI, BF16, AMX), from
    /proc/cpuinfo: CPU figures for INT8 and FP16 depend on them, and they differ between this project's machines."""
    wanted = ("avx2", "fma", "f16c", "avx512", "vnni", "bf16", "amx")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
    except OSError:
        pass
    return []


def command() -> str:
    """How this process was started, without machine paths: the CLI verb or the harness module."""
    prog = Path(sys.argv[0]).name
    head = ["diffv2iqa-trt"] if prog == "diffv2iqa-trt" else ["python", "-m",
                                                                 "diffv2iqa_trt.benchmarks." + Path(prog).stem]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


def write(out_dir: Path, name: str, results: dict[str, Any], markdown: str, *, invocation: str | None = None
          ) -> tuple[Path, Path]:
    doc = {"command": invocation or command(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), **results}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    header = f"Command: `{doc['command']}`  \nDate: {doc['date']}  \nMachine: {doc['machine']['cpu']}, " \
             f"{doc['machine']['logical_cpus']} logical CPUs\n\n"
    try:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
        with atomic_path(md_path) as tmp:
            tmp.write_text(markdown.replace("<!--header-->", header))
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {out_dir} ({exc.strerror or exc}); choose a writable --out"
                          ) from exc
    return json_path, md_path


def publish(out_dir: Path, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """`write`, then print the summary and where it went: the end of every harness's main."""
    paths = write(out_dir, name, results, markdown)
    print(markdown.replace("<!--header-->", ""))
    print(f"wrote {paths[0]} and {paths[1]}")
    return paths

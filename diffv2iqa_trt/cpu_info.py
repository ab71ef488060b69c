"""The CPU at hand: its model name and the ISA flags that decide which CPU engine and precision run fastest.

Figures measured on the CPU (benchmarks, the `auto` self-benchmark, the bf16 accuracy record) are stored with these,
since they differ between machines (AVX2 only; AVX-512 with BF16/VNNI; AMX).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# Vector and low-precision instruction sets: AVX2, FMA, F16C, the AVX-512 subsets, VNNI, BF16 and AMX.
ISA_PREFIXES = ("avx2", "fma", "f16c", "avx512", "vnni", "bf16", "amx")


def _field(name: str, path: Path = CPUINFO) -> str | None:
    """The first processor's `name` field of /proc/cpuinfo (None where unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_model(path: Path = CPUINFO) -> str:
    return _field("model name", path) or platform.processor() or platform.machine() or "unknown"


def isa_flags(path: Path = CPUINFO) -> list[str]:
    """The CPU's ISA flags of ISA_PREFIXES, sorted (empty where /proc/cpuinfo is unreadable)."""
    flags = _field("flags", path)
    return sorted(f for f in (flags or "").split() if f.startswith(ISA_PREFIXES))


def logical_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def identity() -> dict[str, Any]:
    return {"model": cpu_model(), "isa_flags": isa_flags(), "logical_cpus": logical_cpus()}

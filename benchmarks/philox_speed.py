"""Side-by-side speed of the two noise-bank generators on the CPU (single process, NumPy only).

    .venv/bin/python benchmarks/philox_speed.py [--repeats 3] [--steps 50] [--size 224]

Times the bank generator of bundle schema 3 (NumPy's Philox4x64 + ziggurat, kept here as `numpy_bank`) and
runtime/philox.py's normal_bank (Philox-4x32-10 + Box-Muller, the noise bank since schema 4) on the same bank shape,
alternating the two after one warm-up call each, and reports the medians. Prints a Markdown report and writes it to
benchmarks/results/noise/philox_speed.md. Timings only; the tests assert no speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffv2iqa_trt.runtime import philox

RESULT = Path(__file__).resolve().parent / "results" / "noise" / "philox_speed.md"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(fn: Callable[[], np.ndarray]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def numpy_bank(seed: int, steps: int, height: int, width: int) -> np.ndarray:
    """The schema-3 bank: row r = NumPy Generator(Philox(key=[seed, r])).standard_normal((3, H, W), float32)."""
    rows = [np.random.Generator(np.random.Philox(key=np.array([seed, r], dtype=np.uint64))).standard_normal(
        (3, height, width), dtype=np.float32) for r in range(steps + 1)]
    return np.stack(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per generator (median reported)")
    parser.add_argument("--steps", type=int, default=50, help="bank rows = steps + 1")
    parser.add_argument("--size", type=int, default=224, help="H = W of each (3, H, W) row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT, help="Markdown report path")
    args = parser.parse_args(argv)

    cases: dict[str, Callable[[], np.ndarray]] = {
        "schema 3: NumPy Philox4x64 + ziggurat": lambda: numpy_bank(
            args.seed, args.steps, args.size, args.size
        ),
        "schema 4: philox.normal_bank (Philox-4x32-10 + Box-Muller)": lambda: philox.normal_bank(
            args.seed, args.steps, args.size, args.size
        ),
    }
    for fn in cases.values():  # warm-up (imports, page faults)
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))

    names = list(cases)
    med = {name: statistics.median(times[name]) for name in names}
    values = (args.steps + 1) * 3 * args.size * args.size
    command = "python benchmarks/philox_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Noise bank generation speed: schema 3 (NumPy) vs schema 4 (portable Philox) generator",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  ",
        f"Machine: {cpu_model()} (lscpu model name), {_cpus()} logical CPUs (shared with other jobs)  ",
        f"Software: Python {platform.python_version()}, NumPy {np.__version__}",
        "",
        f"Bank: seed {args.seed}, {args.steps + 1} rows of (3, {args.size}, {args.size}) float32 = {values:,} values; "
        f"{args.repeats} alternating timed calls per generator after one warm-up call each; single thread.",
        "",
        "| generator | median s | min s | max s | ns per value (median) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        ts = times[name]
        lines.append(f"| {name} | {med[name]:.4f} | {min(ts):.4f} | {max(ts):.4f} | {med[name] / values * 1e9:.1f} |")
    ratio = med[names[1]] / med[names[0]]
    lines += ["", f"Ratio of medians (schema 4 / schema 3): {ratio:.3f} ({'faster' if ratio <= 1 else 'SLOWER'}).", ""]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())

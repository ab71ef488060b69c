"""score-dataset on Ray against the plain `score` command: images/s, and the driver's and workers' peak memory.

python -m diffv2iqa_trt.benchmarks.scale_bench --bundle DIR [--images 1000] [--large 10000] [--workers 1 2]
       [--batch-size 16] [--rounds 2] [--work DIR] [--out benchmarks/results/scale] [--name NAME]

Images: `--large` small JPEGs (long side 96 to 192 pixels) cut from scikit-image's photographs (random crop, scale and
flip, seeded; nothing is downloaded); the first `--images` of them are the speed set. Every measurement is a fresh
command in a subprocess (Python start, bundle load and, for Ray, a local Ray instance included), timed from outside:
1. `diffv2iqa-trt score --bundle B --format csv` on the speed set, with ONNX Runtime's default threads (every core)
   and with `--threads 1`;
2. `diffv2iqa-trt score-dataset` on the speed set for each `--workers` count (one ONNX Runtime thread per worker);
   1 and 2 interleaved, `--rounds` times, the fastest round of each reported (the machine may be shared);
3. `score-dataset` on all `--large` images with the largest worker count, for the memory at 10x the images.
While each runs, the resident memory (RSS) of the driver and of every Ray worker process is sampled every 0.5 s; the
peak is reported (RSS counts the object-store pages a process has touched). The Ray results are checked against the
plain command's scores (max absolute difference).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.photos import PHOTO_NAMES, photo
from . import report

SAMPLE_S = 0.5


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` small JPEGs from the photographs (reused when the folder already holds them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    sources = [photo(name) for name in PHOTO_NAMES]
    for path in paths:
        rgb = sources[int(rng.integers(len(sources)))]
        h, w = rgb.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        out_side = int(rng.integers(96, 193))
        img = Image.fromarray(rgb[top:top + side, left:left + side]).resize(
            (out_side, int(out_side * rng.uniform(0.6, 1.0))), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path.parent.mkdir(exist_ok=True)
        img.save(path, quality=90)
    return paths


def run_sampled(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`; its wall time, output, and the peak RSS of the process and of its Ray workers (`ray::` titles)."""
    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(proc.pid)
    peak = {"driver": 0, "worker": 0, "ray_total": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                rss = driver.memory_info().rss
                children = driver.children(recursive=True)
            except psutil.Error:
                break
            workers, total = [], 0
            for child in children:
                try:
                    child_rss = child.memory_info().rss
                    title = " ".join(child.cmdline()[:1])
                except psutil.Error:
                    continue
                total += child_rss
                if title.startswith("ray::"):
                    workers.append(child_rss)
            peak["driver"] = max(peak["driver"], rss)
            peak["worker"] = max([peak["worker"], *workers])
            peak["ray_total"] = max(peak["ray_total"], total)
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.monotonic() - start
    done.set()
    sampler.join()
    return {"seconds": seconds, "returncode": proc.returncode, "stdout": stdout, "stderr": stderr,
            "peak_driver_rss_mb": peak["driver"] / 2**20, "peak_worker_rss_mb": peak["worker"] / 2**20,
            "peak_children_rss_mb": peak["ray_total"] / 2**20}


def _cli() -> list[str]:
    return [sys.executable, "-m", "diffv2iqa_trt.cli"]


def plain_run(bundle: Path, folder: Path, threads: int | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    extra = [] if threads is None else ["--threads", str(threads)]
    r = run_sampled([*_cli(), "score", "--bundle", str(bundle), "--format", "csv", *extra, str(folder)])
    if r["returncode"] != 0:
        raise SystemExit(f"score failed:\n{r['stderr'][-2000:]}")
    scores = {row["path"]: float(row["score"]) for row in csv.DictReader(io.StringIO(r["stdout"]))}
    return r, scores


def ray_run(bundle: Path, source: Path, out: Path, workers: int, batch_size: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    r = run_sampled([*_cli(), "score-dataset", str(source), "--out", str(out), "--bundle", str(bundle),
                     "--workers", str(workers), "--batch-size", str(batch_size), "--json"])
    if r["returncode"] != 0:
        raise SystemExit(f"score-dataset failed:\n{r['stderr'][-3000:]}")
    r["summary"] = json.loads(r["stdout"])
    return r


def ray_scores(out: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["path", "score"])
    return dict(zip(table.column("path").to_pylist(), table.column("score").to_pylist(), strict=True))


def _entry(r: dict[str, Any], images: int) -> dict[str, Any]:
    out = {k: r[k] for k in ("seconds", "peak_driver_rss_mb", "peak_worker_rss_mb", "peak_children_rss_mb")}
    out["images"] = images
    out["images_per_s"] = images / r["seconds"]
    if "summary" in r:
        s = r["summary"]
        out["startup_s"] = s["startup_seconds"]
        after = s["seconds"] - s["startup_seconds"]
        out["images_per_s_after_first_result"] = s["scored"] / after if after > 0 else None
        out["failed"] = s["failed"]
    return out


def lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Hypervisor vendor")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
            if k.strip() in keep}


def _mb(value: float | None) -> str:
    return f"{value:.0f}" if value else "-"  # the plain command has no worker processes (recorded as 0)


def markdown(results: dict[str, Any]) -> str:
    cpu = results["lscpu"]
    lines = ["# score-dataset on Ray Data against the plain `score` command (tiny bundle, ONNX Runtime CPU)", "",
             "<!--header-->",
             f"lscpu: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', '?')} CPUs, "
             f"{cpu.get('Thread(s) per core', '?')} thread(s) per core, {cpu.get('Hypervisor vendor', 'no')} "
             f"hypervisor; SIMD: {' '.join(report.simd_flags()) or 'unknown'}  ",
             f"Ray {results['ray']}, onnxruntime {results['onnxruntime']}; batch size {results['batch_size']} "
             f"images; images of {results['image_sides']} pixels a side (JPEG); every figure is one fresh command "
             "(Python start, bundle load and Ray start-up included), run under `nice -n 10` on a machine shared with "
             f"other work; the speed runs in {results['rounds']} interleaved rounds, the fastest of each reported "
             "(every round's wall time is in the JSON).", "",
             "| run | images | wall s (each round) | images/s (fastest) | s to the first result | images/s after it "
             "| peak driver RSS MB | peak worker RSS MB (largest) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        after = r.get("images_per_s_after_first_result")
        startup = r.get("startup_s")
        walls = r.get("walls_s", [r["seconds"]])
        lines.append(f"| {name} | {r['images']} | {' / '.join(f'{w:.1f}' for w in walls)} | {r['images_per_s']:.1f} | "
                     f"{'' if startup is None else f'{startup:.1f}'} | {'' if after is None else f'{after:.1f}'} | "
                     f"{r['peak_driver_rss_mb']:.0f} | {_mb(r['peak_worker_rss_mb'])} |")
    lines += ["", f"Ray scores against `score`'s for the same {results['images']} images: max |Δ| = "
                  f"{results['max_abs_diff_vs_score']:.3g} over {results['compared']} images.", ""]
    if "memory_growth" in results:
        g = results["memory_growth"]
        lines.append(f"Memory from {results['images']} to {results['large']} images ({g['workers']} workers): "
                     f"driver {g['driver_mb'][0]:.0f} → {g['driver_mb'][1]:.0f} MB, largest worker "
                     f"{g['worker_mb'][0]:.0f} → {g['worker_mb'][1]:.0f} MB.")
    lines += ["", "`score` runs ONNX Runtime with its default threads (every core) or one; each Ray worker runs one "
                  "thread, "
                  "and the decoding runs inside the workers (Ray fuses the two map stages on a CPU-only run). "
                  "\"s to the first result\" covers Python, Ray and actor start-up, bundle loading and the first "
                  "block of images; results arrive a block at a time and later blocks are already under way when "
                  "the first arrives, so the rate after it is the steady rate or a little above it. "
                  "The plain command prints after the last image, so it has neither."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000, help="0 skips the memory run at this size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the speed runs (best reported)")
    parser.add_argument("--work", type=Path, default=Path("out/scale_bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale"))
    parser.add_argument("--name", default="scale_tiny")
    args = parser.parse_args()
    import onnxruntime
    import ray

    bundle = args.bundle.absolute()
    count = max(args.images, args.large)
    paths = make_images(args.work.absolute() / "images", count)
    speed_list = args.work.absolute() / f"first{args.images}.txt"
    speed_list.write_text("".join(f"{p}\n" for p in paths[:args.images]))
    speed_folder = args.work.absolute() / f"speed{args.images}"
    if not speed_folder.exists():  # the plain command takes a folder: links to the same files
        speed_folder.mkdir()
        for p in paths[:args.images]:
            (speed_folder / p.name).symlink_to(p)
    sides = sorted({side for p in paths[:args.images] for side in Image.open(p).size})
    results: dict[str, Any] = {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__, "lscpu": lscpu(),
                               "images": args.images, "large": args.large, "batch_size": args.batch_size,
                               "image_sides": f"{sides[0]}-{sides[-1]}", "runs": {}}
    # The speed runs are interleaved (plain, 1 worker, 2 workers, plain, ...) so that other work on a shared machine
    # hits each alike; the fastest round of each is reported, every round's wall time is in the JSON.
    rounds: dict[str, list[dict[str, Any]]] = {}
    diffs: list[float] = []
    for k in range(args.rounds):
        name = "score (plain CLI)"
        print(f"round {k + 1}: plain score on {args.images} images ...", flush=True)
        plain, reference = plain_run(bundle, speed_folder)
        rounds.setdefault(name, []).append(_entry(plain, args.images))
        by_name = {Path(path).name: v for path, v in reference.items()}
        print(f"round {k + 1}: plain score --threads 1 on {args.images} images ...", flush=True)
        plain, _ = plain_run(bundle, speed_folder, threads=1)
        rounds.setdefault("score (plain CLI), --threads 1", []).append(_entry(plain, args.images))
        for w in args.workers:
            name = f"score-dataset, {w} worker(s)"
            print(f"round {k + 1}: score-dataset, {w} worker(s), {args.images} images ...", flush=True)
            out = args.work.absolute() / f"out-{w}w"
            rounds.setdefault(name, []).append(_entry(ray_run(bundle, speed_list, out, w, args.batch_size),
                                                      args.images))
            got = ray_scores(out)
            diffs.extend(abs(v - by_name[Path(path).name]) for path, v in got.items())
    for name, entries in rounds.items():
        best = min(entries, key=lambda e: e["seconds"])
        results["runs"][name] = {**best, "walls_s": [e["seconds"] for e in entries]}
    results["rounds"] = args.rounds
    results["max_abs_diff_vs_score"] = max(diffs) if diffs else float("nan")
    results["compared"] = len(diffs) // max(1, len(args.workers) * args.rounds)
    if args.large > args.images:
        w = max(args.workers)
        print(f"score-dataset, {w} worker(s), {args.large} images ...", flush=True)
        large_list = args.work.absolute() / f"first{args.large}.txt"
        large_list.write_text("".join(f"{p}\n" for p in paths[:args.large]))
        r = ray_run(bundle, large_list, args.work.absolute() / f"out-{w}w-large", w, args.batch_size)
        results["runs"][f"score-dataset, {w} worker(s), {args.large} images"] = _entry(r, args.large)
        small = results["runs"][f"score-dataset, {w} worker(s)"]
        large = results["runs"][f"score-dataset, {w} worker(s), {args.large} images"]
        results["memory_growth"] = {"workers": w,
                                    "driver_mb": [small["peak_driver_rss_mb"], large["peak_driver_rss_mb"]],
                                    "worker_mb": [small["peak_worker_rss_mb"], large["peak_worker_rss_mb"]]}
    args.out.mkdir(parents=True, exist_ok=True)
    paths_written = report.write(args.out, args.name, results, markdown(results))
    print(markdown(results).replace("<!--header-->", ""))
    print(f"wrote {paths_written[0]} and {paths_written[1]}")


if __name__ == "__main__":
    main()

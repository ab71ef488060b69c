"""PNG plots of benchmark results (matplotlib, imported lazily: plotting is optional for the library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import DependencyError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DependencyError("plots need matplotlib: pip install matplotlib (or the 'dev' extra)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def scatter_vs_reference(reference: np.ndarray, variants: Mapping[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    n = max(1, len(variants))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    lo, hi = float(np.min(reference)), float(np.max(reference))
    pad = 0.05 * (hi - lo or 1.0)
    for ax, (name, scores) in zip(axes[0], variants.items(), strict=False):
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.7", lw=1, label="y = x")
        ax.scatter(reference, scores, s=12, alpha=0.8)
        ax.set(xlabel="torch fp32 reference score", ylabel=f"{name} score", title=name)
        ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def error_histogram(errors: Mapping[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    floor = 1e-12
    all_err = np.concatenate([np.maximum(e, floor) for e in errors.values()]) if errors else np.array([floor])
    bins = np.logspace(np.log10(all_err.min()), np.log10(max(all_err.max(), all_err.min() * 10)), 40)
    for name, e in errors.items():
        ax.hist(np.maximum(e, floor), bins=bins, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set(xlabel=f"|score - reference| (values below {floor:g} drawn at {floor:g})", ylabel="images",
           title="Score error against the torch fp32 reference")
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_vs_batch(rows: Mapping[str, Sequence[tuple[int, float]]], path: Path, unit: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in rows.items():
        b, t = zip(*points, strict=True)
        ax.plot(b, t, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size (crops)", ylabel=unit, title="Offline throughput against batch size")
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_cdf(latencies: Mapping[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, lat in latencies.items():
        x = np.sort(np.asarray(lat) * 1e3)
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=name)
    ax.set(xlabel="latency per image (ms)", ylabel="fraction of runs", title="Single-stream latency CDF")
    ax.legend(fontsize=8)
    return _save(fig, path)


def stage_bars(stages: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(stages)
    keys: list[str] = []
    for s in stages.values():
        keys.extend(k for k in s if k not in keys)
    bottom = np.zeros(len(names))
    for key in keys:
        vals = np.array([stages[n].get(key, 0.0) * 1e3 for n in names])
        ax.bar(names, vals, bottom=bottom, label=key)
        bottom += vals
    ax.set(ylabel="ms per image", title="Where the time goes (single stream)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)

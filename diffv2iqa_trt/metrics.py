"""Agreement statistics between two score lists (NumPy only, so they run wherever the runtime runs)."""

from __future__ import annotations

import numpy as np


def ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a), dtype=np.float64)
    r[order] = np.arange(1, len(a) + 1)
    values, inverse = np.unique(a, return_inverse=True)
    if len(values) < len(a):  # average the ranks of tied values
        sums = np.bincount(inverse, weights=r)
        counts = np.bincount(inverse)
        r = (sums / counts)[inverse]
    return r


def plcc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def srcc(a: np.ndarray, b: np.ndarray) -> float:
    return plcc(ranks(a), ranks(b))


def krcc(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (O(n^2): fine for the few thousand images a parity run scores)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    if n < 2:
        return float("nan")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    sa, sb = da[iu], db[iu]
    concordant_minus_discordant = float(np.sum(sa * sb))
    ties_a, ties_b = float(np.sum(sa == 0)), float(np.sum(sb == 0))
    pairs = n * (n - 1) / 2
    denom = np.sqrt((pairs - ties_a) * (pairs - ties_b))
    return float(concordant_minus_discordant / denom) if denom > 0 else float("nan")


def rank_flips(reference: np.ndarray, other: np.ndarray) -> int:
    """Pairs ordered one way by the reference and strictly the other way by `other`."""
    r, o = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    iu = np.triu_indices(len(r), 1)
    dr = np.sign(r[:, None] - r[None, :])[iu]
    do = np.sign(o[:, None] - o[None, :])[iu]
    return int(np.sum(dr * do < 0))


def abs_error_summary(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    d = np.abs(np.asarray(other, np.float64) - np.asarray(reference, np.float64))
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99))}

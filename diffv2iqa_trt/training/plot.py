"""Loss curves of the demo training as one PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DependencyError


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    if len(v) < n:
        return v
    return np.convolve(v, np.ones(n) / n, mode="valid")


def plot_curves(restorer_log: dict[str, Any], iqa_log: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise DependencyError("the loss curves need matplotlib: pip install matplotlib (or the 'dev' extra)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.4))
    steps = np.array([e["step"] for e in restorer_log["history"]])
    loss = np.array([e["loss"] for e in restorer_log["history"]])
    a.plot(steps, loss, color="0.8", lw=0.8, label="per step")
    k = 25
    a.plot(steps[k - 1:], _smooth(loss, k), color="C0", label=f"mean of {k} steps")
    a.set(title="Restorer pre-training: L1(eps, eps_hat)", xlabel="step", ylabel="loss")
    a.legend()

    hist = iqa_log["history"]
    step_losses = np.concatenate([e["train_step_losses"] for e in hist])
    per_epoch = len(hist[0]["train_step_losses"])
    x = np.arange(1, len(step_losses) + 1) / per_epoch
    b.plot(x, step_losses, color="0.8", lw=0.8, label="train (per step)")
    epochs = [e["epoch"] for e in hist]
    b.plot(epochs, [e["train_loss"] for e in hist], "o-", color="C0", label="train (epoch mean)")
    b.plot(epochs, [e["val_loss"] for e in hist], "o-", color="C1", label="validation")
    b.set(title="IQA: MSE(vcg) + MSE(vda) (aux loss excluded)", xlabel="epoch", ylabel="loss",
          yscale="log")
    b.legend()

    c.plot(epochs, [e["val_srcc"] for e in hist], "o-", color="C2", label="SRCC (configured fusion)")
    c.plot(epochs, [e["val_plcc"] for e in hist], "s--", color="C3", label="PLCC (configured fusion)")
    for key, style, label in (("val_srcc_vcg", ":", "SRCC, VCG alone"), ("val_srcc_vda", "-.", "SRCC, VDA alone")):
        if key in hist[0]:
            c.plot(epochs, [e[key] for e in hist], style, label=label)
    if iqa_log.get("fit_fusion"):
        c.plot(epochs, [e["val_srcc_best_fusion"] for e in hist], "o-", color="k", label="SRCC, fitted fusion")
    best = iqa_log.get("best_epoch")
    if best:
        c.axvline(best, color="0.5", ls=":", label=f"kept (epoch {best})")
    c.set(title="Validation vs pseudo-MOS (image level, centre crop)", xlabel="epoch", ylim=(-0.3, 1))
    c.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)

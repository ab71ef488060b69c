"""Restorer pre-training as the authors did it (MODEL_SPEC "Pre-training and training"), at tiny scale.

Pairs (distorted x, pristine y) come from random crops (+ horizontal and vertical flips) of the training split;
t ~ U{1..T} on the T-step training schedule (config.schedule.train_steps, cosine), the noise level
gamma ~ U(sqrt(abar_t), sqrt(abar_{t-1})), y_noisy = gamma * y + sqrt(1 - gamma^2) * eps, and the loss is
mean |eps - UNet([x, y_noisy], gamma)|. Adam.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import ScheduleConfig
from ..model.diffv2iqa import DiffV2IQA
from ..schedule import betas
from .data import Sample


def training_gammas(schedule: ScheduleConfig) -> np.ndarray:
    """sqrt(abar_t) for t = 0 ... T on the training schedule, with abar_0 = 1 (length T + 1, decreasing)."""
    b = betas(schedule.schedule, schedule.train_steps, cosine_s=schedule.cosine_s,
              linear_start=schedule.linear_start, linear_end=schedule.linear_end)
    out: np.ndarray = np.sqrt(np.concatenate([[1.0], np.cumprod(1.0 - b)]))
    return out


def sample_gammas(table: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """t ~ U{1..T}, then gamma ~ U(sqrt(abar_t), sqrt(abar_{t-1})): (n,) float32."""
    t = rng.integers(1, len(table), size=n)
    return rng.uniform(table[t], table[t - 1]).astype(np.float32)


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], the runtime's normalisation."""
    return np.moveaxis(rgb.astype(np.float32) / 127.5 - 1.0, -1, -3)


def random_pairs(samples: Sequence[Sample], n: int, size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n random (distorted, pristine) crop pairs with random flips, each (n, 3, size, size) in [-1, 1]."""
    xs, ys = [], []
    for i in rng.integers(0, len(samples), size=n):
        s = samples[int(i)]
        h, w = s.image.shape[:2]
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        x = s.image[top:top + size, left:left + size]
        y = s.pristine[top:top + size, left:left + size]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        xs.append(x)
        ys.append(y)
    return to_unit(np.stack(xs)), to_unit(np.stack(ys))


def restorer_loss(model: DiffV2IQA, x: Tensor, y: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
    """The SR3 objective: L1 between the noise and the U-Net's estimate of it."""
    g = gamma[:, None, None, None]
    noisy = g * y + torch.sqrt(1.0 - g * g) * eps
    loss: Tensor = (eps - model.unet(torch.cat([x, noisy], dim=1), gamma)).abs().mean()
    return loss


def train_restorer(model: DiffV2IQA, samples: Sequence[Sample], *, steps: int, batch_size: int, lr: float,
                   seed: int, log: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train model.unet in place; returns the per-step history (step, loss, seconds)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    table = training_gammas(model.config.schedule)
    size = model.config.crop_size
    opt = torch.optim.Adam(model.unet.parameters(), lr=lr)
    model.unet.train()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = random_pairs(samples, batch_size, size, rng)
        gamma = sample_gammas(table, batch_size, rng)
        eps = rng.standard_normal(y.shape, dtype=np.float32)
        loss = restorer_loss(model, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(gamma),
                             torch.from_numpy(eps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        entry = {"step": step, "loss": float(loss.detach()), "seconds": round(time.perf_counter() - start, 2)}
        history.append(entry)
        if log is not None:
            log(entry)
    model.unet.eval()
    return history

"""Noise schedule tables and the per-step coefficients of the fixed-step DDPM sampler.

One function (`step_tables`) feeds the PyTorch reference, the exported `restore_step` graph and the bundle, so every
backend runs the same arithmetic. NumPy only (float64 tables, cast at the edges): the runtime can use it without torch.

Indexing follows SR3: step i runs for i = T-1 ... 0; the U-Net is conditioned on gamma_i = sqrt(alphabar_i) and the
update is y <- c1_i * clip(y0_hat) + c2_i * y + sigma_i * z_i with
y0_hat = y / sqrt(alphabar_i) - sqrt(1/alphabar_i - 1) * eps. sigma_0 is 0: the last step adds no noise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .config import MAX_STEPS, ScheduleConfig
from .contract import COEF_WIDTH
from .errors import ConfigError

LOG_VARIANCE_FLOOR = 1e-20  # SR3 clips the posterior variance before the log


def betas(schedule: str, n_timestep: int, *, cosine_s: float = 8e-3, linear_start: float = 1e-6,
          linear_end: float = 1e-2) -> np.ndarray:
    """Beta table of length n_timestep (float64)."""
    if isinstance(n_timestep, bool) or not isinstance(n_timestep, numbers.Integral):
        raise ConfigError(f"the number of schedule steps must be an integer, got {n_timestep!r}")
    if n_timestep < 1:
        raise ConfigError(f"the schedule needs at least one step, got {n_timestep}")
    if n_timestep > MAX_STEPS:  # the tables (and a bundle's manifest) grow with the step count
        raise ConfigError(f"{n_timestep} schedule steps is more than the {MAX_STEPS} this toolkit supports; "
                          "choose fewer steps (--steps)")
    if schedule == "cosine":
        # Nichol & Dhariwal cosine schedule, normalised to alphabar(0) = 1, betas capped at 0.999.
        t = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        f = np.cos(t / (1.0 + cosine_s) * math.pi / 2.0) ** 2
        alphabar = f / f[0]
        capped: np.ndarray = np.minimum(1.0 - alphabar[1:] / alphabar[:-1], 0.999)
        return capped
    if schedule == "linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    raise ConfigError(f"unknown schedule {schedule!r}; use 'cosine' or 'linear'")


@dataclass(frozen=True)
class StepTables:
    """Everything the sampler needs per step, indexed by step i (0 ... T-1)."""

    gamma: np.ndarray  # (T,) the U-Net's noise-level input sqrt(alphabar_i)
    coef: np.ndarray  # (T, COEF_WIDTH) columns as COEF_NAMES
    alphas_cumprod: np.ndarray  # (T,)

    @property
    def steps(self) -> int:
        return int(self.gamma.shape[0])


def step_tables(config: ScheduleConfig, steps: int | None = None) -> StepTables:
    """Tables of the inference schedule (config.steps unless `steps` overrides it)."""
    n = config.steps if steps is None else steps
    b = betas(config.schedule, n, cosine_s=config.cosine_s, linear_start=config.linear_start,
              linear_end=config.linear_end)
    alphas = 1.0 - b
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    variance = b * (1.0 - abar_prev) / (1.0 - abar)
    std = np.exp(0.5 * np.log(np.maximum(variance, LOG_VARIANCE_FLOOR)))
    std[0] = 0.0  # no noise on the last step
    coef = np.stack([
        np.sqrt(1.0 / abar),
        np.sqrt(1.0 / abar - 1.0),
        b * np.sqrt(abar_prev) / (1.0 - abar),
        (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        std,
    ], axis=1)
    assert coef.shape[1] == COEF_WIDTH  # one column per contract.COEF_NAMES entry
    return StepTables(gamma=np.sqrt(abar), coef=coef, alphas_cumprod=abar)


def check_capture_steps(config: ScheduleConfig, steps: int) -> None:
    """The snapshots must be taken at steps that exist."""
    for name, step in (("capture_t1", config.capture_t1), ("capture_t2", config.capture_t2)):
        if not 0 < step < steps:
            raise ConfigError(f"{name}={step} is outside the {steps}-step schedule; choose more steps "
                             f"(at least {max(config.capture_t1, config.capture_t2) + 1}) or other capture steps")

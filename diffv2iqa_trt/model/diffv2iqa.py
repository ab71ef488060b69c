"""The whole DiffV2IQA model in PyTorch: restorer U-Net + IQA branches, as the three graphs of the bundle contract.

`restore_step`, `vcg` and `vda` are exactly what export traces; `restore` and `score` chain them the way the runtime
pipeline does, for the reference and for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..schedule import check_capture_steps, step_tables
from .iqa import IQANet
from .unet import UNet


def uint8_roundtrip(y: Tensor) -> Tensor:
    """What writing a [-1, 1] image as a uint8 PNG and reading it back does: clamp, scale to 0..255, round."""
    v = torch.round((y.clamp(-1.0, 1.0) + 1.0) * 127.5)
    return (v / 255.0 - 0.5) / 0.5


def restore_update(eps: Tensor, y: Tensor, coef: Tensor, z: Tensor) -> Tensor:
    """One ancestral DDPM update given the U-Net's noise estimate; coef columns as schedule.COEF_NAMES."""
    c = coef[:, :, None, None, None]
    y0_hat = (c[:, 0] * y - c[:, 1] * eps).clamp(-1.0, 1.0)
    return c[:, 2] * y0_hat + c[:, 3] * y + c[:, 4] * z


# The two wrappers below hold no parameters and change no numerics. They exist so that export names the nodes of
# these steps after the module (e.g. "restore_update/Mul"): precision tools (ModelOpt, AutoCast) exclude nodes by
# name, and both steps must stay fp32 (the uint8 rounding and the x0 clamp are precision-sensitive).

class Uint8RoundTrip(nn.Module):
    """`uint8_roundtrip` as a module."""

    def forward(self, y: Tensor) -> Tensor:
        return uint8_roundtrip(y)


class RestoreUpdate(nn.Module):
    """`restore_update` as a module."""

    def forward(self, eps: Tensor, y: Tensor, coef: Tensor, z: Tensor) -> Tensor:
        return restore_update(eps, y, coef, z)


class DiffV2IQA(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)
        self.iqa = IQANet(config.iqa)
        # Parameter-free, so they add no state_dict keys: checkpoints load unchanged.
        self.restore_update = RestoreUpdate()
        self.snapshot_roundtrip = Uint8RoundTrip()

    # --- the three graphs -------------------------------------------------------------------------------------
    def restore_step(self, x: Tensor, y: Tensor, gamma: Tensor, coef: Tensor, z: Tensor) -> Tensor:
        """x, y (B,3,H,W), gamma (B,), coef (B, COEF_WIDTH), z (1,3,H,W) -> y after this step."""
        eps = self.unet(torch.cat([x, y], dim=1), gamma)
        y_next: Tensor = self.restore_update(eps, y, coef, z)
        return y_next

    def _snapshots(self, y0: Tensor, yt1: Tensor, yt2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.config.uint8_roundtrip:
            return self.snapshot_roundtrip(y0), self.snapshot_roundtrip(yt1), self.snapshot_roundtrip(yt2)
        return y0, yt1, yt2

    def vcg(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> Tensor:
        return self.iqa.vcg_score(x, *self._snapshots(y0, yt1, yt2))

    def vda(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> Tensor:
        return self.iqa.vda_score(x, *self._snapshots(y0, yt1, yt2))

    # --- reference chaining -----------------------------------------------------------------------------------
    @torch.no_grad()
    def restore(self, x: Tensor, bank: Tensor, steps: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """All steps on x with a noise bank (T+1,3,H,W) -> (y0, y_t1, y_t2)."""
        sched = self.config.schedule
        n = sched.steps if steps is None else steps
        check_capture_steps(sched, n)
        tables = step_tables(sched, n)
        gamma = torch.as_tensor(tables.gamma, dtype=torch.float32)
        coef = torch.as_tensor(tables.coef, dtype=torch.float32)
        b = x.shape[0]
        y = bank[n].expand_as(x).contiguous()
        keep: dict[int, Tensor] = {}
        for i in reversed(range(n)):
            y = self.restore_step(x, y, gamma[i].repeat(b), coef[i].repeat(b, 1), bank[i][None])
            if i in (sched.capture_t1, sched.capture_t2):
                keep[i] = y
        return y, keep[sched.capture_t1], keep[sched.capture_t2]

    @torch.no_grad()
    def score(self, x: Tensor, bank: Tensor, steps: int | None = None) -> Tensor:
        """Fused score of crop-sized inputs x (B,3,S,S), restored at crop size."""
        y0, yt1, yt2 = self.restore(x, bank, steps)
        f = self.config.fusion
        return f.vcg_weight * self.vcg(x, y0, yt1, yt2) + f.vda_weight * self.vda(x, y0, yt1, yt2)


def build_model(config: ModelConfig, seed: int | None = 0) -> DiffV2IQA:
    """A freshly initialised model in eval mode; with `seed`, the initialisation is reproducible.

    The last layer of each score MLP starts with bias 0.5: with PyTorch's default init the final ReLU clamps almost
    every untrained score to exactly 0, which would make untrained models (tests, the embedded default) score every
    image alike. The config is validated first (ConfigError naming the field), so an impossible or huge config never
    reaches the layer constructors.
    """
    config.validate()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = DiffV2IQA(config)
    with torch.no_grad():
        for mlp in (model.iqa.fc_score, model.iqa.fc_score1):
            last_linear = [m for m in mlp if isinstance(m, nn.Linear)][-1]
            last_linear.bias.fill_(0.5)
    return model.eval()

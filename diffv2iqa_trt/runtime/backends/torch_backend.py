"""The PyTorch reference executor (CPU or CUDA): the parity baseline of every other backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ...model.diffv2iqa import DiffV2IQA


class TorchExecutor:
    name = "torch"

    def __init__(self, model: DiffV2IQA, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def _t(self, a: np.ndarray):  # noqa: ANN202 - torch is imported lazily
        return self._torch.from_numpy(np.require(a, np.float32, ['C', 'W'])).to(self.device)

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.model.restore_step(self._t(x), self._t(y), self._t(gamma), self._t(coef), self._t(z))
        return out.cpu().numpy()

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model.vcg(self._t(x), self._t(y0), self._t(yt1), self._t(yt2)).cpu().numpy()

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model.vda(self._t(x), self._t(y0), self._t(yt1), self._t(yt2)).cpu().numpy()

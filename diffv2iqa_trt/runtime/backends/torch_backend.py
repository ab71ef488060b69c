"""The PyTorch reference executor (CPU or CUDA): the parity baseline of every other backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ...model.diffv2iqa import DiffV2IQA


class TorchExecutor:
    """Handles are torch tensors on the executor's device."""

    name = "torch"

    def __init__(self, model: DiffV2IQA, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def upload(self, array: np.ndarray) -> Any:
        return self._torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(self.device)

    def download(self, handle: Any) -> np.ndarray:
        return handle.detach().cpu().numpy()

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        with self._torch.inference_mode():
            return self.model.restore_step(x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        with self._torch.inference_mode():
            return self.model.vcg(x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        with self._torch.inference_mode():
            return self.model.vda(x, y0, yt1, yt2)

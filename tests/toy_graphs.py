"""Cheap stand-ins for the three graphs, for tests of the orchestration (not of the model)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffv2iqa_trt.runtime.device import ExecutorLauncher


class ToyExecutor:
    """Cheap graphs for sweeping the orchestration: plain arithmetic that depends on every input, on the step (through
    gamma and coef), on the noise row and on pixel positions (so a wrong window, step order, snapshot or buffer changes
    the scores), at a fraction of a model's cost."""

    name = "toy"

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, np.float32)

    def download(self, handle: np.ndarray) -> np.ndarray:
        return np.array(handle)

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
        g, c = gamma[:, None, None, None], coef[:, :, None, None]
        out: np.ndarray = (0.9 * y + 0.1 * np.tanh(x + c[:, 0:1] * y) + 0.05 * g * z).astype(np.float32)
        return out

    @staticmethod
    def _score(x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray, k: float) -> np.ndarray:
        ramp = np.linspace(0.5, 1.5, x.shape[-1] * x.shape[-2], dtype=np.float32).reshape(x.shape[-2:])
        mix = x + 2 * y0 + 3 * yt1 + k * yt2
        out: np.ndarray = (mix * ramp).mean(axis=(1, 2, 3)).astype(np.float32)
        return out

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        return self._score(x, y0, yt1, yt2, 4.0)

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        return self._score(yt2, yt1, y0, x, -1.0)


class FailOnce(ExecutorLauncher):
    """A host launcher whose next `graph` launch fails on its host side (as a TensorRT enqueue error would) once
    `armed` is set; the failure happens when the launch is enqueued, so inside a capture too."""

    def __init__(self, executor: Any, graph: str, error: Exception) -> None:
        super().__init__(executor)
        self.graph, self.error, self.armed = graph, error, False

    def before_enqueue(self, graph: str, *args: Any) -> None:
        if self.armed and graph == self.graph:
            self.armed = False
            raise self.error

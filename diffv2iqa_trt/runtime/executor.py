"""The executor interface: the three graphs of the bundle contract, on NumPy arrays.

Every backend (torch reference, ONNX Runtime, TensorRT) implements these three calls; the pipeline owns the loop,
the snapshot capture, the crops and the fusion, so backends differ only in how they run a graph.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Executor(Protocol):
    name: str

    def restore_step(self, x: np.ndarray, y: np.ndarray, gamma: np.ndarray, coef: np.ndarray,
                     z: np.ndarray) -> np.ndarray:
        """x, y (B,3,H,W); gamma (B,); coef (B,5); z (1,3,H,W) -> y_next (B,3,H,W), all float32."""
        ...

    def vcg(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        """Four (B,3,S,S) crops -> VCG score (B,)."""
        ...

    def vda(self, x: np.ndarray, y0: np.ndarray, yt1: np.ndarray, yt2: np.ndarray) -> np.ndarray:
        """Four (B,3,S,S) crops -> VDA score (B,)."""
        ...

"""The executor interface: the three graphs of the bundle contract, on backend-owned arrays.

Every backend (torch reference, ONNX Runtime, TensorRT) implements these calls; the pipeline owns the loop, the
snapshot capture, the crops and the fusion, so backends differ only in where arrays live and how a graph runs.
Arrays cross the interface as opaque handles: `upload` makes one from a float32 NumPy array, `download` reads one
back. A CPU backend's handle can simply be the NumPy array; a GPU backend keeps the restoration loop on the device
and copies only the snapshots and the scores back.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Handle = Any


class Executor(Protocol):
    name: str

    def upload(self, array: np.ndarray) -> Handle:
        """A float32 host array -> a backend handle."""
        ...

    def download(self, handle: Handle) -> np.ndarray:
        """A backend handle -> a host array."""
        ...

    def restore_step(self, x: Handle, y: Handle, gamma: Handle, coef: Handle, z: Handle) -> Handle:
        """x, y (B,3,H,W); gamma (B,); coef (B, contract.COEF_WIDTH); z (1,3,H,W) -> y_next (B,3,H,W)."""
        ...

    def vcg(self, x: Handle, y0: Handle, yt1: Handle, yt2: Handle) -> Handle:
        """Four (B,3,S,S) crops -> VCG score (B,)."""
        ...

    def vda(self, x: Handle, y0: Handle, yt1: Handle, yt2: Handle) -> Handle:
        """Four (B,3,S,S) crops -> VDA score (B,)."""
        ...

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


def torch_executor_from_bundle(bundle: Any, device: str = "cpu") -> TorchExecutor:
    """The reference executor for a bundle: its embedded checkpoint, or its seeded initialisation."""
    from ...bundle.manifest import BundleError
    from ...config import ModelConfig
    from ...model.checkpoint import load_checkpoint
    from ...model.diffv2iqa import build_model

    model_doc = bundle.manifest["model"]
    config = ModelConfig.from_dict(model_doc["config"])
    if model_doc.get("checkpoint"):
        model, _ = load_checkpoint(bundle.file_path(model_doc["checkpoint"]))
        # The schedule (e.g. a reduced step count chosen at build time) does not touch the weights.
        if model.config.replace(schedule=config.schedule) != config:
            raise BundleError(f"{bundle.root}: the embedded checkpoint's config differs from manifest.json; "
                              "rebuild the bundle")
        model.config = config
    elif model_doc.get("init_seed") is not None:
        model = build_model(config, seed=int(model_doc["init_seed"]))
    else:
        raise BundleError(f"{bundle.root}: the bundle holds no checkpoint, so the torch reference cannot run; "
                          "rebuild it without --no-checkpoint, or use --backend onnxruntime")
    return TorchExecutor(model, device)

"""The PyTorch reference executor (CPU or CUDA): the parity baseline of every other backend, registered with the
runtime as the `torch` backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..bundle.store import Bundle
from ..config import ModelConfig
from ..errors import BackendError, BundleError
from ..model.checkpoint import load_checkpoint
from ..model.diffv2iqa import DiffV2IQA, build_model
from ..runtime.backends import BackendOptions


class TorchExecutor:
    """Handles are torch tensors on the executor's device."""

    name = "torch"

    def __init__(self, model: DiffV2IQA, device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device}: this torch build has no usable CUDA device; use --device cpu")
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise BackendError(f"unknown torch device {device!r} ({exc}); use cpu or cuda") from None
        self.model = model.to(self.device).eval()

    def upload(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(self.device)

    def download(self, handle: Any) -> np.ndarray:
        out: np.ndarray = handle.detach().cpu().numpy()
        return out

    def restore_step(self, x: Any, y: Any, gamma: Any, coef: Any, z: Any) -> Any:
        with torch.inference_mode():
            return self.model.restore_step(x, y, gamma, coef, z)

    def vcg(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        with torch.inference_mode():
            return self.model.vcg(x, y0, yt1, yt2)

    def vda(self, x: Any, y0: Any, yt1: Any, yt2: Any) -> Any:
        with torch.inference_mode():
            return self.model.vda(x, y0, yt1, yt2)




def model_from_bundle(bundle: Bundle) -> DiffV2IQA:
    """The bundle's model: its embedded checkpoint, or its seeded initialisation."""
    section = bundle.manifest.model
    config = ModelConfig.from_dict(dict(section.config))
    if section.checkpoint:
        model, _ = load_checkpoint(bundle.file_path(section.checkpoint))
        # The schedule (e.g. a reduced step count chosen at build time) does not touch the weights.
        if model.config.replace(schedule=config.schedule) != config:
            raise BundleError(f"{bundle.root}: the embedded checkpoint's config differs from manifest.json; "
                              "rebuild the bundle", path=bundle.manifest_path)
        model.config = config
        return model
    if section.init_seed is not None:
        return build_model(config, seed=section.init_seed)
    raise BundleError(f"{bundle.root}: the bundle holds no checkpoint, so the torch reference cannot run; "
                      "rebuild it without --no-checkpoint, or use --backend onnxruntime", path=bundle.manifest_path)


def executor_from_bundle(bundle: Bundle, options: BackendOptions) -> TorchExecutor:
    """The registry's `torch` factory: the fp32 reference on options.device."""
    if options.precision not in (None, "fp32"):
        raise BackendError(f"the torch reference runs fp32 only, not {options.precision}; use --backend onnxruntime "
                           "for other precisions")
    return TorchExecutor(model_from_bundle(bundle), options.device)

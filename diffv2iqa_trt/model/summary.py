"""Parameter and MAC counts per stage, measured by running the graphs on the meta device (no memory, no compute)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from ..errors import ConfigError
from .diffv2iqa import DiffV2IQA


@dataclass(frozen=True)
class ModelSummary:
    preset: str
    crop_size: int
    restore_hw: tuple[int, int]
    steps: int
    params: dict[str, int]
    macs: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(fn: Any, *args: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops() // 2  # one multiply-accumulate = two flops


def summarize(config: ModelConfig, crop_size: int | None = None, restore_hw: tuple[int, int] | None = None,
              steps: int | None = None) -> ModelSummary:
    s = crop_size or config.crop_size
    if s != config.crop_size:
        raise ConfigError(f"preset {config.name} scores {config.crop_size}x{config.crop_size} crops (the ViT's "
                         f"position table is fixed); crop size {s} is not supported")
    h, w = restore_hw or (s, s)
    m = config.unet.size_multiple
    if h % m or w % m or h < s or w < s:
        raise ConfigError(f"restoration size {h}x{w} must be multiples of {m} and at least the crop size {s}")
    n = steps or config.schedule.steps
    with torch.device("meta"):
        model = DiffV2IQA(config).eval()
        iqa = model.iqa
        x = torch.empty(1, 3, h, w)
        crop = torch.empty(1, 3, s, s)
        step_macs = _macs(model.restore_step, x, x, torch.empty(1), torch.empty(1, 5), x)
        vit_macs = _macs(iqa.vit, torch.empty(4, 3, s, s))
        res_macs = _macs(iqa.res, torch.empty(4, 3, s, s))
        vcg_macs = _macs(model.vcg, crop, crop, crop, crop)
        vda_macs = _macs(model.vda, crop, crop, crop, crop)
    backbone_params = {"vit", "res"}
    heads = sum(p.numel() for name, p in iqa.named_parameters() if name.split(".")[0] not in backbone_params)
    params = {
        "restorer U-Net": _count(model.unet),
        "ViT (VCG backbone)": _count(iqa.vit),
        "ResNet (VDA backbone)": _count(iqa.res),
        "DIV2IQA heads": heads,
        "total": _count(model),
    }
    macs = {
        "restorer U-Net, one step": step_macs,
        f"restorer, {n} steps": step_macs * n,
        "VCG: ViT, 4 images": vit_macs,
        "VCG: head": vcg_macs - vit_macs,
        "VDA: ResNet, 4 images": res_macs,
        "VDA: head": vda_macs - res_macs,
        "total per crop": step_macs * n + vcg_macs + vda_macs,
    }
    return ModelSummary(config.name, s, (h, w), n, params, macs)

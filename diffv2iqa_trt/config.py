"""Typed, frozen configuration of the model, the sampler, the crops and the fusion.

Every config round-trips through JSON (`to_dict` / `from_dict`) because checkpoints and bundles store it.
Two presets exist: `paper` (the sizes of the published model) and `tiny` (same architecture, small widths and
crops, for tests and the demo).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class UNetConfig:
    """SR3 restorer U-Net (field names follow the authors' `unet` config block)."""

    in_channel: int = 6
    out_channel: int = 3
    inner_channel: int = 64
    norm_groups: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    attn_res: tuple[int, ...] = (16,)
    res_blocks: int = 2
    dropout: float = 0.2
    # Nominal resolution used only to decide at which level attention sits (SR3 convention).
    image_size: int = 128

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (one stride-2 downsample per extra level)."""
        return int(2 ** (len(self.channel_mults) - 1))


@dataclass(frozen=True)
class ScheduleConfig:
    """Noise schedule and the fixed-step sampler."""

    schedule: str = "cosine"  # "cosine" or "linear"
    steps: int = 50  # inference steps T
    train_steps: int = 2000
    cosine_s: float = 8e-3
    linear_start: float = 1e-6
    linear_end: float = 1e-2
    # Snapshots are taken from y right after the update of step i (i counts down T-1 ... 0).
    capture_t1: int = 5
    capture_t2: int = 10

    @property
    def capture_steps(self) -> tuple[int, int, int]:
        """(y0, y_t1, y_t2) step indices."""
        return (0, self.capture_t1, self.capture_t2)


@dataclass(frozen=True)
class ViTConfig:
    """ViT (timm `vit_base_patch8_224` layout) with block-output taps."""

    img_size: int = 224
    patch_size: int = 8
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    # Blocks (0-based) whose outputs feed the head: x uses all four, y0 the first two, y_t1 the third, y_t2 the fourth.
    taps: tuple[int, int, int, int] = (6, 7, 8, 9)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class ResNetConfig:
    """Bottleneck ResNet (torchvision layout); the default is ResNet50."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64  # channels of the stem and of the first stage's bottleneck
    num_classes: int = 1000  # logits size = RTAB input size


@dataclass(frozen=True)
class HeadConfig:
    """The DIV2IQA head (TABs, Scale-Swin, RTAB, scoring MLPs)."""

    noise_embed_dim: int = 192
    num_tab: int = 2
    swin_depths: tuple[int, ...] = (2, 2)
    swin_heads: tuple[int, ...] = (4, 4)
    window_size: int = 4
    dim_mlp: int = 768
    scale: float = 0.8
    drop: float = 0.1
    # The authors' code snapshot feeds y_t1 where y_t2 belongs; set for checkpoints trained that way.
    feed_t1_as_t2: bool = False


@dataclass(frozen=True)
class IQAConfig:
    vit: ViTConfig = field(default_factory=ViTConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class FusionConfig:
    """score = vcg_weight * score_vcg + vda_weight * score_vda."""

    vcg_weight: float = 1.0
    vda_weight: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    unet: UNetConfig
    schedule: ScheduleConfig
    iqa: IQAConfig
    fusion: FusionConfig
    # Emulate the authors' uint8 PNG round trip of the three snapshots (they trained on it).
    uint8_roundtrip: bool = True

    @property
    def crop_size(self) -> int:
        return self.iqa.vit.img_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_scoring_head(self, *, feed_t1_as_t2: bool | None = None, vcg_weight: float | None = None,
                          vda_weight: float | None = None) -> ModelConfig:
        """This config with the head's y_t1/y_t2 feeding and the fusion weights changed where given."""
        head = self.iqa.head if feed_t1_as_t2 is None else dataclasses.replace(self.iqa.head,
                                                                                feed_t1_as_t2=feed_t1_as_t2)
        weights = {k: v for k, v in (("vcg_weight", vcg_weight), ("vda_weight", vda_weight)) if v is not None}
        return self.replace(iqa=dataclasses.replace(self.iqa, head=head),
                            fusion=dataclasses.replace(self.fusion, **weights))


def _from_dict(cls: type[T], data: Any) -> T:
    """Rebuild a (nested) frozen dataclass from plain JSON data, turning lists back into tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"unknown field(s) for {cls.__name__}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = hints[name]
        ftype = f.type if isinstance(f.type, type) else _CONFIG_TYPES.get(str(f.type))
        if ftype is not None and dataclasses.is_dataclass(ftype):
            kwargs[name] = _from_dict(ftype, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_CONFIG_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (UNetConfig, ScheduleConfig, ViTConfig, ResNetConfig, HeadConfig, IQAConfig, FusionConfig)
}


def paper_config() -> ModelConfig:
    """The published sizes (MODEL_SPEC). The authors' code snapshot scores with the VDA branch only."""
    return ModelConfig(
        name="paper",
        unet=UNetConfig(),
        schedule=ScheduleConfig(),
        iqa=IQAConfig(),
        fusion=FusionConfig(vcg_weight=0.0, vda_weight=1.0),
    )


def tiny_config() -> ModelConfig:
    """Same architecture at small widths and 64x64 crops: the demo and test model."""
    return ModelConfig(
        name="tiny",
        unet=UNetConfig(
            inner_channel=16,
            norm_groups=8,
            channel_mults=(1, 1, 2, 2, 2),
            attn_res=(8,),
            res_blocks=1,
            image_size=64,
        ),
        schedule=ScheduleConfig(steps=12, capture_t1=2, capture_t2=4),
        iqa=IQAConfig(
            vit=ViTConfig(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=64,
                          taps=(0, 1, 2, 3)),
            resnet=ResNetConfig(layers=(1, 1, 1, 1), width=8, num_classes=64),
            head=HeadConfig(noise_embed_dim=8, swin_heads=(2, 2), dim_mlp=64),
        ),
        fusion=FusionConfig(vcg_weight=0.5, vda_weight=0.5),
    )


PRESETS = {"paper": paper_config, "tiny": tiny_config}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


CROP_POLICY = re.compile(r"^(center|five|resize224|grid:[1-9][0-9]*)$")
MODES = ("faithful", "crops")


@dataclass(frozen=True)
class ScoringConfig:
    """How an image becomes crops and crops become one score."""

    crops: str = "center"  # center | five | grid:N (N x N) | resize224 (squash the image to the crop size)
    mode: str = "crops"  # crops: restore only the crops; faithful: restore the whole image, crop afterwards
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if not CROP_POLICY.match(self.crops):
            raise ConfigError(f"unknown crop policy {self.crops!r}; use center, five, grid:N or resize224")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")

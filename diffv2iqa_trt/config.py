"""Typed, frozen configuration of the model, the sampler, the crops and the fusion.

Every config round-trips through JSON (`to_dict` / `from_dict`) because checkpoints and bundles store it.
Two presets exist: `paper` (the sizes of the published model) and `tiny` (same architecture, small widths and
crops, for tests and the demo).

Model configs arrive from files (checkpoint metadata, bundle manifests), so `ModelConfig.validate` checks every field
before a model is built: its type, its range, the divisibility rules the layers assume, and the size of the weights
the config would allocate. `from_dict` and `preset` validate; a problem is a ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# --- Bounds of a model config --------------------------------------------------------------------------------------
# Far above the `paper` preset (its value in brackets), low enough that a hostile or mistyped config is refused
# before it asks for gigabytes. The total size of the weights is bounded separately (MAX_STATE_BYTES): the per-field
# caps alone still multiply up to impossible models.
MAX_CHANNELS = 512  # unet.inner_channel [64], resnet.width [64]
MAX_CHANNEL_MULT = 16  # each unet.channel_mults entry [8]
MAX_LEVELS = 8  # len(unet.channel_mults) [5], len(unet.attn_res) [1], len(head.swin_depths) [2]
MAX_BLOCKS = 16  # unet.res_blocks [2], head.num_tab [2]
MAX_IMAGE_SIZE = 1024  # unet.image_size [128], unet.attn_res entries, vit.img_size (the crop size) [224],
# head.window_size [4]
MAX_TOKENS = 4096  # vit tokens (img_size / patch_size)**2 [784]: the head's blocks are quadratic in it
MAX_EMBED_DIM = 4096  # vit.embed_dim [768], head.noise_embed_dim [192]
MAX_MLP_DIM = 16384  # head.dim_mlp [768]
MAX_MLP_RATIO = 16.0  # vit.mlp_ratio [4]
MAX_DEPTH = 64  # vit.depth [12], each resnet.layers entry [6], each head.swin_depths entry [2]
MAX_HEADS = 256  # vit.num_heads [12], each head.swin_heads entry [4]
MAX_CLASSES = 100_000  # vit.num_classes [1000], resnet.num_classes [1000]
MAX_STEPS = 10_000  # schedule.steps [50], schedule.train_steps [2000], a --steps override
MAX_NAME = 200  # characters of the config name ["paper"]
MAX_STATE_BYTES = 4 * 2**30  # the model's state dict (fp32 weights and buffers) [1.1 GB]

# --- Bounds of a scoring config ------------------------------------------------------------------------------------
MAX_GRID = 64  # grid:N crops at most N = 64, i.e. 4096 crops per image
SEED_LIMIT = 2**64  # noise seeds are one 64-bit word of the Philox key (runtime/noise.py)

# The restore_step contract: the U-Net sees x and y (3 channels each) and predicts the noise of y.
UNET_IN_CHANNELS = 6
UNET_OUT_CHANNELS = 3
_VDA_WIDTH = 32  # model/iqa.py: channels of conv_s1 and of the VDA scoring MLPs


def _show(value: Any) -> str:
    """repr of a value from a file, kept short (it may be a megabyte of JSON)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(path: str, value: Any, rule: str) -> NoReturn:
    raise ConfigError(f"model config field {path} = {_show(value)} is invalid: {rule}; fix the config")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no integer here


def _is_number(value: Any) -> bool:
    return (isinstance(value, float) or _is_int(value)) and math.isfinite(value)


def _type_problem(annotation: str, value: Any) -> str | None:
    """Why `value` cannot be the value of a field annotated `annotation`; None if it can."""
    if annotation == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if annotation == "int":
        return None if _is_int(value) else "must be an integer"
    if annotation == "float":
        return None if _is_number(value) else "must be a finite number"
    if annotation == "str":
        return None if isinstance(value, str) else "must be a string"
    if annotation.startswith("tuple[int"):
        length = None if annotation.endswith("...]") else annotation.count("int")
        wanted = f"a list of {length} integers" if length else "a list of integers"
        ok = isinstance(value, tuple) and all(_is_int(v) for v in value) and length in (None, len(value))
        return None if ok else f"must be {wanted}"
    if annotation in _CONFIG_TYPES:
        return None if isinstance(value, _CONFIG_TYPES[annotation]) else "must be an object"
    raise AssertionError(f"config.py has no type rule for {annotation!r}")  # a new field type needs one


def _annotation(f: dataclasses.Field[Any]) -> str:
    return f.type.__name__ if isinstance(f.type, type) else str(f.type)


def _check_types(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _type_problem(_annotation(f), value)
        if problem is not None:
            _invalid(_join(path, f.name), value, f"{problem} (got {type(value).__name__})")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _in_range(path: str, value: int | float, lo: int | float, hi: int | float) -> None:
    if not lo <= value <= hi:
        _invalid(path, value, f"must be in [{lo}, {hi}]")


def _entries_in_range(path: str, values: Sequence[int], lo: int, hi: int, min_len: int, max_len: int) -> None:
    if not min_len <= len(values) <= max_len:
        _invalid(path, values, f"must have {min_len} to {max_len} entries")
    for i, v in enumerate(values):
        _in_range(f"{path}[{i}]", v, lo, hi)


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

    def validate(self, path: str = "unet") -> None:
        _check_types(self, path)
        if self.in_channel != UNET_IN_CHANNELS:
            _invalid(f"{path}.in_channel", self.in_channel, f"must be {UNET_IN_CHANNELS} (x and y, RGB each)")
        if self.out_channel != UNET_OUT_CHANNELS:
            _invalid(f"{path}.out_channel", self.out_channel, f"must be {UNET_OUT_CHANNELS} (the noise of RGB y)")
        _in_range(f"{path}.inner_channel", self.inner_channel, 2, MAX_CHANNELS)
        if self.inner_channel % 2:  # the sinusoidal noise embedding is half sines, half cosines
            _invalid(f"{path}.inner_channel", self.inner_channel, "must be even")
        _entries_in_range(f"{path}.channel_mults", self.channel_mults, 1, MAX_CHANNEL_MULT, 1, MAX_LEVELS)
        _entries_in_range(f"{path}.attn_res", self.attn_res, 1, MAX_IMAGE_SIZE, 0, MAX_LEVELS)
        _in_range(f"{path}.norm_groups", self.norm_groups, 1, self.inner_channel)
        widths = tuple(self.inner_channel * m for m in self.channel_mults)
        if any(w % self.norm_groups for w in widths):  # GroupNorm splits every level's channels into groups
            _invalid(f"{path}.norm_groups", self.norm_groups,
                     f"must divide every level's width inner_channel * channel_mults = {widths}")
        _in_range(f"{path}.res_blocks", self.res_blocks, 1, MAX_BLOCKS)
        if not 0.0 <= self.dropout < 1.0:
            _invalid(f"{path}.dropout", self.dropout, "must be in [0, 1)")
        _in_range(f"{path}.image_size", self.image_size, 1, MAX_IMAGE_SIZE)


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

    def validate(self, path: str = "schedule") -> None:
        _check_types(self, path)
        if self.schedule not in ("cosine", "linear"):
            _invalid(f"{path}.schedule", self.schedule, "must be 'cosine' or 'linear'")
        _in_range(f"{path}.steps", self.steps, 2, MAX_STEPS)
        _in_range(f"{path}.train_steps", self.train_steps, 1, MAX_STEPS)
        _in_range(f"{path}.cosine_s", self.cosine_s, 0.0, 1.0)
        # Betas of 0 or 1 make the sampler's coefficients divide by zero.
        if not 0.0 < self.linear_start < 1.0:
            _invalid(f"{path}.linear_start", self.linear_start, "must be in (0, 1)")
        if not self.linear_start <= self.linear_end < 1.0:
            _invalid(f"{path}.linear_end", self.linear_end, f"must be in [linear_start = {self.linear_start}, 1)")
        for name in ("capture_t1", "capture_t2"):  # snapshots come after steps that exist, but not the last one
            _in_range(f"{path}.{name}", getattr(self, name), 1, self.steps - 1)
        if self.capture_t1 == self.capture_t2:  # two snapshots of one step: the manifest refuses it too
            _invalid(f"{path}.capture_t2", self.capture_t2, "must differ from capture_t1")


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

    def validate(self, path: str = "iqa.vit") -> None:
        _check_types(self, path)
        _in_range(f"{path}.img_size", self.img_size, 1, MAX_IMAGE_SIZE)
        _in_range(f"{path}.patch_size", self.patch_size, 1, self.img_size)
        if self.img_size % self.patch_size:
            _invalid(f"{path}.patch_size", self.patch_size, f"must divide img_size = {self.img_size}")
        if self.tokens > MAX_TOKENS:
            _invalid(f"{path}.patch_size", self.patch_size,
                     f"gives {self.tokens} tokens ((img_size / patch_size)**2), more than {MAX_TOKENS}")
        _in_range(f"{path}.embed_dim", self.embed_dim, 1, MAX_EMBED_DIM)
        _in_range(f"{path}.depth", self.depth, 1, MAX_DEPTH)
        _in_range(f"{path}.num_heads", self.num_heads, 1, MAX_HEADS)
        if self.embed_dim % self.num_heads:
            _invalid(f"{path}.num_heads", self.num_heads, f"must divide embed_dim = {self.embed_dim}")
        if not 0.0 < self.mlp_ratio <= MAX_MLP_RATIO or int(self.embed_dim * self.mlp_ratio) < 1:
            _invalid(f"{path}.mlp_ratio", self.mlp_ratio,
                     f"must be in (0, {MAX_MLP_RATIO}] with embed_dim * mlp_ratio >= 1")
        _in_range(f"{path}.num_classes", self.num_classes, 1, MAX_CLASSES)
        _entries_in_range(f"{path}.taps", self.taps, 0, self.depth - 1, 4, 4)


@dataclass(frozen=True)
class ResNetConfig:
    """Bottleneck ResNet (torchvision layout); the default is ResNet50."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64  # channels of the stem and of the first stage's bottleneck
    num_classes: int = 1000  # logits size = RTAB input size

    def validate(self, path: str = "iqa.resnet") -> None:
        _check_types(self, path)
        _entries_in_range(f"{path}.layers", self.layers, 1, MAX_DEPTH, 4, 4)
        _in_range(f"{path}.width", self.width, 1, MAX_CHANNELS)
        _in_range(f"{path}.num_classes", self.num_classes, 1, MAX_CLASSES)


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

    def validate(self, path: str = "iqa.head") -> None:
        _check_types(self, path)
        _in_range(f"{path}.noise_embed_dim", self.noise_embed_dim, 1, MAX_EMBED_DIM)
        _in_range(f"{path}.num_tab", self.num_tab, 0, MAX_BLOCKS)
        _entries_in_range(f"{path}.swin_depths", self.swin_depths, 1, MAX_DEPTH, 1, MAX_LEVELS)
        if len(self.swin_heads) != len(self.swin_depths):  # one head count per Scale-Swin stage
            _invalid(f"{path}.swin_heads", self.swin_heads,
                     f"must have one entry per swin_depths entry ({len(self.swin_depths)})")
        _entries_in_range(f"{path}.swin_heads", self.swin_heads, 1, MAX_HEADS, 1, MAX_LEVELS)
        _in_range(f"{path}.window_size", self.window_size, 1, MAX_IMAGE_SIZE)
        _in_range(f"{path}.dim_mlp", self.dim_mlp, 1, MAX_MLP_DIM)
        if not 0.0 <= self.drop < 1.0:
            _invalid(f"{path}.drop", self.drop, "must be in [0, 1)")


@dataclass(frozen=True)
class IQAConfig:
    vit: ViTConfig = field(default_factory=ViTConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def validate(self, path: str = "iqa") -> None:
        _check_types(self, path)
        self.vit.validate(f"{path}.vit")
        self.resnet.validate(f"{path}.resnet")
        self.head.validate(f"{path}.head")
        e, head, grid = self.vit.embed_dim, self.head, self.vit.grid
        if e % 2:  # the second Scale-Swin runs at half the width
            _invalid(f"{path}.vit.embed_dim", e, "must be even (the head halves it)")
        for i, heads in enumerate(head.swin_heads):  # both Scale-Swins split their width into these heads
            if e % heads or (e // 2) % heads:
                _invalid(f"{path}.head.swin_heads[{i}]", heads,
                         f"must divide vit.embed_dim = {e} and its half {e // 2}")
        if grid > head.window_size and grid % head.window_size:  # a grid no larger than a window is one window
            _invalid(f"{path}.head.window_size", head.window_size,
                     f"must divide the token grid vit.img_size / vit.patch_size = {grid} (or be at least it)")


@dataclass(frozen=True)
class FusionConfig:
    """score = vcg_weight * score_vcg + vda_weight * score_vda."""

    vcg_weight: float = 1.0
    vda_weight: float = 1.0

    def validate(self, path: str = "fusion") -> None:
        _check_types(self, path)


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
    def from_dict(cls, data: Any) -> ModelConfig:
        """Rebuild a config from its JSON data and validate it; any problem is a ConfigError naming the field."""
        config = _from_dict(cls, data, "")
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError (naming the field and its allowed values) unless a model can be built from this config
        within the bounds above. Cheap: nothing is allocated."""
        _check_types(self, "")
        if not 1 <= len(self.name) <= MAX_NAME:
            _invalid("name", self.name, f"must have 1 to {MAX_NAME} characters")
        self.unet.validate("unet")
        self.schedule.validate("schedule")
        self.iqa.validate("iqa")
        self.fusion.validate("fusion")
        if self.crop_size % self.unet.size_multiple:  # the U-Net restores crop-sized images
            _invalid("iqa.vit.img_size", self.crop_size,
                     f"the crop size must be a multiple of the U-Net's size multiple {self.unet.size_multiple} "
                     f"(2 ** (len(unet.channel_mults) - 1))")
        size = state_dict_bytes(self)
        if size > MAX_STATE_BYTES:
            raise ConfigError(f"model config {self.name!r} describes a model of {size / 2**30:.1f} GiB of weights, "
                              f"more than the {MAX_STATE_BYTES / 2**30:.0f} GiB this toolkit accepts; fix the "
                              "config (widths, depths, token count)")

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


def _from_dict(cls: type[T], data: Any, path: str) -> T:
    """Rebuild a (nested) frozen dataclass from plain JSON data, turning lists back into tuples (types are checked by
    `validate`)."""
    where = path or "the model config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object ({cls.__name__}), got {type(data).__name__}; fix the config")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(_join(path, str(k)) for k in data if k not in fields)
    if unknown:
        raise ConfigError(f"unknown model config field(s) {', '.join(unknown[:10])}; remove them, or use the toolkit "
                          "release that wrote the config")
    missing = [_join(path, name) for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"model config field(s) {', '.join(missing)} missing; fix the config")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = _CONFIG_TYPES.get(_annotation(fields[name]))
        if ftype is not None:
            kwargs[name] = _from_dict(ftype, value, _join(path, name))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_CONFIG_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (UNetConfig, ScheduleConfig, ViTConfig, ResNetConfig, HeadConfig, IQAConfig, FusionConfig)
}


# --- Size of the state dict, from the config alone -----------------------------------------------------------------
# These mirror the constructors in model/ (tests/test_hostile_build.py checks them against models built on the meta
# device), so a config is sized without importing torch or allocating anything. Counts are (fp32, int64) elements.

def _conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def _unet_elements(u: UNetConfig) -> int:
    c, mults = u.inner_channel, u.channel_mults

    def res(cin: int, cout: int, attn: bool) -> int:
        n = _linear(c, cout) + 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3)
        n += _conv(cin, cout, 1) if cin != cout else 0
        n += 2 * cout + _conv(cout, 3 * cout, 1, bias=False) + _conv(cout, cout, 1) if attn else 0
        return n

    total = _linear(c, 4 * c) + _linear(4 * c, c) + _conv(u.in_channel, c, 3)
    pre, skips, res_now = c, [c], u.image_size
    for level, mult in enumerate(mults):
        for _ in range(u.res_blocks):
            total += res(pre, c * mult, res_now in u.attn_res)
            pre = c * mult
            skips.append(pre)
        if level != len(mults) - 1:
            total += _conv(pre, pre, 3)
            skips.append(pre)
            res_now //= 2
    total += res(pre, pre, True) + res(pre, pre, False)
    for level in reversed(range(len(mults))):
        for _ in range(u.res_blocks + 1):
            total += res(pre + skips.pop(), c * mults[level], res_now in u.attn_res)
            pre = c * mults[level]
        if level > 0:
            total += _conv(pre, pre, 3)
            res_now *= 2
    return total + 2 * pre + _conv(pre, u.out_channel, 3)


def _vit_elements(v: ViTConfig) -> int:
    e, hidden = v.embed_dim, int(v.embed_dim * v.mlp_ratio)
    block = 4 * e + _linear(e, 3 * e) + _linear(e, e) + _linear(e, hidden) + _linear(hidden, e)
    return e + (v.tokens + 1) * e + _conv(3, e, v.patch_size) + v.depth * block + 2 * e + _linear(e, v.num_classes)


def _resnet_elements(r: ResNetConfig) -> tuple[int, int]:
    """(fp32, int64) elements; every BatchNorm holds weight, bias, running mean and variance, and a batch counter."""
    bn_count = 1
    fp32 = _conv(3, r.width, 7, bias=False) + 4 * r.width
    inplanes = r.width
    for i, blocks in enumerate(r.layers):
        planes = r.width * 2**i
        for j in range(blocks):
            out = planes * 4
            fp32 += _conv(inplanes, planes, 1, False) + _conv(planes, planes, 3, False) + _conv(planes, out, 1, False)
            fp32 += 4 * (planes + planes + out)
            bn_count += 3
            if (i > 0 and j == 0) or inplanes != out:
                fp32 += _conv(inplanes, out, 1, False) + 4 * out
                bn_count += 1
            inplanes = out
    return fp32 + _linear(inplanes, r.num_classes), bn_count


def _swin_elements(h: HeadConfig, dim: int, grid: int) -> tuple[int, int]:
    """(fp32, int64) elements of one Scale-Swin at width `dim` over a grid x grid token map."""
    one_window = grid <= h.window_size
    ws = grid if one_window else h.window_size
    n = ws * ws
    fp32, int64 = _conv(dim, dim, 3), 0  # `downsample`, unused but in checkpoints
    for depth, heads in zip(h.swin_depths, h.swin_heads, strict=True):
        fp32 += _conv(dim, dim, 3)
        block = 4 * dim + (2 * ws - 1) ** 2 * heads + _linear(dim, 3 * dim) + _linear(dim, dim)
        block += _linear(dim, h.dim_mlp) + _linear(h.dim_mlp, dim)
        fp32 += depth * block
        int64 += depth * n * n  # relative_position_index
        if not one_window and h.window_size // 2 > 0:  # odd blocks are shifted and keep a mask buffer
            fp32 += (depth // 2) * (grid // ws) ** 2 * n * n
    return fp32, int64


def state_dict_bytes(config: ModelConfig) -> int:
    """Bytes of the state dict of `DiffV2IQA(config)` (weights and buffers), computed without building it.

    Meaningful for configs whose fields passed their own checks (`ModelConfig.validate` calls it last)."""
    iqa, head = config.iqa, config.iqa.head
    e, d, t = iqa.vit.embed_dim, head.noise_embed_dim, iqa.vit.tokens

    def score_mlp(dim: int) -> int:
        return _linear(dim, dim) + _linear(dim, 1)

    fp32 = _unet_elements(config.unet) + _vit_elements(iqa.vit)
    fp32 += 2 * head.num_tab * 3 * _linear(t, t) + 8 * d  # tablock1/2, noise_embedding, noise_levels
    fp32 += _conv(8 * e + 4 * d, 3 * e, 1) + 4 * 3 * e + _conv(3 * e, e, 1) + _conv(e, e // 2, 1)  # conv1, bn1, ...
    fp32 += 2 * score_mlp(e // 2) + 4 * _linear(iqa.resnet.num_classes, t) + _conv(1, _VDA_WIDTH, 1)
    fp32 += 3 * score_mlp(_VDA_WIDTH)
    int64 = 1  # bn1's batch counter
    for part in (_resnet_elements(iqa.resnet), _swin_elements(head, e, iqa.vit.grid),
                 _swin_elements(head, e // 2, iqa.vit.grid)):
        fp32, int64 = fp32 + part[0], int64 + part[1]
    return 4 * fp32 + 8 * int64


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
    """A preset's config, validated."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {_show(name)}; choose one of {', '.join(sorted(PRESETS))}")
    config = PRESETS[name]()
    config.validate()
    return config


CROP_POLICY = re.compile(r"^(center|five|resize224|grid:[0-9]+)$")
MODES = ("faithful", "crops")


def grid_size(policy: object) -> int | None:
    """N of a `grid:N` crop policy, None for center, five and resize224; ConfigError for any other policy or an N
    outside [1, MAX_GRID]. The one parser of the crop-policy grammar (config, runtime and scorer all use it)."""
    if not isinstance(policy, str) or not CROP_POLICY.match(policy):
        raise ConfigError(f"unknown crop policy {_show(policy)}; use center, five, grid:N or resize224")
    if not policy.startswith("grid:"):
        return None
    digits = policy.removeprefix("grid:")
    n = int(digits) if len(digits) <= len(str(MAX_GRID)) else MAX_GRID + 1  # no int() of 10**5 digits
    if n < 1:
        raise ConfigError(f"crop policy {_show(policy)} has no crops: N must be between 1 and {MAX_GRID}")
    if n > MAX_GRID:
        raise ConfigError(f"crop policy {_show(policy)} asks for too many crops; use grid:N with N at most {MAX_GRID} "
                          f"(N must be between 1 and {MAX_GRID}: {MAX_GRID ** 2} crops per image)")
    return n


def check_seed(seed: object) -> int:
    """A noise seed as an int in [0, 2**64); ConfigError otherwise (bools and floats such as 1e23 are no seeds).
    NumPy integers are accepted."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < SEED_LIMIT:
        raise ConfigError(f"noise seed {_show(seed)} is out of range; use an integer in [0, 2**64) (--seed)")
    return int(seed)


@dataclass(frozen=True)
class ScoringConfig:
    """How an image becomes crops and crops become one score (validated at construction)."""

    crops: str = "center"  # center | five | grid:N (N x N) | resize224 (squash the image to the crop size)
    mode: str = "crops"  # crops: restore only the crops; faithful: restore the whole image, crop afterwards
    noise_seed: int = 0

    def __post_init__(self) -> None:
        grid_size(self.crops)
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError(f"unknown mode {_show(self.mode)}; use one of {', '.join(MODES)}")
        check_seed(self.noise_seed)

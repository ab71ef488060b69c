"""SR3 restorer U-Net (the noise predictor eps(x_cond || y_noisy, gamma)).

Re-implemented from the structure of the SR3 U-Net that DiffV2IQA trains
(Janspiry/Image-Super-Resolution-via-Iterative-Refinement, model/sr3_modules/unet.py). Submodule attribute names
and their nesting are kept identical to that file so the authors' checkpoints load by name (after stripping the
`denoise_fn.` prefix of the GaussianDiffusion wrapper); the class names here are our own.
`diffv2iqa_trt/model/authors_layout/sr3_unet_paper.json` holds the expected key layout.

Export notes: the forward pass has no data-dependent control flow (the layer kinds are fixed at construction),
no data-dependent shapes, and the attention is written with matmul, so it exports to ONNX with dynamic batch and
dynamic H/W (multiples of `UNetConfig.size_multiple`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffv2iqa_trt.config import UNetConfig

__all__ = ["UNet", "noise_level_embedding"]


def noise_level_embedding(noise_level: Tensor, dim: int) -> Tensor:
    """SR3/WaveGrad sinusoidal encoding of the continuous noise level gamma: (B,) or (B, 1) -> (B, dim).

    With k = 0 .. dim/2 - 1: f_k = exp(-ln(1e4) * k / (dim/2)), enc = [sin(gamma f_k) ..., cos(gamma f_k) ...]
    (all sines first, then all cosines; gamma is used as is, no scaling). The float ops follow the authors' order
    (arange / count, then * -ln(1e4), then exp) so the result is bit-identical to theirs.
    """
    count = dim // 2
    step = torch.arange(count, dtype=noise_level.dtype, device=noise_level.device) / count
    freqs = torch.exp(-math.log(1e4) * step)
    angles = noise_level.reshape(-1, 1) * freqs.unsqueeze(0)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class _SinusoidalEmbedding(nn.Module):
    """Parameter-free slot 0 of `noise_level_mlp` (keeps the authors' Sequential indices 1 and 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: Tensor) -> Tensor:
        return noise_level_embedding(noise_level, self.dim)


class _Swish(nn.Module):
    """x * sigmoid(x), spelled out so the exported graph is the plain Sigmoid/Mul pair."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class _NoiseShift(nn.Module):
    """Adds a per-channel shift Linear(emb) to the feature map (SR3 FeatureWiseAffine without affine level)."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        # Nested Sequential only to reproduce the key `noise_func.noise_func.0.*`.
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        out: Tensor = x + self.noise_func(emb)[:, :, None, None]
        return out


class _NormActConv(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> conv3x3; parameters live at `block.0` and `block.3`."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            _Swish(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return out


class _ResBlock(nn.Module):
    """h = block2(block1(x) + Linear(emb)) + skip(x); dropout only inside block2, as in SR3."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.noise_func = _NoiseShift(emb_dim, dim_out)
        self.block1 = _NormActConv(dim, dim_out, groups)
        self.block2 = _NormActConv(dim_out, dim_out, groups, dropout=dropout)
        self.res_conv: nn.Module = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.block2(self.noise_func(self.block1(x), emb))
        out: Tensor = h + self.res_conv(x)
        return out


class _SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual.

    q, k, v are the three consecutive C-channel slices of a bias-free 1x1 conv on GroupNorm(x); the logits are
    q^T k / sqrt(C) over all H*W positions, softmax over the key positions, out = conv1x1(v attn^T) + x.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)
        self.scale = math.sqrt(channels)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)  # each (B, C, HW)
        # Divide after the product (not pre-scale q) to keep the authors' rounding.
        logits = torch.matmul(q.transpose(1, 2), k) / self.scale  # (B, HW_query, HW_key)
        attn = torch.softmax(logits, dim=-1)
        out = torch.matmul(v, attn.transpose(1, 2))  # (B, C, HW_query)
        result: Tensor = self.out(out.reshape(x.shape)) + x
        return result


class _ResAttnBlock(nn.Module):
    """ResBlock optionally followed by self-attention (`res_block`, `attn`)."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float, with_attn: bool) -> None:
        super().__init__()
        self.with_attn = with_attn
        self.res_block = _ResBlock(dim, dim_out, emb_dim, groups, dropout)
        if with_attn:
            self.attn = _SelfAttention(dim_out, groups)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res_block(x, emb)
        if self.with_attn:
            x = self.attn(x)
        return x


class _Downsample(nn.Module):
    """Stride-2 conv3x3 (`conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class _Upsample(nn.Module):
    """Nearest x2 then conv3x3 (`conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class UNet(nn.Module):
    """SR3 U-Net: forward(x (B, in_channel, H, W), noise_level gamma (B,) or (B, 1)) -> eps (B, out_channel, H, W).

    Layout (key names as in the authors' checkpoints):
    `noise_level_mlp` = [sinusoid(C), Linear(C, 4C), Swish, Linear(4C, C)] with C = inner_channel;
    `downs` = [conv3x3 in->C] + per level `res_blocks` ResBlocks (+ attention where the nominal resolution, starting
    at image_size and halved per level, is in attn_res) and a stride-2 Downsample except after the last level;
    `mid` = [ResBlock+attention, ResBlock]; `ups` = per level (deepest first) res_blocks+1 ResBlocks, each fed the
    concatenation of x and the latest unused encoder output, and an Upsample except after the top level;
    `final_conv` = GroupNorm -> Swish -> conv3x3 -> out_channel.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.inner_channel
        groups = config.norm_groups
        mults = tuple(config.channel_mults)
        attn_res = tuple(config.attn_res)
        emb = c

        self.noise_level_mlp = nn.Sequential(
            _SinusoidalEmbedding(c), nn.Linear(c, c * 4), _Swish(), nn.Linear(c * 4, c)
        )

        def res(cin: int, cout: int, attn: bool) -> _ResAttnBlock:
            return _ResAttnBlock(cin, cout, emb, groups, config.dropout, attn)

        pre = c
        skip_channels = [pre]  # channels of every encoder output, consumed in reverse by the decoder
        now_res = config.image_size
        downs: list[nn.Module] = [nn.Conv2d(config.in_channel, c, kernel_size=3, padding=1)]
        for level, mult in enumerate(mults):
            width = c * mult
            for _ in range(config.res_blocks):
                downs.append(res(pre, width, now_res in attn_res))
                skip_channels.append(width)
                pre = width
            if level != len(mults) - 1:
                downs.append(_Downsample(pre))
                skip_channels.append(pre)
                now_res //= 2
        self.downs = nn.ModuleList(downs)

        self.mid = nn.ModuleList([res(pre, pre, True), res(pre, pre, False)])

        ups: list[nn.Module] = []
        for level in reversed(range(len(mults))):
            width = c * mults[level]
            for _ in range(config.res_blocks + 1):
                ups.append(res(pre + skip_channels.pop(), width, now_res in attn_res))
                pre = width
            if level > 0:
                ups.append(_Upsample(pre))
                now_res *= 2
        self.ups = nn.ModuleList(ups)
        if skip_channels:
            raise AssertionError("decoder did not consume every encoder output")

        self.final_conv = _NormActConv(pre, config.out_channel, groups)

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        emb = self.noise_level_mlp(noise_level.to(x.dtype))

        skips: list[Tensor] = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, _ResAttnBlock) else layer(x)
            skips.append(x)

        for layer in self.mid:
            x = layer(x, emb)

        for layer in self.ups:
            # ResBlocks take the concatenation with the latest unused encoder output; Upsample layers do not.
            x = layer(torch.cat((x, skips.pop()), dim=1), emb) if isinstance(layer, _ResAttnBlock) else layer(x)

        out: Tensor = self.final_conv(x)
        return out

"""Head blocks of DIV2IQA: TAB, RTAB and MANIQA's Scale-Swin transformer.

Module and parameter names follow the authors' code (DiffV2IQA `models/div2iqa.py`, MANIQA `models/swin.py`) so that
their state dicts load with strict=True; the relative-position index and the shifted-window masks are persistent
buffers there, hence here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TABlock(nn.Module):
    """Transposed attention: on x of shape (B, C, N) the C channels attend to each other (C x C attention map).

    The output goes through `(attn @ v).transpose(1, 2).reshape(B, C, N)`, which scrambles the layout whenever
    C != N. The trained weights expect exactly that, so it is kept.
    """

    def __init__(self, dim: int, drop: float = 0.1) -> None:
        super().__init__()
        self.c_q = nn.Linear(dim, dim)
        self.c_k = nn.Linear(dim, dim)
        self.c_v = nn.Linear(dim, dim)
        self.norm_fact = dim**-0.5
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.norm_fact, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, c, n)
        result: Tensor = x + self.proj_drop(out)
        return result


class RTABlock(nn.Module):
    """Restoration attention (authors' `RQABlock`) on backbone vectors g (B, in_dim) -> (B, tokens, 1).

    Query, key and value come from the distances of the distorted image's features to those of the restored image
    and of the two intermediate snapshots; the residual is a projection of the distorted features.
    """

    def __init__(self, in_dim: int = 1000, tokens: int = 784, drop: float = 0.1) -> None:
        super().__init__()
        self.x_linear = nn.Linear(in_dim, tokens)
        self.c_q = nn.Linear(in_dim, tokens)
        self.c_k = nn.Linear(in_dim, tokens)
        self.c_v = nn.Linear(in_dim, tokens)
        # The scale uses the input width, not the token count (as the authors did).
        self.norm_fact = in_dim**-0.5
        self.proj_drop = nn.Dropout(drop)

    def forward(self, g_x: Tensor, g_0: Tensor, g_t1: Tensor, g_t2: Tensor) -> Tensor:
        # Each projection becomes `tokens` tokens of width 1.
        r = self.x_linear(g_x).unsqueeze(-1)
        q = self.c_q(torch.abs(g_x - g_0)).unsqueeze(-1)
        k = self.c_k(torch.abs(g_x - g_t1)).unsqueeze(-1)
        v = self.c_v(torch.abs(g_x - g_t2)).unsqueeze(-1)
        b, n, c = r.shape
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.norm_fact, dim=-1)
        # With one channel the transpose-reshape is a no-op on values; kept to mirror the TAB formulation.
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        result: Tensor = r + self.proj_drop(out)
        return result


class DropPath(nn.Module):
    """Stochastic depth per sample (training only; identity in eval and in exported graphs)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        out: Tensor = self.drop(self.fc2(x))
        return out


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _relative_position_index(wh: int, ww: int) -> Tensor:
    """(wh*ww, wh*ww) index into the (2wh-1)(2ww-1) bias table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)


def _shift_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """(nW, ws*ws, ws*ws) additive mask (0 / -100) that stops attention across the seams of the cyclic shift."""

    def bands(n: int) -> Tensor:
        # 0 for the untouched part, 1 for the last window before the wrap, 2 for the wrapped-in strip.
        i = torch.arange(n)
        return (i >= n - ws).long() + (i >= n - shift).long()

    region = (bands(h)[:, None] * 3 + bands(w)[None, :]).float()
    win = window_partition(region[None, :, :, None], ws).squeeze(-1)  # (nW, ws*ws)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(wh, ww))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        index: Tensor = self.relative_position_index  # type: ignore[assignment]  # a registered buffer
        bias = self.relative_position_bias_table[index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, n, n)
        attn = self.attn_drop(torch.softmax(attn, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        result: Tensor = self.proj_drop(self.proj(out))
        return result


class SwinBlock(nn.Module):
    """(Shifted-)window attention block on (B, H*W, C) tokens."""

    attn_mask: Tensor | None

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        dim_mlp: int = 1024,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.dim_mlp = dim_mlp
        if min(input_resolution) <= window_size:
            # MANIQA: a grid no larger than the window becomes one window, unshifted.
            self.shift_size = 0
            self.window_size = min(input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError("shift_size must lie in [0, window_size)")
        h, w = input_resolution
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"grid {input_resolution} is not a multiple of window {self.window_size}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, (self.window_size, self.window_size), num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim_mlp, drop)
        mask = _shift_mask(h, w, self.window_size, self.shift_size) if self.shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).reshape(b, h, w, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask=self.attn_mask)
        y = window_reverse(y, ws, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class BasicLayer(nn.Module):
    """One Scale-Swin stage: `depth` blocks alternating plain / shifted windows, then conv3x3 + ReLU."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int = 7,
        dim_mlp: int = 1024,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] | float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.input_resolution = input_resolution
        self.depth = depth
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                input_resolution,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                dim_mlp=dim_mlp,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rates[i],
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        h, w = self.input_resolution
        y = x.transpose(1, 2).reshape(x.shape[0], self.dim, h, w)
        return F.relu(self.conv(y)).flatten(2).transpose(1, 2)


class SwinTransformer(nn.Module):
    """MANIQA's Scale-Swin on (B, C, H, W): per stage x <- scale * stage(x) + x; shape preserved.

    `downsample` is never used in the forward pass but exists (with weights) in trained checkpoints.
    """

    def __init__(
        self,
        patches_resolution: tuple[int, int],
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        embed_dim: int = 256,
        drop: float = 0.1,
        drop_path_rate: float = 0.1,
        dropout: float = 0.0,
        window_size: int = 7,
        dim_mlp: int = 1024,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop_rate: float = 0.0,
        scale: float = 0.8,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        self.scale = scale
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = window_size
        self.dropout = nn.Dropout(p=drop)
        self.num_features = embed_dim
        self.num_layers = len(depths)
        self.patches_resolution = (patches_resolution[0], patches_resolution[1])
        self.downsample = nn.Conv2d(embed_dim, embed_dim, kernel_size=3, stride=2, padding=1)
        total = sum(depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for depth, heads in zip(depths, num_heads, strict=True):
            self.layers.append(
                BasicLayer(
                    embed_dim,
                    self.patches_resolution,
                    depth,
                    heads,
                    window_size=window_size,
                    dim_mlp=dim_mlp,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=dropout,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start : start + depth],
                )
            )
            start += depth

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h, w = self.patches_resolution
        x = self.dropout(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, self.embed_dim, h, w)

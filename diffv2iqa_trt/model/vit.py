"""ViT backbone with the parameter names of timm's `vit_base_patch8_224`, so its checkpoints load unchanged.

The IQA head reads the outputs of a few intermediate blocks (`ViTConfig.taps`), which the authors collected with
forward hooks; `forward_taps` returns them directly and skips the blocks after the last tap.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffv2iqa_trt.config import ViTConfig

# timm builds its ViTs with LayerNorm(eps=1e-6); the pretrained weights depend on it.
_LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, 3, S, S) -> (B, (S/p)^2, E)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return out


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias on)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Explicit softmax attention (not SDPA) keeps the exported graph plain MatMul/Softmax for every backend.
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        projected: Tensor = self.proj(out)
        return projected


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as timm
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class VisionTransformer(nn.Module):
    """Class-token ViT. `forward` gives logits; `forward_taps` gives the tapped block outputs without the CLS token."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if config.img_size % config.patch_size:
            raise ValueError("img_size must be a multiple of patch_size")
        if not all(0 <= t < config.depth for t in config.taps):
            raise ValueError(f"taps {config.taps} out of range for depth {config.depth}")
        self.config = config
        dim = config.embed_dim
        # Registration order (cls_token, pos_embed, then submodules) mirrors timm's state-dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens + 1, dim))
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.head = nn.Linear(dim, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm-like init, only so that randomly initialised (tiny/demo) models are well conditioned.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _tokens(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1) + self.pos_embed

    def forward_taps(self, x: Tensor) -> list[Tensor]:
        """Outputs of the blocks listed in `config.taps` (in that order), CLS dropped: each (B, tokens, E)."""
        x = self._tokens(x)
        wanted = set(self.config.taps)
        outs: dict[int, Tensor] = {}
        # Blocks after the last tap do not influence the taps: skip them.
        for i in range(max(self.config.taps) + 1):
            x = self.blocks[i](x)
            if i in wanted:
                outs[i] = x[:, 1:]
        return [outs[t] for t in self.config.taps]

    def forward(self, x: Tensor) -> Tensor:
        x = self._tokens(x)
        for blk in self.blocks:
            x = blk(x)
        out: Tensor = self.head(self.norm(x)[:, 0])
        return out

"""The DIV2IQA quality network: VCG branch (ViT taps -> TAB/Swin head) and VDA branch (ResNet -> RTAB head).

Attribute names are the authors' (`DIV2IQA` in DiffV2IQA `models/div2iqa.py`), so their state dicts load with
strict=True, including the modules they build but never use (`noise_embedding`, `bn1`, `rq_score`).
Inputs are the distorted crop x, the restored y0 and the two sampler snapshots y_t1, y_t2, all (B, 3, S, S) in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffv2iqa_trt.config import IQAConfig
from diffv2iqa_trt.model.blocks import RTABlock, SwinTransformer, TABlock
from diffv2iqa_trt.model.resnet import ResNet
from diffv2iqa_trt.model.vit import VisionTransformer

_VDA_WIDTH = 32  # channels of conv_s1 and of the VDA scoring MLPs (fixed in the authors' code)


def _score_mlp(dim: int, drop: float, out_act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(drop), nn.Linear(dim, 1), out_act)


def weighted_mean_score(s: Tensor, w: Tensor) -> Tensor:
    """Per-sample sum(s * w) / sum(w) over all tokens: (B, T, 1) x2 -> (B,)."""
    return (s * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2))


class IQANet(nn.Module):
    def __init__(self, config: IQAConfig) -> None:
        super().__init__()
        self.config = config
        vc, hc = config.vit, config.head
        e, d, t, g = vc.embed_dim, hc.noise_embed_dim, vc.tokens, vc.grid
        self.grid = g

        # Registration order follows the authors' __init__ so that state-dict order matches too.
        self.vit = VisionTransformer(vc)
        self.tablock1 = nn.ModuleList(TABlock(t, hc.drop) for _ in range(hc.num_tab))
        self.noise_embedding = nn.Embedding(4, d)  # unused by the forward pass; present in checkpoints
        # One learned vector per image role (x, y0, y_t1, y_t2), appended to every token of that image's features.
        self.noise_levels = nn.Parameter(torch.zeros(1, 4, d))
        # x brings 4 taps, y0 2, y_t1 and y_t2 one each, plus one embedding per image.
        self.conv1 = nn.Conv2d(e * 8 + d * 4, e * 3, 1, 1, 0)
        self.bn1 = nn.BatchNorm2d(e * 3)  # unused (the authors disabled it); present in checkpoints
        self.conv3 = nn.Conv2d(e * 3, e, 1, 1, 0)
        self.swintransformer1 = self._swin(e)
        self.tablock2 = nn.ModuleList(TABlock(t, hc.drop) for _ in range(hc.num_tab))
        self.conv2 = nn.Conv2d(e, e // 2, 1, 1, 0)
        self.swintransformer2 = self._swin(e // 2)
        self.fc_score = _score_mlp(e // 2, hc.drop, nn.ReLU())
        self.fc_weight = _score_mlp(e // 2, hc.drop, nn.Sigmoid())

        self.res = ResNet(config.resnet)
        self.qa = RTABlock(config.resnet.num_classes, t, hc.drop)
        self.conv_s1 = nn.Conv2d(1, _VDA_WIDTH, 1, 1, 0)
        self.rq_score = _score_mlp(_VDA_WIDTH, hc.drop, nn.ReLU())  # unused; present in checkpoints
        self.fc_score1 = _score_mlp(_VDA_WIDTH, hc.drop, nn.ReLU())
        self.fc_weight1 = _score_mlp(_VDA_WIDTH, hc.drop, nn.Sigmoid())

    def _swin(self, dim: int) -> SwinTransformer:
        hc = self.config.head
        return SwinTransformer(
            patches_resolution=(self.grid, self.grid),
            depths=hc.swin_depths,
            num_heads=hc.swin_heads,
            embed_dim=dim,
            drop=hc.drop,
            window_size=hc.window_size,
            dim_mlp=hc.dim_mlp,
            scale=hc.scale,
        )

    def _level(self, k: int, like: Tensor) -> Tensor:
        """noise_levels[0, k] broadcast over the batch and tokens of `like` (B, T, *)."""
        emb = self.noise_levels[0, k]
        return emb[None, None, :].expand(like.shape[0], like.shape[1], emb.shape[0])

    def vcg_score(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> Tensor:
        """Visual Compensation Guidance score, (B,)."""
        # One ViT pass over all four images; each tap is then (4, B, T, E) in the order x, y0, y_t1, y_t2.
        taps = [f.unflatten(0, (4, -1)) for f in self.vit.forward_taps(torch.cat((x, y0, yt1, yt2), dim=0))]
        a, b, c, d = taps
        # The authors' snapshot ran the ViT on y_t1 in the y_t2 slot; checkpoints trained that way need it.
        t2_src = 2 if self.config.head.feed_t1_as_t2 else 3
        f_x = torch.cat((a[0], b[0], c[0], d[0], self._level(0, a[0])), dim=2)
        f_0 = torch.cat((a[1], b[1], self._level(1, a[1])), dim=2)
        f_1 = torch.cat((c[2], self._level(2, c[2])), dim=2)
        f_2 = torch.cat((d[t2_src], self._level(3, d[t2_src])), dim=2)
        z = torch.cat((f_x, f_0, f_1, f_2), dim=2).transpose(1, 2)  # (B, C, T): channels attend in the TABs
        bsz, ch = z.shape[0], z.shape[1]
        for tab in self.tablock1:
            z = tab(z)
        z = self.conv3(self.conv1(z.reshape(bsz, ch, self.grid, self.grid)))
        z = self.swintransformer1(z)
        z = z.flatten(2)
        for tab in self.tablock2:
            z = tab(z)
        z = z.reshape(bsz, z.shape[1], self.grid, self.grid)
        z = self.swintransformer2(self.conv2(z))
        tokens = z.flatten(2).transpose(1, 2)  # (B, T, E/2)
        return weighted_mean_score(self.fc_score(tokens), self.fc_weight(tokens))

    def _backbone_features(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> Tensor:
        """ResNet logits of the four images, (4, B, num_classes)."""
        if self.training:
            # The authors called the ResNet once per image: in training BatchNorm then normalises each image set
            # with its own batch statistics, which a joint 4B batch would not reproduce.
            return torch.stack([self.res(i) for i in (x, y0, yt1, yt2)], dim=0)
        out: Tensor = self.res(torch.cat((x, y0, yt1, yt2), dim=0)).unflatten(0, (4, -1))
        return out

    def vda_score(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> Tensor:
        """Visual Difference Analysis score, (B,)."""
        g = self._backbone_features(x, y0, yt1, yt2)
        s = self.qa(g[0], g[1], g[2], g[3]).transpose(1, 2)  # (B, 1, T)
        for tab in self.tablock1:  # shared with the VCG branch
            s = tab(s)
        s = self.conv_s1(s.reshape(s.shape[0], 1, self.grid, self.grid))
        tokens = s.flatten(2).transpose(1, 2)  # (B, T, 32)
        return weighted_mean_score(self.fc_score1(tokens), self.fc_weight1(tokens))

    def forward(self, x: Tensor, y0: Tensor, yt1: Tensor, yt2: Tensor) -> tuple[Tensor, Tensor]:
        """(vcg score, vda score), each (B,); fusion is left to the caller's configuration."""
        return self.vcg_score(x, y0, yt1, yt2), self.vda_score(x, y0, yt1, yt2)

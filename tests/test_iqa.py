"""DIV2IQA network: sizes and checkpoint layout of the paper model, block semantics, batching.

Its ONNX export is tested through the project's exporter, as the vcg and vda graphs, in test_export.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffv2iqa_trt.config import IQAConfig, paper_config, tiny_config
from diffv2iqa_trt.model.blocks import RTABlock, SwinBlock, SwinTransformer, TABlock
from diffv2iqa_trt.model.iqa import IQANet, weighted_mean_score

LAYOUT = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "model" / "authors_layout" / "div2iqa_paper.json"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_meta() -> IQANet:
    with torch.device("meta"):
        return IQANet(paper_config().iqa)


def _tiny(seed: int = 0, cfg: IQAConfig | None = None) -> IQANet:
    torch.manual_seed(seed)
    net = IQANet(cfg or tiny_config().iqa)
    # noise_levels start at zero (as the authors'); give them values so the test sees their effect.
    with torch.no_grad():
        net.noise_levels.normal_(std=0.5)
    return net.eval()


def _images(batch: int, size: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 3, size, size, generator=g) * 2 - 1 for _ in range(4))


# ---------------------------------------------------------------- paper sizes and checkpoint layout


def test_paper_parameter_counts(paper_meta: IQANet) -> None:
    vit, res, total = _count(paper_meta.vit), _count(paper_meta.res), _count(paper_meta)
    heads = total - vit - res
    assert vit == pytest.approx(86.58e6, rel=5e-3)
    assert res == pytest.approx(25.56e6, rel=5e-3)
    assert heads == pytest.approx(67.66e6, rel=5e-3)
    # Exact values of timm's vit_base_patch8_224, torchvision's resnet50 and the authors' heads.
    assert (vit, res, heads) == (86_576_872, 25_557_032, 67_656_997)


def test_paper_state_dict_matches_authors_layout(paper_meta: IQANet) -> None:
    ref = json.loads(LAYOUT.read_text())["keys"]
    ours = {k: list(v.shape) for k, v in paper_meta.state_dict().items()}
    assert set(ours) == set(ref), (sorted(set(ours) - set(ref)), sorted(set(ref) - set(ours)))
    assert ours == ref
    assert list(ours) == list(ref)  # state-dict order too


def test_paper_layout_parameter_total_matches_json(paper_meta: IQANet) -> None:
    doc = json.loads(LAYOUT.read_text())
    assert doc["num_parameters"] == _count(paper_meta)


# ---------------------------------------------------------------- blocks against loop implementations


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(a - m) for a in v]
    s = sum(e)
    return [a / s for a in e]


def _tab_loops(tab: TABlock, x: torch.Tensor) -> np.ndarray:
    """TAB written out element by element, including the transpose-then-reshape reorder."""
    xs = _np(x)
    b_, c_, n_ = xs.shape
    out = np.zeros_like(xs)
    lin = {name: (_np(getattr(tab, name).weight), _np(getattr(tab, name).bias)) for name in ("c_q", "c_k", "c_v")}
    scale = n_**-0.5
    for b in range(b_):
        q, k, v = (xs[b] @ w.T + bias for w, bias in (lin["c_q"], lin["c_k"], lin["c_v"]))
        o = np.zeros((c_, n_))
        for i in range(c_):
            a = _softmax([float(np.dot(q[i], k[j])) * scale for j in range(c_)])
            for j in range(c_):
                o[i] += a[j] * v[j]
        # (o^T) read in row-major order and cut into rows of length N.
        for i in range(c_):
            for j in range(n_):
                n, c = divmod(i * n_ + j, c_)
                out[b, i, j] = o[c, n] + xs[b, i, j]
    return out


@pytest.mark.parametrize("c,n", [(6, 10), (12, 5)])
def test_tablock_matches_loop_implementation(c: int, n: int) -> None:
    torch.manual_seed(0)
    tab = TABlock(n).eval()
    x = torch.randn(3, c, n)
    got = tab(x).detach().double().numpy()
    np.testing.assert_allclose(got, _tab_loops(tab, x), atol=1e-5, rtol=0)


def test_tablock_reorder_differs_from_plain_attention() -> None:
    # Guard that the transpose-reshape is really there: without it the result differs when C != N.
    torch.manual_seed(0)
    tab = TABlock(5).eval()
    x = torch.randn(2, 7, 5)
    q, k, v = tab.c_q(x), tab.c_k(x), tab.c_v(x)
    plain = torch.softmax(q @ k.transpose(1, 2) * 5**-0.5, -1) @ v + x
    assert not torch.allclose(tab(x), plain, atol=1e-3)


def test_rtablock_matches_loop_implementation() -> None:
    torch.manual_seed(0)
    in_dim, tokens = 9, 7
    blk = RTABlock(in_dim, tokens).eval()
    g = [torch.randn(2, in_dim) for _ in range(4)]
    got = blk(*g).detach().double().numpy()
    assert got.shape == (2, tokens, 1)

    def lin(name: str, v: np.ndarray) -> np.ndarray:
        m = getattr(blk, name)
        return _np(m.weight) @ v + _np(m.bias)

    gs = [_np(t) for t in g]
    for b in range(2):
        gx, g0, g1, g2 = (t[b] for t in gs)
        r, q, k, v = lin("x_linear", gx), lin("c_q", abs(gx - g0)), lin("c_k", abs(gx - g1)), lin("c_v", abs(gx - g2))
        for i in range(tokens):
            a = _softmax([q[i] * k[j] * in_dim**-0.5 for j in range(tokens)])
            want = sum(a[j] * v[j] for j in range(tokens)) + r[i]
            assert got[b, i, 0] == pytest.approx(want, abs=1e-5)


def test_weighted_mean_score_by_hand() -> None:
    s = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [0.0], [2.0]]])
    w = torch.tensor([[[0.5], [0.25], [0.25]], [[0.1], [0.3], [0.6]]])
    # (1*.5 + 2*.25 + 3*.25) / 1 = 1.75 ; (4*.1 + 0 + 2*.6) / 1 = 1.6
    torch.testing.assert_close(weighted_mean_score(s, w), torch.tensor([1.75, 1.6]))
    w2 = w * 3.0  # scale invariant in w
    torch.testing.assert_close(weighted_mean_score(s, w2), torch.tensor([1.75, 1.6]))


def test_swin_small_grid_falls_back_to_one_window() -> None:
    blk = SwinBlock(8, (4, 4), num_heads=2, window_size=4, shift_size=2, dim_mlp=16)
    assert (blk.window_size, blk.shift_size) == (4, 0)
    assert blk.attn_mask is None and "attn_mask" not in blk.state_dict()
    blk = SwinBlock(8, (3, 3), num_heads=2, window_size=4, shift_size=2, dim_mlp=16)
    assert blk.window_size == 3 and tuple(blk.attn.relative_position_bias_table.shape) == (25, 2)
    assert blk(torch.randn(2, 9, 8)).shape == (2, 9, 8)


def test_swin_shift_mask_blocks_cross_seam_attention() -> None:
    blk = SwinBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2, dim_mlp=16)
    mask = blk.attn_mask
    assert mask is not None and tuple(mask.shape) == (4, 16, 16)
    assert torch.all(mask[0] == 0)  # top-left window never straddles the seam
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    # Bottom-right window mixes four regions: each token may only see the 4 tokens of its own region.
    assert torch.all((mask[3] == 0).sum(-1) == 4)


def test_swin_transformer_shape_and_scale() -> None:
    torch.manual_seed(0)
    swin = SwinTransformer((8, 8), depths=(2, 2), num_heads=(2, 2), embed_dim=16, window_size=4, dim_mlp=32,
                           scale=0.0).eval()
    x = torch.randn(2, 16, 8, 8)
    # With scale 0 every stage's contribution vanishes: the residual path alone remains.
    torch.testing.assert_close(swin(x), x)


# ---------------------------------------------------------------- tiny model: shapes, batching, options


def test_tiny_scores_shapes_and_batch_invariance() -> None:
    net = _tiny()
    size = tiny_config().iqa.vit.img_size
    imgs = _images(4, size)
    with torch.no_grad():
        vcg, vda = net.vcg_score(*imgs), net.vda_score(*imgs)
        assert vcg.shape == (4,) and vda.shape == (4,)
        assert torch.isfinite(vcg).all() and torch.isfinite(vda).all()
        assert torch.equal(torch.stack(net(*imgs)), torch.stack((vcg, vda)))
        for i in range(4):
            one = tuple(t[i : i + 1] for t in imgs)
            torch.testing.assert_close(net.vcg_score(*one), vcg[i : i + 1], atol=1e-6, rtol=0)
            torch.testing.assert_close(net.vda_score(*one), vda[i : i + 1], atol=1e-6, rtol=0)


def test_vit_and_resnet_logits_shapes() -> None:
    net = _tiny()
    cfg = tiny_config().iqa
    x = _images(2, cfg.vit.img_size)[0]
    with torch.no_grad():
        assert net.vit(x).shape == (2, cfg.vit.num_classes)
        assert net.res(x).shape == (2, cfg.resnet.num_classes)
        taps = net.vit.forward_taps(x)
    assert [tuple(t.shape) for t in taps] == [(2, cfg.vit.tokens, cfg.vit.embed_dim)] * 4


def test_vcg_uses_every_image() -> None:
    net = _tiny()
    imgs = _images(2, tiny_config().iqa.vit.img_size)
    other = _images(2, tiny_config().iqa.vit.img_size, seed=7)
    with torch.no_grad():
        base = net.vcg_score(*imgs)
        for k in range(4):
            changed = list(imgs)
            changed[k] = other[k]
            assert not torch.allclose(net.vcg_score(*changed), base, atol=1e-6), k


def test_feed_t1_as_t2_option() -> None:
    cfg = tiny_config().iqa
    net = _tiny()
    alt_cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, feed_t1_as_t2=True))
    alt = IQANet(alt_cfg).eval()
    alt.load_state_dict(net.state_dict(), strict=True)
    x, y0, yt1, yt2 = _images(3, cfg.vit.img_size)
    new_t2 = _images(3, cfg.vit.img_size, seed=9)[3]
    with torch.no_grad():
        a = alt.vcg_score(x, y0, yt1, yt2)
        assert not torch.allclose(a, net.vcg_score(x, y0, yt1, yt2), atol=1e-6)
        torch.testing.assert_close(alt.vcg_score(x, y0, yt1, new_t2), a, atol=1e-6, rtol=0)
        assert not torch.allclose(net.vcg_score(x, y0, yt1, new_t2), net.vcg_score(x, y0, yt1, yt2), atol=1e-6)
        # The VDA branch never depended on the option.
        torch.testing.assert_close(alt.vda_score(x, y0, yt1, yt2), net.vda_score(x, y0, yt1, yt2))


def test_training_mode_runs_backbone_per_image() -> None:
    # In training, BatchNorm must see the four image sets separately (as the authors' four ResNet calls did).
    net = _tiny().train()
    calls: list[int] = []
    net.res.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    imgs = _images(2, tiny_config().iqa.vit.img_size)
    score = net.vda_score(*imgs)
    assert calls == [2, 2, 2, 2] and score.shape == (2,)
    score.sum().backward()

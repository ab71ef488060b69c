"""SR3 restorer U-Net: size, the authors' key layout, shapes, batch invariance, embedding.

Its ONNX export is tested through the project's exporter, as part of restore_step, in test_export.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffv2iqa_trt.config import UNetConfig, tiny_config
from diffv2iqa_trt.model.unet import UNet, noise_level_embedding

LAYOUT = Path(__file__).resolve().parents[1] / "diffv2iqa_trt/model/authors_layout/sr3_unet_paper.json"
PAPER_PARAMS = 97.81e6


def _tiny(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(tiny_config().unet).eval()
    # Default GroupNorm affine is (1, 0): randomise everything so a wrong key mapping or op order shows up.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _paper_meta() -> UNet:
    with torch.device("meta"):
        return UNet(UNetConfig())


def test_paper_parameter_count() -> None:
    n = sum(p.numel() for p in _paper_meta().parameters())
    assert n == 97_807_491
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.005


def test_paper_state_dict_matches_authors_layout() -> None:
    layout = json.loads(LAYOUT.read_text())
    expected = {k.removeprefix("denoise_fn."): v for k, v in layout["keys"].items()}
    assert all(k.startswith("denoise_fn.") for k in layout["keys"])
    ours = {k: list(v.shape) for k, v in _paper_meta().state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert layout["num_parameters"] == sum(math.prod(s) for s in expected.values())
    assert "betas" in layout["schedule_buffers"] and "alphas_cumprod" in layout["schedule_buffers"]


@pytest.mark.parametrize(("batch", "h", "w"), [(2, 64, 64), (3, 48, 80)])
def test_tiny_forward_shape(batch: int, h: int, w: int) -> None:
    cfg = tiny_config().unet
    model = _tiny()
    with torch.no_grad():
        out = model(torch.randn(batch, cfg.in_channel, h, w), torch.rand(batch))
    assert out.shape == (batch, cfg.out_channel, h, w)
    assert torch.isfinite(out).all()


def test_noise_level_shape_b1_equals_b() -> None:
    # The authors' sampler passes gamma as (B, 1); our callers pass (B,).
    model = _tiny()
    x, g = torch.randn(2, 6, 32, 32), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, g), model(x, g[:, None]), rtol=0, atol=0)


def test_batch_invariance() -> None:
    # float64: float32 kernels legitimately round differently per batch size (~1e-6); leakage between samples
    # (e.g. a norm over the batch) would show up at O(1e-2) and more.
    model = _tiny().double()
    x, g = torch.randn(4, 6, 48, 64, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    with torch.no_grad():
        full = model(x, g)
        for i in range(4):
            alone = model(x[i : i + 1], g[i : i + 1])
            torch.testing.assert_close(alone, full[i : i + 1], rtol=0, atol=1e-6)
        # Changing the other samples must not move sample 0.
        x2, g2 = x.clone(), g.clone()
        x2[1:] = torch.randn_like(x2[1:])
        g2[1:] = torch.rand(3, dtype=torch.float64)
        torch.testing.assert_close(model(x2, g2)[0], full[0], rtol=0, atol=1e-6)


def test_noise_level_embedding_matches_numpy() -> None:
    dim = 64
    gamma = np.array([0.0, 0.013, 0.5, 0.9999, 1.0], dtype=np.float64)
    half = dim // 2
    freqs = np.exp(-np.log(1e4) * np.arange(half, dtype=np.float64) / half)
    angles = gamma[:, None] * freqs[None, :]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # sines first, then cosines
    got = noise_level_embedding(torch.tensor(gamma, dtype=torch.float32), dim).numpy()
    assert got.shape == (5, dim)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The module in noise_level_mlp slot 0 is the same function.
    model = _tiny()
    g = torch.tensor(gamma, dtype=torch.float32)
    torch.testing.assert_close(model.noise_level_mlp[0](g), noise_level_embedding(g, tiny_config().unet.inner_channel))


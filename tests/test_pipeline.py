"""The reference sampler, the pipeline over the torch executor, determinism and batch invariance."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from diffv2iqa_trt.config import ScoringConfig, tiny_config
from diffv2iqa_trt.model.diffv2iqa import build_model, restore_update, uint8_roundtrip
from diffv2iqa_trt.reference.loading import reference_pipeline
from diffv2iqa_trt.runtime.crops import prepare
from diffv2iqa_trt.runtime.noise import noise_bank
from diffv2iqa_trt.schedule import step_tables


def hand_step(eps, y, t, i, z):
    """SR3's p_sample written out in float64 from the scalar tables."""
    abar = float(t.alphas_cumprod[i])
    abar_prev = float(t.alphas_cumprod[i - 1]) if i > 0 else 1.0
    beta = 1 - abar / abar_prev
    x0 = np.clip(y / np.sqrt(abar) - np.sqrt(1 / abar - 1) * eps, -1, 1)
    mean = beta * np.sqrt(abar_prev) / (1 - abar) * x0 + (1 - abar_prev) * np.sqrt(1 - beta) / (1 - abar) * y
    log_var = np.log(max(beta * (1 - abar_prev) / (1 - abar), 1e-20))
    return mean + (np.exp(0.5 * log_var) * z if i > 0 else 0.0)


def test_update_matches_hand_written_step():
    t = step_tables(tiny_config().schedule)
    rng = np.random.default_rng(1)
    eps, y, z = (rng.standard_normal((2, 3, 8, 8)) for _ in range(3))
    for i in (0, 1, 5, t.steps - 1):
        coef = torch.tensor(np.repeat(t.coef[i][None], 2, 0))
        got = restore_update(torch.tensor(eps), torch.tensor(y), coef, torch.tensor(z[:1])).numpy()
        np.testing.assert_allclose(got, hand_step(eps, y, t, i, z[:1]), rtol=1e-10, atol=1e-12)


def test_restore_loop_matches_hand_loop(tiny_model):
    cfg = tiny_model.config
    t = step_tables(cfg.schedule)
    x = torch.tensor(np.random.default_rng(2).uniform(-1, 1, (2, 3, 64, 64)), dtype=torch.float32)
    bank = noise_bank(3, t.steps, 64, 64)
    y0, yt1, yt2 = tiny_model.restore(x, torch.from_numpy(bank))
    y = np.broadcast_to(bank[t.steps], x.shape).astype(np.float64)
    kept = {}
    with torch.no_grad():
        for i in reversed(range(t.steps)):
            inp = torch.cat([x, torch.tensor(y, dtype=torch.float32)], 1)
            eps = tiny_model.unet(inp, torch.full((2,), float(t.gamma[i]))).double().numpy()
            y = hand_step(eps, y, t, i, bank[i][None].astype(np.float64))
            kept[i] = y
    np.testing.assert_allclose(y0.numpy(), kept[0], atol=2e-4)
    np.testing.assert_allclose(yt1.numpy(), kept[cfg.schedule.capture_t1], atol=2e-4)
    np.testing.assert_allclose(yt2.numpy(), kept[cfg.schedule.capture_t2], atol=2e-4)
    assert not np.allclose(yt1.numpy(), yt2.numpy())


def test_uint8_roundtrip_quantises_like_a_png():
    y = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0])
    expected = np.round((np.clip(y.numpy(), -1, 1) + 1) / 2 * 255) / 255 * 2 - 1
    np.testing.assert_allclose(uint8_roundtrip(y).numpy(), expected, atol=1e-6)


def test_pipeline_equals_model_reference(tiny_model, photos):
    scoring = ScoringConfig(crops="center", mode="crops", noise_seed=5)
    pipe = reference_pipeline(tiny_model, scoring)
    results = pipe.score(photos[:2])
    x = torch.from_numpy(np.stack([prepare(p, "center", "crops", 64, 16)[0].x for p in photos[:2]]))
    bank = torch.from_numpy(noise_bank(5, tiny_model.config.schedule.steps, 64, 64))
    expected = tiny_model.score(x, bank).numpy()
    np.testing.assert_allclose([r.score for r in results], expected, atol=1e-5)
    f = tiny_model.config.fusion
    for r in results:
        assert r.score == pytest.approx(f.vcg_weight * r.vcg + f.vda_weight * r.vda, abs=1e-9)


@pytest.mark.parametrize("crops,mode", [("center", "crops"), ("five", "crops"), ("grid:2", "faithful")])
def test_batch_invariance_and_determinism(tiny_model, photos, crops, mode):
    scoring = ScoringConfig(crops=crops, mode=mode)
    if mode == "faithful":  # whole-image restoration: keep the images small so the test stays fast
        photos = [np.asarray(Image.fromarray(p).resize((112, 80), Image.Resampling.BICUBIC)) for p in photos]
    single = [reference_pipeline(tiny_model, scoring, batch_size=1).score([p])[0].score for p in photos]
    pipe = reference_pipeline(tiny_model, scoring, batch_size=4)
    batched = [r.score for r in pipe.score(photos)]
    reversed_ = [r.score for r in pipe.score(photos[::-1])][::-1]
    again = [r.score for r in pipe.score(photos)]
    np.testing.assert_allclose(batched, single, atol=1e-6, rtol=0)
    np.testing.assert_allclose(reversed_, single, atol=1e-6, rtol=0)
    assert again == batched
    assert len(set(np.round(single, 6))) == len(photos)  # distinct photos, distinct scores


def test_options_change_the_score(tiny_model, photos):
    base = ScoringConfig()
    s = lambda model, **kw: reference_pipeline(model, dataclasses.replace(base, **kw)).score(photos[:1])[0]  # noqa
    ref = s(tiny_model)
    assert ref.crops == 1
    assert s(tiny_model, crops="five").crops == 5
    assert s(tiny_model, noise_seed=1).score != ref.score
    assert s(tiny_model, mode="faithful").score != ref.score
    cfg = tiny_model.config
    t1_model = build_model(cfg.replace(iqa=dataclasses.replace(
        cfg.iqa, head=dataclasses.replace(cfg.iqa.head, feed_t1_as_t2=True))), seed=0)
    assert s(t1_model).vcg != ref.vcg and s(t1_model).vda == pytest.approx(ref.vda, abs=1e-7)
    raw_model = build_model(cfg.replace(uint8_roundtrip=False), seed=0)
    assert s(raw_model).score != ref.score
    vda_only = build_model(cfg.replace(fusion=dataclasses.replace(cfg.fusion, vcg_weight=0.0, vda_weight=2.0)),
                           seed=0)
    r = s(vda_only)
    assert r.vcg is None and r.score == pytest.approx(2.0 * ref.vda, abs=1e-6)


def test_steps_override_checks_capture_steps(tiny_model):
    with pytest.raises(ValueError, match="capture_t2=4 is outside the 4-step schedule"):
        reference_pipeline(tiny_model, ScoringConfig(), steps=4)
    assert reference_pipeline(tiny_model, ScoringConfig(), steps=6).spec.steps == 6

"""The reference sampler, the pipeline over the torch executor, determinism and batch invariance."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from diffv2iqa_trt.config import ScoringConfig, tiny_config
from diffv2iqa_trt.errors import ConfigError
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


def test_options_change_the_score_as_specified(tiny_model, photos):
    """Each option changes the score exactly as its definition says, recomputed independently on the model's
    graphs (not merely "the score is different")."""
    img, cfg = photos[0], tiny_model.config
    f, steps = cfg.fusion, cfg.schedule.steps

    def s(model, **kw):
        return reference_pipeline(model, dataclasses.replace(ScoringConfig(), **kw)).score([img])[0]

    def fused(model, x, y0, yt1, yt2):
        with torch.no_grad():
            return float(f.vcg_weight * model.vcg(x, y0, yt1, yt2) + f.vda_weight * model.vda(x, y0, yt1, yt2))

    x = torch.from_numpy(prepare(img, "center", "crops", 64, 16)[0].x[None])
    bank0 = torch.from_numpy(noise_bank(0, steps, 64, 64))
    y0, yt1, yt2 = tiny_model.restore(x, bank0)
    ref = s(tiny_model)
    assert ref.crops == 1 and ref.score == pytest.approx(fused(tiny_model, x, y0, yt1, yt2), abs=1e-6)

    # five crops: the mean of the five crops' fused scores
    xs = torch.from_numpy(np.stack([u.x for u in prepare(img, "five", "crops", 64, 16)]))
    five = s(tiny_model, crops="five")
    assert five.crops == 5 and five.score == pytest.approx(float(tiny_model.score(xs, bank0).mean()), abs=1e-6)

    # another seed: the same graphs over the bank of that seed
    bank1 = torch.from_numpy(noise_bank(1, steps, 64, 64))
    assert s(tiny_model, noise_seed=1).score == pytest.approx(float(tiny_model.score(x, bank1)[0]), abs=1e-6)

    # faithful: restore the whole (resized) image, then cut the crop from the input and every snapshot
    unit = prepare(img, "center", "faithful", 64, 16)[0]
    xf = torch.from_numpy(unit.x[None])
    assert xf.shape[2:] != (64, 64)
    snaps = tiny_model.restore(xf, torch.from_numpy(noise_bank(0, steps, *xf.shape[2:])))
    (top, left), = unit.boxes
    crops = [t[..., top:top + 64, left:left + 64] for t in (xf, *snaps)]
    assert s(tiny_model, mode="faithful").score == pytest.approx(fused(tiny_model, *crops), abs=1e-6)

    # feed_t1_as_t2: the ViT sees y_t1 in the y_t2 slot; VDA is untouched (same seed, same weights)
    t1_model = build_model(cfg.replace(iqa=dataclasses.replace(
        cfg.iqa, head=dataclasses.replace(cfg.iqa.head, feed_t1_as_t2=True))), seed=0)
    t1 = s(t1_model)
    with torch.no_grad():
        assert t1.vcg == pytest.approx(float(tiny_model.vcg(x, y0, yt1, yt1)), abs=1e-6)
    assert t1.vda == pytest.approx(ref.vda, abs=1e-7)

    # no round trip: the branches see the raw float snapshots
    raw = s(build_model(cfg.replace(uint8_roundtrip=False), seed=0))
    with torch.no_grad():
        raw_vda = float(tiny_model.iqa.vda_score(x, y0, yt1, yt2))
    assert raw.vda == pytest.approx(raw_vda, abs=1e-6) and abs(raw.vda - ref.vda) > 1e-7

    # fusion weights: VCG is not run when its weight is 0
    vda_only = build_model(cfg.replace(fusion=dataclasses.replace(cfg.fusion, vcg_weight=0.0, vda_weight=2.0)),
                           seed=0)
    r = s(vda_only)
    assert r.vcg is None and r.score == pytest.approx(2.0 * ref.vda, abs=1e-6)


def test_noise_banks_are_bounded_lru(tiny_model):
    pipe = reference_pipeline(tiny_model, ScoringConfig())
    pipe.max_noise_banks = 2
    first = pipe.noise(64, 64)
    pipe.noise(64, 80)
    assert pipe.noise(64, 64) is first  # still cached, and now the most recent
    pipe.noise(80, 80)  # evicts (64, 80), the least recently used
    assert list(pipe._banks) == [(64, 64), (80, 80)]
    again = pipe.noise(64, 80)
    assert len(pipe._banks) == 2 and (64, 64) not in pipe._banks
    np.testing.assert_array_equal(again[0], noise_bank(0, pipe.spec.steps, 64, 80)[-1])  # regenerated identically


def test_steps_override_checks_capture_steps(tiny_model):
    with pytest.raises(ConfigError, match="capture_t2=4 is outside the 4-step schedule"):
        reference_pipeline(tiny_model, ScoringConfig(), steps=4)
    assert reference_pipeline(tiny_model, ScoringConfig(), steps=6).spec.steps == 6

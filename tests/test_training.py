"""Demo-weight training: SSIM, distortions, the split, one restorer step, and the committed checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from diffv2iqa_trt.config import tiny_config  # noqa: E402
from diffv2iqa_trt.data.distortions import DISTORTIONS, LEVELS, distort
from diffv2iqa_trt.data.photos import PHOTO_NAMES, photos  # noqa: E402
from diffv2iqa_trt.model.checkpoint import load_checkpoint  # noqa: E402
from diffv2iqa_trt.model.diffv2iqa import build_model  # noqa: E402
from diffv2iqa_trt.training.data import MAX_SIDE, SPLITS, make_samples  # noqa: E402
from diffv2iqa_trt.training.restorer import sample_gammas, train_restorer, training_gammas  # noqa: E402
from diffv2iqa_trt.training.ssim import luminance, ssim, ssim_rgb  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "diffv2iqa_trt" / "weights" / "tiny-demo.safetensors"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, two threads contend and run many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def library() -> dict[str, np.ndarray]:
    return photos(MAX_SIDE)


def test_ssim_matches_skimage(library: dict[str, np.ndarray]) -> None:
    from skimage.metrics import structural_similarity

    ref = library["chelsea"]
    rng = np.random.default_rng(0)
    pairs = [(distort(ref, kind, 3), ref) for kind in ("gaussian_blur", "white_noise", "jpeg", "contrast")]
    pairs.append((rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)))
    for a, b in pairs:
        ya, yb = luminance(a), luminance(b)
        expected = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=255.0, K1=0.01, K2=0.03)
        assert ssim(ya, yb) == pytest.approx(expected, abs=1e-10)
    assert ssim_rgb(ref, ref) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["chelsea", "camera"])
def test_every_distortion_grows_with_level(library: dict[str, np.ndarray], name: str) -> None:
    ref = library[name]
    colour = not np.array_equal(ref[..., 0], ref[..., 1])
    assert len(DISTORTIONS) >= 10 and LEVELS == 5
    for kind in DISTORTIONS:
        imgs = [distort(ref, kind, level, seed=7) for level in range(1, LEVELS + 1)]
        if kind == "saturation" and not colour:
            # Saturation cannot change a grayscale photograph (documented in the model card).
            assert all(np.array_equal(i, ref) for i in imgs)
            continue
        change = [np.abs(i.astype(float) - ref).mean() for i in imgs]
        quality = [ssim_rgb(i, ref) for i in imgs]
        assert np.all(np.diff(change) > 0), (kind, change)
        assert np.all(np.diff(quality) < 0), (kind, quality)
        assert quality[0] < 1.0


def test_split_is_by_photograph() -> None:
    groups = [set(v) for v in SPLITS.values()]
    assert [len(g) for g in groups] == [12, 3, 3]
    assert set().union(*groups) == set(PHOTO_NAMES)
    assert sum(len(g) for g in groups) == len(PHOTO_NAMES)  # no photograph in two splits
    samples = make_samples(SPLITS["test"][:1])
    assert {s.photo for s in samples} == {SPLITS["test"][0]}
    assert len(samples) == 1 + len(DISTORTIONS) * LEVELS
    pristine = [s for s in samples if s.kind == "pristine"][0]
    assert pristine.pseudo_mos == pytest.approx(1.0)
    assert all(s.pseudo_mos < 1.0 for s in samples if s.kind not in ("pristine", "saturation"))


def test_training_gammas() -> None:
    table = training_gammas(tiny_config().schedule)
    assert table.shape == (2001,) and table[0] == 1.0 and np.all(np.diff(table) < 0)
    g = sample_gammas(table, 1000, np.random.default_rng(0))
    assert np.all((g >= table[-1]) & (g <= 1.0))


def test_one_restorer_step_runs() -> None:
    model = build_model(tiny_config(), seed=0)
    samples = make_samples(["camera"], max_side=96)[:4]
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    history = train_restorer(model, samples, steps=2, batch_size=2, lr=1e-3, seed=0)
    assert len(history) == 2 and all(np.isfinite(e["loss"]) and 0 < e["loss"] < 5 for e in history)
    assert any(not np.array_equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert not model.unet.training


def test_committed_checkpoint_is_small_and_trained() -> None:
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 10 * 2**20
    model, info = load_checkpoint(WEIGHTS)
    assert info.trained and model.config.name == "tiny"


def test_score_orders_pristine_above_heavy_blur_and_noise(library: dict[str, np.ndarray], tmp_path: Path) -> None:
    """`diffv2iqa-trt score` with the embedded default model, on a test-split photograph (never trained on)."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from diffv2iqa_trt.cli import app

    ref = library["chelsea"]
    files = {"pristine": ref, "blur": distort(ref, "gaussian_blur", 5), "noise": distort(ref, "white_noise", 5)}
    for name, rgb in files.items():
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
    result = CliRunner().invoke(app, ["score", *(str(tmp_path / f"{n}.png") for n in files), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["trained"] is True
    score = {r["path"].rsplit("/", 1)[1][:-4]: r["score"] for r in doc["results"]}
    assert score["pristine"] > score["blur"] and score["pristine"] > score["noise"], score


def test_dihedral_augmentation_moves_crop_and_snapshots_together() -> None:
    import torch

    from diffv2iqa_trt.training.iqa import augment_batch

    base = torch.arange(6 * 3 * 4 * 4, dtype=torch.float32).reshape(6, 3, 4, 4)
    tensors = [base, base + 1000, base + 2000, base + 3000]  # x, y0, y_t1, y_t2 with a known offset each
    out = augment_batch(tensors, "dihedral", np.random.default_rng(3))
    ops = []
    for i in range(6):
        candidates = [torch.rot90(base[i], k, dims=(-2, -1)) for k in range(4)]
        candidates += [c.transpose(-2, -1) for c in candidates]
        matches = [j for j, c in enumerate(candidates) if torch.equal(out[0][i], c)]
        assert len(matches) == 1  # one of the 8 symmetries of the square, and an unambiguous one
        ops.append(matches[0])
        for k, t in enumerate(out[1:], start=1):
            assert torch.equal(t[i], out[0][i] + 1000 * k)  # every snapshot got the same transform
    assert len(set(ops)) > 1  # transforms are drawn per sample
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(tensors, "rotate", np.random.default_rng(0))


def test_train_iqa_with_aux_heads_ema_and_fusion_fit() -> None:
    """One short run through every training option. The auxiliary heads' hooks stay active during validation (a
    hook that replaced the backbone output broke exactly there, on a batch of another size) and are gone
    afterwards; the fitted fusion is the kept epoch's convex combination."""
    import torch

    from diffv2iqa_trt.training.iqa import AuxTargets, CropSet, train_iqa

    model = build_model(tiny_config(), seed=0)
    rng = np.random.default_rng(0)
    n, s = 8, model.config.crop_size
    images = [rng.uniform(-1, 1, (n, 3, s, s)).astype(np.float32) for _ in range(4)]
    train = CropSet(*images, target=rng.uniform(0.2, 1.0, n).astype(np.float32), owner=np.arange(n))
    val = CropSet(*images, target=train.target, owner=np.arange(n))
    aux = AuxTargets(kind=rng.integers(0, 11, n), level=rng.uniform(0, 1, n).astype(np.float32), n_kinds=11)
    t = val.tensors(np.arange(n))
    with torch.no_grad():
        before = model.vcg(*t).clone()
    history, best = train_iqa(model, train, val, train.target, epochs=2, batch_size=4, lr=1e-3, weight_decay=0.0,
                              seed=0, augment="dihedral", warmup_epochs=0.5, ema_decay=0.9, fit_fusion=True,
                              aux=aux, aux_weight=0.3)
    assert len(history) == 2 and best in (1, 2)
    assert all(np.isfinite(e["train_loss"]) and e["train_loss"] > 0 for e in history)
    assert not model.iqa.res._forward_hooks and not any(b._forward_hooks for b in model.iqa.vit.blocks)
    f = model.config.fusion
    assert f.vcg_weight == history[best - 1]["fusion_vcg_weight"] and f.vcg_weight + f.vda_weight == 1.0
    with torch.no_grad():
        after = model.vcg(*t)
    assert not torch.allclose(before, after)  # the kept weights were trained
    assert not model.training


def test_write_split_images_and_labels(tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from diffv2iqa_trt.training.cli import train_app
    from diffv2iqa_trt.training.data import split_samples
    from diffv2iqa_trt.training.ssim import luminance, ssim

    out = tmp_path / "val"
    result = CliRunner().invoke(train_app, ["write-split", "--split", "val", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "labels.csv", newline="") as f:
        labels = {r["image"]: float(r["score"]) for r in csv.DictReader(f)}
    assert len(labels) == len(split_samples("val")) == len(list(out.glob("*.png")))
    # A label is the SSIM of the written (lossless) image against its pristine photograph.
    from PIL import Image

    img = np.asarray(Image.open(out / "gravel-white_noise3.png"))
    ref = np.asarray(Image.open(out / "gravel-pristine.png"))
    assert labels["gravel-white_noise3.png"] == pytest.approx(ssim(luminance(img), luminance(ref)), abs=1e-6)
    assert labels["gravel-pristine.png"] == pytest.approx(1.0)
    again = CliRunner().invoke(train_app, ["write-split", "--split", "val", "--out", str(out)])
    assert again.exit_code == 2 and "not an empty folder" in again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]  # no temp folder left behind
    bad = CliRunner().invoke(train_app, ["write-split", "--split", "holdout", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown split" in bad.output and not (tmp_path / "x").exists()

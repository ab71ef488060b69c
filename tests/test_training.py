"""Demo-weight training: SSIM, distortions, the split, one restorer step, and the committed checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# scikit-image is a required test dependency (the photographs come from its wheel): a missing one fails the run.
import skimage  # noqa: F401

from diffv2iqa_trt.config import tiny_config
from diffv2iqa_trt.data.distortions import DISTORTIONS, LEVELS, distort
from diffv2iqa_trt.data.photos import PHOTO_NAMES, photos
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.model.checkpoint import load_checkpoint
from diffv2iqa_trt.model.diffv2iqa import build_model
from diffv2iqa_trt.reference.loading import DEMO_WEIGHTS
from diffv2iqa_trt.training.data import MAX_SIDE, SPLITS, make_samples
from diffv2iqa_trt.training.iqa import CropSet
from diffv2iqa_trt.training.restorer import sample_gammas, train_restorer, training_gammas
from diffv2iqa_trt.training.ssim import luminance, ssim, ssim_rgb


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


def test_embedded_checkpoint_reproduces_its_recorded_metrics() -> None:
    """The embedded demo weights are the ones the committed metrics and training log describe: scoring test
    images with them gives the recorded per-image scores, and the headline SRCC follows from those scores. Fails
    when the checkpoint is replaced without re-running `train evaluate`, or when a change to the pipeline moves
    the scores the model card reports."""
    import dataclasses
    import json

    from diffv2iqa_trt.config import ScoringConfig
    from diffv2iqa_trt.metrics import plcc, srcc
    from diffv2iqa_trt.reference.loading import reference_pipeline

    assert DEMO_WEIGHTS.stat().st_size <= 10 * 2**20  # committed to git: keep it small
    metrics = json.loads((DEMO_WEIGHTS.parent / "tiny-demo-metrics.json").read_text())
    log = json.loads((DEMO_WEIGHTS.parent / "tiny-demo-iqa-log.json").read_text())
    model, info = load_checkpoint(DEMO_WEIGHTS)
    assert info.trained is metrics["trained"] is True and model.config.name == "tiny"
    assert Path(metrics["checkpoint"]).name == DEMO_WEIGHTS.name
    assert dataclasses.asdict(model.config.fusion) == log["fusion"]  # the kept epoch's fusion is the loaded one
    test = metrics["results"]["test"]
    recorded = {(r["photo"], r["kind"], r["level"]): r for r in test["per_image"]}
    assert test["srcc_vs_pseudo_mos"] == pytest.approx(
        srcc(np.array([r["score"] for r in test["per_image"]]), np.array([r["pseudo_mos"] for r in test["per_image"]])),
        abs=1e-3)
    assert test["plcc_vs_pseudo_mos"] == pytest.approx(
        plcc(np.array([r["score"] for r in test["per_image"]]), np.array([r["pseudo_mos"] for r in test["per_image"]])),
        abs=1e-3)
    wanted = {("pristine", 0), ("gaussian_blur", 5), ("white_noise", 5), ("jpeg", 3), ("contrast", 5)}
    samples = [s for s in make_samples(["chelsea"]) if (s.kind, s.level) in wanted]
    assert len(samples) == len(wanted)
    scores = [r.score for r in reference_pipeline(model, ScoringConfig(crops=test["crops"])).score(
        [s.image for s in samples])]
    for s, score in zip(samples, scores, strict=True):
        r = recorded[(s.photo, s.kind, s.level)]
        assert s.pseudo_mos == pytest.approx(r["pseudo_mos"], abs=1e-5), (s.kind, s.level)
        # Recorded to 5 decimals; other machines or thread counts move inference scores far less than 1e-3.
        assert score == pytest.approx(r["score"], abs=1e-3), (s.kind, s.level)


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
    with pytest.raises(ConfigError, match="unknown augmentation"):
        augment_batch(tensors, "rotate", np.random.default_rng(0))


def test_train_iqa_with_aux_heads_ema_and_fusion_fit() -> None:
    """One short run through every training option. The auxiliary heads' hooks stay active during validation (a
    hook that replaced the backbone output broke exactly there, on a batch of another size) and are gone
    afterwards; the fitted fusion is the kept epoch's convex combination."""
    import torch

    from diffv2iqa_trt.training.iqa import AuxTargets, train_iqa

    model = build_model(tiny_config(), seed=0)
    rng = np.random.default_rng(0)
    n, s = 8, model.config.crop_size
    x, y0, yt1, yt2 = (rng.uniform(-1, 1, (n, 3, s, s)).astype(np.float32) for _ in range(4))
    train = CropSet(x, y0, yt1, yt2, target=rng.uniform(0.2, 1.0, n).astype(np.float32), owner=np.arange(n))
    val = CropSet(x, y0, yt1, yt2, target=train.target, owner=np.arange(n))
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


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"augment": "rotate"}, {"warmup_epochs": 2.0},
                                 {"warmup_epochs": -0.1}, {"ema_decay": 1.0}, {"aux_weight": -1.0}])
def test_train_iqa_refuses_bad_options_before_training(bad: dict[str, object]) -> None:
    from diffv2iqa_trt.training.iqa import train_iqa

    model = build_model(tiny_config(), seed=0)
    before = {k: v.clone() for k, v in model.iqa.state_dict().items()}
    nothing = np.zeros((0, 3, 4, 4), np.float32)
    empty = CropSet(nothing, nothing, nothing, nothing, target=np.zeros(0, np.float32), owner=np.zeros(0, int))
    options: dict[str, object] = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "seed": 0, **bad}
    with pytest.raises(ConfigError):
        train_iqa(model, empty, empty, np.zeros(0), **options)  # type: ignore[arg-type]
    assert all(np.array_equal(before[k], v) for k, v in model.iqa.state_dict().items())


@pytest.fixture(scope="module")
def gravel_samples() -> list[object]:
    return list(make_samples(["gravel"]))


@pytest.fixture()
def one_photo_val(monkeypatch: pytest.MonkeyPatch, gravel_samples: list[object]) -> str:
    """The validation split cut to one photograph (51 images) whose samples are made once for the module: the
    write-split tests take a second each, not eight."""
    from diffv2iqa_trt.training import data

    real = data.split_samples
    monkeypatch.setitem(SPLITS, "val", ("gravel",))
    monkeypatch.setattr(data, "split_samples",
                        lambda split, **kw: list(gravel_samples) if split == "val" and not kw else real(split, **kw))
    return "val"


def test_write_split_writes_the_samples_and_their_pseudo_mos(one_photo_val: str, tmp_path: Path) -> None:
    import csv

    from PIL import Image

    from diffv2iqa_trt.training.data import sample_file_name, split_samples, write_split

    samples = split_samples(one_photo_val)
    out = tmp_path / "split"
    out.mkdir()  # an existing empty folder is accepted (replaced by the written one)
    assert write_split(one_photo_val, out) == len(samples) == 1 + len(DISTORTIONS) * LEVELS
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "score"]
    assert [r[0] for r in rows[1:]] == [sample_file_name(s) for s in samples]  # one row per sample, in order
    for (name, score), s in zip(rows[1:], samples, strict=True):
        assert float(score) == pytest.approx(s.pseudo_mos, abs=5e-7), name
        assert np.array_equal(np.asarray(Image.open(out / name)), s.image), name  # lossless: the image scored
    assert sorted(p.name for p in out.iterdir()) == sorted([*(r[0] for r in rows[1:]), "labels.csv"])

    with pytest.raises(ConfigError, match="not an empty folder"):
        write_split(one_photo_val, out)
    assert len(list(out.iterdir())) == len(samples) + 1  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        write_split(one_photo_val, tmp_path / "file")
    with pytest.raises(ConfigError, match="unknown split"):
        write_split("holdout", tmp_path / "holdout")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "split"]  # no temp folder, nothing half-made


def test_write_split_interrupted_leaves_nothing(one_photo_val: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from diffv2iqa_trt.training import data

    calls = 0
    real = data.sample_file_name

    def fail_on_the_fourth(sample: data.Sample) -> str:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return real(sample)

    monkeypatch.setattr(data, "sample_file_name", fail_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        data.write_split(one_photo_val, tmp_path / "split")
    assert calls == 4 and list(tmp_path.iterdir()) == []


def test_write_split_cli_reports_errors_without_traceback(one_photo_val: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from diffv2iqa_trt.training.cli import train_app

    out = tmp_path / "val"
    result = CliRunner().invoke(train_app, ["write-split", "--split", one_photo_val, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {1 + len(DISTORTIONS) * LEVELS} images and labels.csv (pseudo-MOS) to {out}" in result.output
    again = CliRunner().invoke(train_app, ["write-split", "--split", "val", "--out", str(out)])
    assert again.exit_code == 2 and "error:" in again.output and "not an empty folder" in again.output
    assert isinstance(again.exception, SystemExit) and "Traceback" not in again.output
    bad = CliRunner().invoke(train_app, ["write-split", "--split", "holdout", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown split 'holdout'" in bad.output and not (tmp_path / "x").exists()


def test_train_iqa_cli_checks_options_before_loading(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from diffv2iqa_trt.training.cli import train_app

    base = ["iqa", "--restorer", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o.safetensors"),
            "--log", str(tmp_path / "log.json")]
    zero = CliRunner().invoke(train_app, [*base, "--batch-size", "0"])
    assert zero.exit_code == 2 and "epochs and batch_size must be >= 1" in zero.output  # not "file not found"
    missing = CliRunner().invoke(train_app, base)
    assert missing.exit_code == 2 and "checkpoint file not found" in missing.output
    assert isinstance(missing.exception, SystemExit) and list(tmp_path.iterdir()) == []


def _fake_crops(n: int, value: float) -> CropSet:
    x, y0, yt1, yt2 = (np.full((n, 3, 4, 4), value + k, np.float32) for k in range(4))
    return CropSet(x, y0, yt1, yt2, target=np.full(n, value, np.float32), owner=np.arange(n))


def test_crop_cache_reuses_and_rebuilds_on_a_new_restorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from diffv2iqa_trt.training import crop_cache

    builds: list[tuple[int, int]] = []

    def fake_build(model: object, samples: object, per_image: int, *, seed: int, log: object = None) -> CropSet:
        builds.append((per_image, seed))
        return _fake_crops(3, float(len(builds)))

    monkeypatch.setattr(crop_cache, "build_crops", fake_build)
    restorer, cache = tmp_path / "restorer.safetensors", tmp_path / "cache"
    restorer.write_bytes(b"restorer one")
    messages: list[str] = []

    def crops(seed: int = 5) -> CropSet:
        return crop_cache.cached_crops(None, [], 2, seed=seed, name="train", cache_dir=cache,  # type: ignore[arg-type]
                                       restorer_path=restorer, log=messages.append)

    first = crops()
    key = hashlib.sha256(b"restorer one").hexdigest()[:12]
    assert builds == [(2, 5)] and [p.name for p in cache.iterdir()] == [f"train-2-seed5-{key}.npz"]  # no temp file
    second = crops()
    assert builds == [(2, 5)] and messages[-1] == f"reusing restored crops {cache / f'train-2-seed5-{key}.npz'}"
    for field in ("x", "y0", "yt1", "yt2", "target", "owner"):
        assert np.array_equal(getattr(first, field), getattr(second, field)), field
    crops(seed=6)  # another crop seed is another file
    assert builds == [(2, 5), (2, 6)]

    restorer.write_bytes(b"restorer two")  # same name, other weights: never a stale hit
    third = crops()
    assert builds == [(2, 5), (2, 6), (2, 5)] and third.target[0] == 3.0
    assert len(list(cache.iterdir())) == 3

    stale = cache / f"train-2-seed5-{hashlib.sha256(b'restorer two').hexdigest()[:12]}.npz"
    stale.write_bytes(b"PK truncated")  # what a run killed during a non-atomic write could leave
    crops()
    assert len(builds) == 4 and "unreadable" in messages[-1]

    crop_cache.cached_crops(None, [], 1, seed=0, name="val", cache_dir=None,  # type: ignore[arg-type]
                            restorer_path=tmp_path / "not-read")
    assert len(builds) == 5 and len(list(cache.iterdir())) == 3  # no cache folder: built, nothing written

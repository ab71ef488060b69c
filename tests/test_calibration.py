"""Calibration sets: what the recorder keeps is what the graphs received, at every step; the cache is reused only while
nothing it depends on changed; bad inputs are refused with the minimum named."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffv2iqa_trt.assemble import BuildOptions, build_onnx_bundle
from diffv2iqa_trt.bundle import Bundle, load_bundle, sha256_file
from diffv2iqa_trt.calibration import MIN_IMAGES, CalibrationSet, calibration_set, step_ranges
from diffv2iqa_trt.calibration import record as recording
from diffv2iqa_trt.calibration.cache import (
    CalibrationCacheWarning,
    arrays_sha256,
    cache_path,
    check_cached,
    load_cached,
    save,
)
from diffv2iqa_trt.contract import BRANCH_INPUTS, GRAPH_NAMES, RESTORE_INPUTS, RESTORE_STEP
from diffv2iqa_trt.data.distortions import distort
from diffv2iqa_trt.data.photos import SET_DISTORTIONS, photos
from diffv2iqa_trt.errors import ConfigError
from diffv2iqa_trt.reference.loading import load_model
from diffv2iqa_trt.runtime.crops import prepare
from diffv2iqa_trt.runtime.from_bundle import bundle_pipeline
from diffv2iqa_trt.runtime.images import load_image
from diffv2iqa_trt.runtime.noise import noise_bank

IMAGES = 9  # one more than the minimum


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    loaded = load_model(preset_name="tiny")
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return build_onnx_bundle(loaded.model, loaded.info, out, BuildOptions(include_checkpoint=False),
                             init_seed=loaded.init_seed).path


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    """Real photographs (long side 96, so crops mode and faithful mode differ) with synthetic distortions."""
    base = list(photos(max_side=96).values())
    return [distort(p, SET_DISTORTIONS[i % 3], 3, seed=i) for i, p in enumerate(base[:IMAGES + 2])]


def save_pngs(folder: Path, images: list[np.ndarray], prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"{prefix}{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory, pictures: list[np.ndarray]) -> Path:
    return save_pngs(tmp_path_factory.mktemp("images"), pictures[:IMAGES])


@pytest.fixture(scope="module")
def center(bundle: Bundle, image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CalibrationSet:
    """The bundle's own policy (center crops, crops mode): one crop per image."""
    cs, reused = calibration_set(bundle, [image_dir], cache_dir=tmp_path_factory.mktemp("cache"))
    assert not reused
    return cs


def rows_at(cs: CalibrationSet, step: int) -> np.ndarray:
    """Row indices of one step, ordered by crop."""
    idx = np.flatnonzero(cs.step == step)
    return idx[np.argsort(cs.crop[idx])]


# --- restore_step records -----------------------------------------------------------------------------------------


def test_restore_rows_cover_every_step_of_every_crop(center: CalibrationSet, bundle: Bundle) -> None:
    steps = bundle.manifest.pipeline.steps
    assert center.crops == IMAGES and center.rows(RESTORE_STEP) == IMAGES * steps
    for c in range(center.crops):
        assert sorted(center.step[center.crop == c].tolist()) == list(range(steps))
    assert center.meta["counts"] == {"files": IMAGES, "images": IMAGES, "crops": IMAGES,
                                     "restore_rows": IMAGES * steps, "noise_rows": steps}
    assert center.meta["pipeline"]["crops"] == "center" and center.meta["pipeline"]["mode"] == "crops"


def test_restore_rows_carry_the_manifest_tables_and_the_noise_bank(center: CalibrationSet, bundle: Bundle) -> None:
    p = bundle.manifest.pipeline
    gamma = np.asarray(p.gamma, dtype=np.float32)
    coef = np.asarray(p.coef, dtype=np.float32)
    assert np.array_equal(center.gamma, gamma[center.step])
    assert np.array_equal(center.coef, coef[center.step])
    assert len(set(gamma.tolist())) == p.steps  # so the check above pins each row's step
    s = p.crop_size
    bank = noise_bank(p.noise.seed, p.steps, s, s)
    assert np.array_equal(center.inputs(RESTORE_STEP)["z"], bank[center.step])
    # The first step starts every crop from the bank's last row, the shared initial sample.
    first = rows_at(center, p.steps - 1)
    assert np.array_equal(center.y[first], np.broadcast_to(bank[p.steps], (center.crops, 3, s, s)))


def test_recorded_rows_chain_through_the_real_graph(center: CalibrationSet, bundle: Bundle) -> None:
    """restore_step on the rows of step i gives the recorded y of step i-1 (and the snapshots at the capture steps)."""
    p = bundle.manifest.pipeline
    ex = bundle_pipeline(bundle, "onnxruntime").executor
    for step in range(p.steps):
        idx = rows_at(center, step)
        feed = center.inputs(RESTORE_STEP, idx)
        out = ex.download(ex.restore_step(feed["x"], feed["y"], feed["gamma"], feed["coef"], feed["z"][:1]))
        following = {0: center.y0, p.capture_t1: center.y_t1, p.capture_t2: center.y_t2}
        want = following[step][center.crop[idx]] if step in following else center.y[rows_at(center, step - 1)]
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-5, err_msg=f"step {step}")
        if step > 0:
            assert np.array_equal(center.crop[rows_at(center, step - 1)], center.crop[idx])


# --- branch records -----------------------------------------------------------------------------------------------


def test_branch_records_are_what_the_pipeline_feeds(center: CalibrationSet, bundle: Bundle) -> None:
    """Independently: each recorded crop's image, restored by a plain bundle pipeline, cut at the recorded box."""
    pipe = bundle_pipeline(bundle, "onnxruntime", batch_size=1)
    s = pipe.spec.crop_size
    files = center.meta["image_files"]
    assert len(files) == IMAGES and sorted(set(center.crop_source[:, 0].tolist())) == list(range(IMAGES))
    for c, (image, unit, top, left) in enumerate(center.crop_source.tolist()):
        work = pipe.prepare(load_image(files[image]))[unit]
        snaps = pipe.restore(work.x[None])
        window = (slice(None), slice(top, top + s), slice(left, left + s))
        feed = center.inputs("vda", np.array([c]))
        for name, want in zip(BRANCH_INPUTS, (work.x[None], snaps.y0, snaps.yt1, snaps.yt2), strict=True):
            np.testing.assert_allclose(feed[name][0], want[0][window], rtol=0, atol=1e-5, err_msg=f"{name} {c}")
    for name in BRANCH_INPUTS:  # vcg and vda take the same four crops
        assert np.array_equal(center.inputs("vcg")[name], center.inputs("vda")[name])


# --- feeds --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_feeds_batches_differ_and_cover_every_row_once(center: CalibrationSet, graph: str) -> None:
    batch = 4
    feeds = list(center.feeds(graph, batch))
    batches = center.batches(graph, batch)
    assert len(feeds) == len(batches) >= 3
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(center.rows(graph)))
    names = RESTORE_INPUTS if graph == RESTORE_STEP else BRANCH_INPUTS
    for a, b in zip(feeds, feeds[1:], strict=False):  # never one batch repeated (ModelOpt's `[{}] * n` bug)
        assert a is not b
        assert any(a[n].shape != b[n].shape or not np.array_equal(a[n], b[n]) for n in names)
        assert not any(np.shares_memory(a[n], b[n]) for n in names)
    for feed, idx in zip(feeds, batches, strict=True):
        assert list(feed) == list(names) and 1 <= len(idx) <= batch
        assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in feed.values())
        full = center.inputs(graph, idx)
        for n in names:
            if graph == RESTORE_STEP and n == "z":  # the graph takes one noise image per call
                assert feed["z"].shape == (1, 3, center.crop_size, center.crop_size)
                assert np.array_equal(np.broadcast_to(feed["z"], full["z"].shape), full["z"])
            else:
                assert np.array_equal(feed[n], full[n])
        if graph == RESTORE_STEP:
            assert len(set(center.step[idx].tolist())) == 1
    with pytest.raises(ConfigError):
        next(center.feeds(graph, 0))


def test_step_ranges_report_each_step(center: CalibrationSet, bundle: Bundle) -> None:
    ranges = step_ranges(center)
    steps = bundle.manifest.pipeline.steps
    assert [r.step for r in ranges] == list(range(steps - 1, -1, -1))
    for r in ranges:
        y = center.y[center.step == r.step]
        assert r.rows == IMAGES and r.y_absmax == pytest.approx(float(np.abs(y).max()))
        assert r.y_min == pytest.approx(float(y.min())) and r.y_max == pytest.approx(float(y.max()))
    assert max(r.share for r in ranges) == 1.0 and all(0 < r.share <= 1 for r in ranges)


# --- other policies, modes and limits -----------------------------------------------------------------------------


def test_faithful_mode_records_windows_of_the_whole_image_loop(bundle: Bundle, image_dir: Path) -> None:
    p = bundle.manifest.pipeline
    s = p.crop_size
    cs, _ = calibration_set(bundle, [image_dir], crops="five", mode="faithful", max_crops=16, use_cache=False)
    assert cs.crops == 16 and cs.rows(RESTORE_STEP) == 16 * p.steps
    # Round-robin: every image gives a crop before any gives a second.
    per_image = np.bincount(cs.crop_source[:, 0], minlength=IMAGES)
    assert per_image.min() == 1 and per_image.max() == 2
    banks: dict[tuple[int, ...], np.ndarray] = {}
    for c, (image, unit, top, left) in enumerate(cs.crop_source.tolist()):
        work = prepare(load_image(cs.meta["image_files"][image]), "five", "faithful", s, 16)[unit]
        window = (slice(None), slice(top, top + s), slice(left, left + s))
        assert work.shape[1:] != (s, s)  # the whole image was restored, not the crop
        assert np.array_equal(cs.crop_x[c], work.x[window])
        bank = banks.setdefault(work.shape, noise_bank(p.noise.seed, p.steps, *work.shape[1:]))
        rows = np.flatnonzero(cs.crop == c)
        assert sorted(cs.step[rows].tolist()) == list(range(p.steps))
        for r in rows:
            assert np.array_equal(cs.z[cs.z_index[r]], bank[cs.step[r]][window])
    for idx in cs.batches(RESTORE_STEP, 8):  # a batch shares one noise window
        assert len(set(cs.z_index[idx].tolist())) == 1


def test_rows_per_step_keeps_every_crop_at_some_steps(bundle: Bundle, image_dir: Path) -> None:
    steps = bundle.manifest.pipeline.steps
    cs, _ = calibration_set(bundle, [image_dir], rows_per_step=3, use_cache=False)
    assert cs.crops == IMAGES and cs.rows(RESTORE_STEP) == 3 * steps
    assert np.bincount(cs.step, minlength=steps).tolist() == [3] * steps
    assert sorted(set(cs.crop.tolist())) == list(range(IMAGES))
    assert cs.y0.shape[0] == IMAGES  # the branch records keep every crop


# --- the cache ----------------------------------------------------------------------------------------------------


def changed_bundle(bundle_dir: Path, out: Path) -> Bundle:
    """A copy whose vcg graph file differs (another doc string): other weights, as far as any hash can tell."""
    import onnx

    shutil.copytree(bundle_dir, out)
    graph = out / "vcg.fp32.onnx"
    model = onnx.load(str(graph))
    model.doc_string = "another model"
    onnx.save(model, str(graph))
    doc = json.loads((out / "manifest.json").read_text())
    doc["files"]["vcg.fp32.onnx"] = {"sha256": sha256_file(graph), "bytes": graph.stat().st_size}
    doc["graphs"]["vcg"]["variants"]["fp32"]["sha256"] = sha256_file(graph)
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return load_bundle(out)


def test_cache_is_reused_until_something_changes(bundle: Bundle, bundle_dir: Path, pictures: list[np.ndarray],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real_record = recording.record

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real_record(*args, **kwargs)

    monkeypatch.setattr(recording, "record", counting)
    images = save_pngs(tmp_path / "images", pictures[:IMAGES])
    cache = tmp_path / "cache"
    stages: list[str] = []

    def calibrate(b: Bundle = bundle, paths: tuple[Path, ...] = (images,), **kw: Any) -> tuple[CalibrationSet, bool]:
        return calibration_set(b, list(paths), cache_dir=cache, progress=lambda s, d, t: stages.append(s), **kw)

    first, reused = calibrate()
    assert not reused and len(runs) == 1 and {"hashing", "decoding", "recording"} <= set(stages)
    again, reused = calibrate()
    assert reused and len(runs) == 1 and again.key == first.key
    assert all(np.array_equal(a, b) for a, b in zip(first.arrays().values(), again.arrays().values(), strict=True))
    # Names and order are not part of the key: the same files elsewhere, renamed, are the same set.
    renamed = save_pngs(tmp_path / "renamed", pictures[:IMAGES][::-1], prefix="other")
    assert calibrate(paths=(renamed,))[1] and len(runs) == 1

    (images / "img03.png").unlink()
    Image.fromarray(pictures[IMAGES]).save(images / "img03.png")  # another image under the same name
    changed, reused = calibrate()
    assert not reused and len(runs) == 2 and changed.key != first.key
    assert not calibrate(crops="five")[1] and len(runs) == 3
    assert not calibrate(mode="faithful")[1] and len(runs) == 4
    small, reused = calibrate(max_crops=MIN_IMAGES)
    assert not reused and small.crops == MIN_IMAGES and len(runs) == 5
    other, reused = calibrate(b=changed_bundle(bundle_dir, tmp_path / "other-bundle"))
    assert not reused and len(runs) == 6 and other.key != changed.key
    assert other.meta["bundle"]["weights"]["vcg"] != changed.meta["bundle"]["weights"]["vcg"]

    # A damaged cache file is a miss: rebuilt and replaced (a warning says so), then reused.
    path = cache / f"{changed.key}.npz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(CalibrationCacheWarning, match=r"\.npz does not load .*recorded again and the file replaced"):
        rebuilt, reused = calibrate()
    assert not reused and len(runs) == 7 and np.array_equal(rebuilt.y, changed.y)
    assert calibrate()[1] and len(runs) == 7
    # One file per key, nothing half-written left behind.
    assert sorted(p.suffix for p in cache.iterdir()) == [".npz"] * 6


class _Recording(Exception):
    """Raised by a stand-in for the recorder: the cache was not used and the set would be recorded again (the real
    re-recording is test_cache_is_reused_until_something_changes's; here it would only cost time)."""


def test_a_swapped_or_altered_cache_file_is_detected_and_recorded_again(
        center: CalibrationSet, bundle: Bundle, image_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22, case 3. Before: the key hashed the inputs only and the arrays were never checked, so a file whose
    metadata carried the key was reused whatever arrays it held, and a file of another key was replaced silently."""
    assert center.meta["arrays_sha256"] == arrays_sha256(center.arrays())  # recorded with the set
    cache = tmp_path / "cache"
    path = cache_path(cache, center.key)
    save(center, path)  # the fixture's own set, as calibration_set wrote it
    def no_recording(*args: Any, **kwargs: Any) -> Any:
        raise _Recording()

    monkeypatch.setattr(recording, "record", no_recording)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibration_set(bundle, [image_dir], cache_dir=cache)[1]  # intact: reused, silently

    def write(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)

    # Other arrays under this key's own metadata: a valid file that loads as a calibration set.
    other = center.arrays() | {"y": center.y * 0.5, "y0": center.y0[::-1].copy()}
    write(other, dict(center.meta))
    assert CalibrationSet.from_arrays(other, center.meta).crops == center.crops
    altered = (rf"{center.key}\.npz holds arrays whose sha256 [0-9a-f]{{16}}… is not the "
               rf"{center.meta['arrays_sha256'][:16]}… recorded when it was written .*recorded again and the file "
               r"replaced")
    with pytest.warns(CalibrationCacheWarning, match=altered), pytest.raises(_Recording):
        calibration_set(bundle, [image_dir], cache_dir=cache)
    # One value nudged in place is caught the same way.
    nudged = center.arrays() | {"gamma": center.gamma + np.float32(1e-3) * (np.arange(len(center.gamma)) == 0)}
    write(nudged, dict(center.meta))
    assert load_cached(path, center.key) is None
    assert (check_cached(path, center.key)[1] or "").startswith("holds arrays whose sha256")

    # Another key's set renamed to this key's file: before, a silent miss; now the warning says which file and why.
    write(center.arrays(), {**center.meta, "key": "0" * 64})
    swapped = r"holds the set of another key \(the file was renamed or swapped\); .*recorded again"
    with pytest.warns(CalibrationCacheWarning, match=swapped), pytest.raises(_Recording):
        calibration_set(bundle, [image_dir], cache_dir=cache)
    # A file of an earlier release (no hash recorded) is not trusted either.
    write(center.arrays(), {k: v for k, v in center.meta.items() if k != "arrays_sha256"})
    assert check_cached(path, center.key) == (None, "records no hash of its arrays (written by an earlier release)")


def test_failed_recording_writes_nothing(bundle: Bundle, image_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(recording, "record", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        calibration_set(bundle, [image_dir], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --- bad input ----------------------------------------------------------------------------------------------------


def test_too_few_images_names_the_minimum(bundle: Bundle, pictures: list[np.ndarray], tmp_path: Path) -> None:
    few = save_pngs(tmp_path / "few", pictures[:MIN_IMAGES - 1])
    with pytest.raises(ConfigError, match=f"at least {MIN_IMAGES} distinct images"):
        calibration_set(bundle, [few], cache_dir=tmp_path / "cache")
    # Copies of one image are one image.
    same = tmp_path / "same"
    same.mkdir()
    for i in range(MIN_IMAGES + 1):
        shutil.copy(few / "img00.png", same / f"copy{i}.png")
    with pytest.raises(ConfigError, match=f"at least {MIN_IMAGES}"):
        calibration_set(bundle, [same], cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="--max-crops"):
        calibration_set(bundle, [few], max_crops=MIN_IMAGES - 1)


def test_folder_of_corrupt_files_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(MIN_IMAGES + 2):
        (bad / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 64)
    with pytest.raises(ConfigError, match=f"(?s)at least {MIN_IMAGES}.*usable images: 0.*broken0.png: not an image"):
        calibration_set(bundle, [bad], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_folders_are_refused(bundle: Bundle, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "images"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":  # as chmod 000 would be for anyone but root
        real_scandir = os.scandir

        def refuse(path: Any) -> Any:
            if Path(path) == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", refuse)
    expected = {"missing": "does not exist", "empty": "no image files", "unreadable": "cannot read the folder"}
    with pytest.raises(ConfigError, match=expected[case]):
        calibration_set(bundle, [folder], cache_dir=tmp_path / "cache")


def test_some_bad_files_are_skipped_and_reported(bundle: Bundle, image_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.png").write_bytes(b"not an image")
    cs, _ = calibration_set(bundle, [image_dir, extra], use_cache=False)
    assert cs.crops == IMAGES and cs.meta["counts"]["files"] == IMAGES + 1
    assert [s["file"] for s in cs.meta["skipped"]] == [str(extra / "broken.png")]


def test_calibrate_cli_records_then_reuses(bundle_dir: Path, image_dir: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from diffv2iqa_trt.cli import app

    runner = CliRunner()
    args = ["calibrate", "--bundle", str(bundle_dir), "--images", str(image_dir), "--max-crops", "8",
            "--cache-dir", str(tmp_path / "cache"), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["reused"] is False and doc["counts"]["crops"] == 8
    steps = doc["pipeline"]["steps"]
    assert [r["step"] for r in doc["step_ranges"]] == list(reversed(range(steps)))  # loop order, every step once
    second = json.loads(runner.invoke(app, args).stdout)
    assert second["reused"] is True and second["key"] == doc["key"]
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0 and "reused cached calibration set" in table.stdout
    # A cached file whose arrays were altered: a warning line (no traceback), and the set is recorded again.
    cached = tmp_path / "cache" / f"{doc['key']}.npz"
    with np.load(cached) as npz:
        arrays = dict(npz)
    np.savez(cached, **arrays | {"y": arrays["y"] * 0.5})
    altered = runner.invoke(app, args)
    assert altered.exit_code == 0 and json.loads(altered.stdout)["reused"] is False, altered.output
    assert "warning: calibration cache file" in altered.stderr and "recorded again" in altered.stderr
    assert "Traceback" not in altered.output and "CalibrationCacheWarning" not in altered.stderr
    missing = runner.invoke(app, ["calibrate", "--bundle", str(bundle_dir), "--images", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output

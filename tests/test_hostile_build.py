"""Hostile inputs are refused early and cheaply (tracker issue 10, findings 5 and 9).

Checkpoints: the model config in the metadata is validated before any model is built, and the header's tensors are
compared with the model's before any tensor data is read. Builds: everything that can be checked without exporting
(the output location, free space, the scoring options) is checked before the export, and an OSError during the build
becomes a message naming the path, with no bundle left behind.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import diffv2iqa_trt.assemble as asm
import diffv2iqa_trt.model.checkpoint as ckpt
from diffv2iqa_trt.assemble import BuildOptions, build_onnx_bundle
from diffv2iqa_trt.cli import app
from diffv2iqa_trt.config import (
    MAX_STATE_BYTES,
    ModelConfig,
    ScoringConfig,
    paper_config,
    preset,
    state_dict_bytes,
    tiny_config,
)
from diffv2iqa_trt.errors import BuildError, BundleError, CheckpointError, ConfigError, DiffV2IQAError
from diffv2iqa_trt.model.checkpoint import CheckpointInfo, load_checkpoint
from diffv2iqa_trt.model.diffv2iqa import DiffV2IQA
from diffv2iqa_trt.reference.loading import DEMO_WEIGHTS, load_model
from diffv2iqa_trt.schedule import check_capture_steps, step_tables

MEMORY_LIMIT_MB = 200  # growth of the peak RSS allowed while a hostile checkpoint is refused


def _peak_rss_mb() -> float:
    resource = pytest.importorskip("resource")  # POSIX only
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


@pytest.fixture()
def built_models(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Records (config name, default device) of every DiffV2IQA constructed (a meta-device skeleton included)."""
    calls: list[tuple[str, str]] = []
    original = DiffV2IQA.__init__

    def recording(self: DiffV2IQA, config: ModelConfig) -> None:
        calls.append((config.name, str(torch.get_default_device())))
        original(self, config)

    monkeypatch.setattr(DiffV2IQA, "__init__", recording)
    return calls


def _write_native(path: Path, config_json: str, tensors: dict[str, torch.Tensor] | None = None,
                  **meta: str) -> Path:
    metadata = {"format": ckpt.FORMAT_NAME, "format_version": str(ckpt.FORMAT_VERSION), "config": config_json,
                "trained": "false", **meta}
    save_file(tensors if tensors is not None else {"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


def _tiny_dict() -> dict[str, Any]:
    return tiny_config().to_dict()


def _mutated(edit: Any) -> str:
    data = _tiny_dict()
    edit(data)
    return json.dumps(data)


# --- Finding 5: checkpoint metadata is validated before anything is built ---------------------------------------------

HOSTILE_CONFIGS = {
    # name: (config JSON of the metadata, text the message must contain)
    "norm_groups_zero": (_mutated(lambda d: d["unet"].update(norm_groups=0)), "unet.norm_groups = 0"),
    "inner_channel_65536": (_mutated(lambda d: d["unet"].update(inner_channel=65536)), "unet.inner_channel = 65536"),
    "heads_not_dividing_embed_dim": (_mutated(lambda d: d["iqa"]["vit"].update(num_heads=3)),
                                     "iqa.vit.num_heads = 3 is invalid: must divide embed_dim = 32"),
    "string_for_int": (_mutated(lambda d: d["unet"].update(inner_channel="16")), "must be an integer (got str)"),
    "bool_for_int": (_mutated(lambda d: d["iqa"]["vit"].update(depth=True)), "iqa.vit.depth = True"),
    "float_for_int": (_mutated(lambda d: d["iqa"]["resnet"].update(width=8.0)), "iqa.resnet.width = 8.0"),
    "list_for_object": (_mutated(lambda d: d.update(unet=[1, 2])), "unet must be an object"),
    "object_for_list": (_mutated(lambda d: d["unet"].update(channel_mults={"a": 1})), "unet.channel_mults"),
    "nested_list": (_mutated(lambda d: d["unet"].update(channel_mults=[[1]])), "must be a list of integers"),
    "null_field": (_mutated(lambda d: d["schedule"].update(steps=None)), "schedule.steps = None"),
    "taps_beyond_depth": (_mutated(lambda d: d["iqa"]["vit"].update(taps=[0, 1, 2, 4])), "iqa.vit.taps[3] = 4"),
    "capture_after_last_step": (_mutated(lambda d: d["schedule"].update(capture_t2=12)), "schedule.capture_t2 = 12"),
    "swin_lengths_differ": (_mutated(lambda d: d["iqa"]["head"].update(swin_heads=[2])), "iqa.head.swin_heads"),
    "window_not_dividing_grid": (_mutated(lambda d: d["iqa"]["head"].update(window_size=3)), "iqa.head.window_size"),
    "too_many_tokens": (_mutated(lambda d: d["iqa"]["vit"].update(img_size=1024, patch_size=1)), "tokens"),
    "huge_but_in_range": (_mutated(lambda d: d["iqa"]["vit"].update(embed_dim=4096, depth=64, num_heads=64)),
                          "GiB of weights"),
    "unknown_field": (_mutated(lambda d: d["unet"].update(colour="red")), "unet.colour"),
    "missing_field": (_mutated(lambda d: d.pop("iqa")), "iqa missing"),
    "not_an_object": ("[1, 2, 3]", "must be an object"),
    "bad_json": ("{not json", "not valid JSON"),
    "deeply_nested_json": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "huge_number": ('{"name": ' + "9" * 10_000 + "}", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_checkpoint_config_is_refused_before_any_model_is_built(tmp_path, built_models, case):
    config_json, expected = HOSTILE_CONFIGS[case]
    path = _write_native(tmp_path / f"{case}.safetensors", config_json)
    before = _peak_rss_mb()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    grown = _peak_rss_mb() - before
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "fix the config" in message or "re-convert" in message  # says what to do
    assert built_models == []  # refused from the metadata alone
    assert grown < MEMORY_LIMIT_MB


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                                     b"\xff" * 8 + b"{}", b"just some text, not a checkpoint\n"],
                         ids=["empty", "zeros", "png", "huge_header_size", "text"])
def test_a_file_that_is_not_safetensors_is_refused_naming_it(tmp_path, built_models, content):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a native safetensors checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "diffv2iqa-trt convert" in str(info.value)
    assert built_models == []


def test_directories_missing_files_and_bad_metadata_are_checkpoint_errors(tmp_path, built_models):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint"):
        load_checkpoint(tmp_path / "dir.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint file not found; check the path"):
        load_checkpoint(tmp_path / "missing.safetensors")
    good = json.dumps(_tiny_dict())
    bad_trained = _write_native(tmp_path / "trained.safetensors", good, trained='"yes"')
    with pytest.raises(CheckpointError, match="'trained' must be true or false"):
        load_checkpoint(bad_trained)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "noconfig.safetensors"),
              metadata={"format": ckpt.FORMAT_NAME, "format_version": str(ckpt.FORMAT_VERSION)})
    with pytest.raises(CheckpointError, match="holds no model config"):
        load_checkpoint(tmp_path / "noconfig.safetensors")
    assert built_models == []


def test_tensor_shapes_are_compared_before_any_tensor_data_is_read(tmp_path, monkeypatch, built_models):
    """A valid config with tensors that do not fit it: refused from the header (only the meta-device skeleton is
    built, and load_file, which reads the data, is never called)."""
    def no_data(*args: Any, **kwargs: Any) -> None:
        pytest.fail("tensor data was read before the header was checked")

    monkeypatch.setattr(ckpt, "load_file", no_data)
    tensors = {"unet.noise_level_mlp.1.weight": torch.zeros(64, 16), "iqa.huge": torch.zeros(1000, 100)}
    path = _write_native(tmp_path / "wrong.safetensors", json.dumps(_tiny_dict()), tensors)
    with pytest.raises(CheckpointError, match=r"does not match the model architecture") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "unexpected keys (1): iqa.huge" in message
    assert built_models == [("tiny", "meta")]  # only the skeleton, on the meta device


def test_tensor_dtypes_must_match(tmp_path, tiny_model):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    state["iqa.res.fc.weight"] = state["iqa.res.fc.weight"].double()
    path = _write_native(tmp_path / "f64.safetensors", json.dumps(_tiny_dict()), state)
    with pytest.raises(CheckpointError, match=r"(?s)another dtype .*iqa.res.fc.weight F64 != F32"):
        load_checkpoint(path)


def test_presets_and_the_demo_checkpoint_validate_and_load():
    for name in ("paper", "tiny"):
        preset(name).validate()
    with pytest.raises(ConfigError, match="unknown preset 'huge'; choose one of paper, tiny"):
        preset("huge")
    loaded = load_model()
    assert loaded.path == DEMO_WEIGHTS and loaded.model.config == tiny_config()
    with pytest.raises(CheckpointError, match="holds a 'tiny' model but --preset paper"):
        load_model(DEMO_WEIGHTS, "paper")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_model(DEMO_WEIGHTS, "huge")


def _meta_state_bytes(config: ModelConfig) -> int:
    with torch.device("meta"):
        model = DiffV2IQA(config)
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def test_state_size_estimate_is_exact():
    """config.state_dict_bytes mirrors the constructors; exact on the presets and on variants that exercise every
    branch (attention levels, channel changes, single-window and shifted Swin stages, ResNet downsamples)."""
    import dataclasses as dc

    t = tiny_config()
    head = t.iqa.head
    variants = [
        paper_config(), t,
        t.replace(iqa=dc.replace(t.iqa, head=dc.replace(head, window_size=2, swin_depths=(3, 1), swin_heads=(2, 4)))),
        t.replace(iqa=dc.replace(t.iqa, head=dc.replace(head, window_size=1, num_tab=0))),
        t.replace(unet=dc.replace(t.unet, res_blocks=3, attn_res=(64, 16, 4), channel_mults=(1, 3))),
        t.replace(iqa=dc.replace(t.iqa, resnet=dc.replace(t.iqa.resnet, layers=(2, 1, 3, 1), width=5),
                                 vit=dc.replace(t.iqa.vit, mlp_ratio=2.5, patch_size=4))),
    ]
    for config in variants:
        config.validate()
        assert state_dict_bytes(config) == _meta_state_bytes(config), config
    assert state_dict_bytes(paper_config()) < MAX_STATE_BYTES / 3  # the cap sits well above the paper model


# --- Property: validation is total ------------------------------------------------------------------------------------

MUTATIONS = 200
HOSTILE_VALUES: list[Any] = [
    -1, -2**31, 0, 1, 2, 3, 4, 8, 7, 64, 2**31, 2**63, 10**100, 0.5, -0.0, 1e308, float("nan"), float("inf"),
    True, False, None, "", "16", "x" * 1000, [], [1], [[1]], [1] * 100, [0, 1, 2, 3], {}, {"a": 1},
]


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every field and list entry of a config dict (the containers too)."""
    found: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(data, dict):
        for k, v in data.items():
            found += _leaves(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += _leaves(v, (*path, i))
    return found


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set the field at `path`, unless an earlier edit replaced a container on the way."""
    for key in path[:-1]:
        if not isinstance(data, (dict, list)) or (isinstance(data, list) and key >= len(data)) or (
                isinstance(data, dict) and key not in data):
            return
        data = data[key]
    if isinstance(data, dict) or (isinstance(data, list) and path[-1] < len(data)):
        data[path[-1]] = value


def test_random_config_mutations_raise_only_config_errors():
    rng = random.Random(20240610)
    base = json.loads(json.dumps(_tiny_dict()))  # tuples as lists, as in a file
    paths = _leaves(base)
    outcomes = {"valid": 0, "refused": 0}
    spent = 0.0
    for _ in range(MUTATIONS):
        data = copy.deepcopy(base)
        for _edit in range(rng.choice((1, 1, 2))):
            _set(data, rng.choice(paths), copy.deepcopy(rng.choice(HOSTILE_VALUES)))
        start = time.perf_counter()
        try:
            config = ModelConfig.from_dict(data)
        except ConfigError:
            outcomes["refused"] += 1
            continue
        finally:
            spent += time.perf_counter() - start
        outcomes["valid"] += 1
        # Valid means buildable: the model (on the meta device, no memory) has exactly the estimated size, and the
        # sampler's tables exist.
        assert state_dict_bytes(config) == _meta_state_bytes(config) <= MAX_STATE_BYTES
        check_capture_steps(config.schedule, config.schedule.steps)
        tables = step_tables(config.schedule)
        assert all(math.isfinite(v) for v in tables.coef.ravel())
    assert outcomes["valid"] >= 10 and outcomes["refused"] >= 100, outcomes  # both sides were exercised
    assert spent < 10.0  # validation is cheap: it allocates nothing


# --- Finding 9: a build refuses what it cannot do before the export ---------------------------------------------------

class Exporting(Exception):
    """Raised by the stand-in exporter: the cheap checks passed and the export began."""


@pytest.fixture()
def export_sentinel(monkeypatch):
    def exporting(*args: Any, **kwargs: Any) -> None:
        raise Exporting

    monkeypatch.setattr(asm, "export_graph", exporting)


@pytest.fixture()
def no_export(monkeypatch):
    def never(*args: Any, **kwargs: Any) -> None:
        pytest.fail("the export began although a cheap check should have refused the build")

    monkeypatch.setattr(asm, "export_graph", never)


def _info() -> CheckpointInfo:
    return CheckpointInfo(trained=False, description="hostile build test")


def test_output_below_a_file_is_refused_before_the_export(tmp_path, tiny_model, no_export):
    (tmp_path / "some_file").write_text("x")
    with pytest.raises(BundleError, match="some_file is not a directory; choose another --out"):
        build_onnx_bundle(tiny_model, _info(), tmp_path / "some_file" / "deeper" / "bundle", BuildOptions())


def test_unwritable_output_is_refused_before_the_export(tmp_path, tiny_model, no_export, monkeypatch):
    real_mkstemp = tempfile.mkstemp

    def read_only(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if Path(kwargs.get("dir") or tempfile.gettempdir()) == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # a read-only mount, even for root
    with pytest.raises(BundleError, match=r"is not writable \(Read-only file system\)") as info:
        build_onnx_bundle(tiny_model, _info(), tmp_path / "new" / "bundle", BuildOptions())
    assert str(tmp_path / "new" / "bundle") in str(info.value)
    assert list(tmp_path.iterdir()) == []  # not even the parent was created


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directory_is_refused_before_the_export(tmp_path, tiny_model, no_export):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BundleError, match="is not writable"):
            build_onnx_bundle(tiny_model, _info(), locked / "bundle", BuildOptions())
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("full", ["output", "staging"])
def test_too_little_free_space_is_refused_before_the_export(tmp_path, tiny_model, no_export, monkeypatch, full):
    out_parent, staging = tmp_path / "out", tmp_path / "staging"
    out_parent.mkdir()
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    real = shutil.disk_usage
    starved = out_parent if full == "output" else staging

    def usage(path: Any) -> Any:
        if Path(path) == starved:
            return real(path)._replace(free=2**20)  # 1 MB free
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(BundleError, match=r"not enough free space in .*1 MB free, the build needs about") as info:
        build_onnx_bundle(tiny_model, _info(), out_parent / "bundle", BuildOptions())
    assert str(starved) in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**64, True, "3"])
def test_out_of_range_seeds_are_refused_at_construction(seed):
    with pytest.raises(ConfigError, match="noise seed .* out of range; use an integer in \\[0, 2\\*\\*64\\)"):
        ScoringConfig(noise_seed=seed)
    assert ScoringConfig(noise_seed=2**64 - 1).noise_seed == 2**64 - 1


@pytest.mark.parametrize("crops", ["grid:100000000", "grid:65", "grid:" + "9" * 10_000])
def test_crop_grids_are_bounded(crops):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="too many crops; use grid:N with N at most 64"):
        ScoringConfig(crops=crops)
    assert time.perf_counter() - start < 1.0
    assert ScoringConfig(crops="grid:64").crops == "grid:64"
    for bad in (None, 5, ["center"]):
        with pytest.raises(ConfigError, match="unknown crop policy"):
            ScoringConfig(crops=bad)
    with pytest.raises(ConfigError, match="unknown mode"):
        ScoringConfig(mode=None)


def test_existing_outputs_are_checked_before_the_export(tmp_path, tiny_model, no_export, export_sentinel):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="is not a bundle .*refusing to replace it even with --overwrite"):
        build_onnx_bundle(tiny_model, _info(), precious, BuildOptions(overwrite=True))
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        build_onnx_bundle(tiny_model, _info(), tmp_path / "afile", BuildOptions(overwrite=True))
    with pytest.raises(BundleError, match="already exists; choose another --out or pass --overwrite"):
        build_onnx_bundle(tiny_model, _info(), precious, BuildOptions())
    with pytest.raises(ConfigError, match=r"--steps 1000000000 must be in \[1, 10000\]"):
        build_onnx_bundle(tiny_model, _info(), tmp_path / "new", BuildOptions(steps=10**9))
    # An empty directory or an old bundle may be replaced: the checks pass and the export begins.
    (tmp_path / "empty").mkdir()
    (tmp_path / "old_bundle").mkdir()
    (tmp_path / "old_bundle" / "manifest.json").write_text("{}")
    for replaceable in ("empty", "old_bundle"):
        with pytest.raises(Exporting):
            build_onnx_bundle(tiny_model, _info(), tmp_path / replaceable, BuildOptions(overwrite=True))


def test_cli_refuses_bad_seeds_and_non_bundle_outputs_before_the_export(tmp_path, no_export):
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "b"), "--preset", "tiny", "--seed=-1"])
    assert result.exit_code == 2 and "noise seed -1 is out of range" in result.stderr
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep")
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "precious"), "--preset", "tiny", "--overwrite"])
    assert result.exit_code == 2 and "is not a bundle" in result.stderr
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep"


def _assert_nothing_left(out: Path, staging: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []  # no `.bundle.tmp-*` next to it
    assert list(staging.iterdir()) == []  # the staging directory is gone


def test_disk_full_during_the_export_is_a_message_and_leaves_no_bundle(tmp_path, tiny_model, monkeypatch):
    out, staging = tmp_path / "out" / "bundle", tmp_path / "staging"
    out.parent.mkdir()
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asm, "export_graph", disk_full)
    with pytest.raises(DiffV2IQAError) as info:
        build_onnx_bundle(tiny_model, _info(), out, BuildOptions())
    message = str(info.value)
    assert isinstance(info.value, BuildError) and str(out) in message
    assert "while exporting restore_step: No space left on device" in message and "free some space" in message
    _assert_nothing_left(out, staging)


def test_disk_full_while_writing_the_checkpoint_names_the_file(tmp_path, tiny_model, monkeypatch):
    out, staging = tmp_path / "out" / "bundle", tmp_path / "staging"
    out.parent.mkdir()
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))

    def exported(model: Any, graph: str, stage: Path, options: Any, say: Any) -> asm.GraphBuild:
        say(f"exporting {graph}")
        (stage / f"{graph}.fp32.onnx").write_bytes(b"stand-in")
        name = f"{graph}.fp32.onnx"
        return asm.GraphBuild(entry=None, files={name: stage / name}, lint={}, check={})

    def disk_full(model: Any, path: Path, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(asm, "export_checked_graph", exported)
    monkeypatch.setattr(asm, "save_checkpoint", disk_full)
    with pytest.raises(BuildError, match=r"while writing the checkpoint: .*model\.safetensors: No space left"):
        build_onnx_bundle(tiny_model, _info(), out, BuildOptions())
    _assert_nothing_left(out, staging)

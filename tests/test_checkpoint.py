import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import diffv2iqa_trt.model.checkpoint as ckpt
from diffv2iqa_trt.config import paper_config, tiny_config
from diffv2iqa_trt.model.checkpoint import (
    CheckpointError,
    div2iqa_state,
    load_authors,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
    sr3_unet_state,
)
from diffv2iqa_trt.model.diffv2iqa import DiffV2IQA, build_model
from diffv2iqa_trt.schedule import step_tables

LAYOUT = Path(ckpt.__file__).parent / "authors_layout"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_native_roundtrip(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model, path, trained=False, description="seed 0")
    loaded, info = load_checkpoint(path)
    assert loaded.config == tiny_model.config and not info.trained and info.description == "seed 0"
    assert _same_weights(loaded, tiny_model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_native_errors(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a native safetensors checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    meta = {"format": ckpt.FORMAT_NAME, "format_version": "99", "config": json.dumps(tiny_model.config.to_dict())}
    save_file(tensors, str(tmp_path / "v99.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.safetensors")
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without diffv2iqa-trt-checkpoint metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    # weights of another architecture under a tiny config
    other = {k: v for k, v in tensors.items() if not k.startswith("iqa.res.fc")}
    other["iqa.res.fc.weight"] = torch.zeros(3, 3)
    meta["format_version"] = "1"
    save_file(other, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): iqa.res.fc.bias") as info:
        load_checkpoint(tmp_path / "shape.safetensors")
    assert "iqa.res.fc.weight (3, 3) != (64, 256)" in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "shape.safetensors"))  # the message names the file


def test_every_native_failure_names_the_file_and_says_what_to_do(tmp_path, tiny_model):
    """Directories, missing files, non-safetensors files and invalid configs: CheckpointError naming the file, before
    any model is built (see tests/test_hostile_build.py for the hostile configs)."""
    (tmp_path / "bundle_dir").mkdir()
    cases = {
        tmp_path / "bundle_dir": "is a directory, not a checkpoint",
        tmp_path / "missing.safetensors": "not found; check the path",
    }
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    cases[tmp_path / "notes.safetensors"] = "not a native safetensors checkpoint"
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    config = tiny_model.config.to_dict()
    config["unet"]["norm_groups"] = 0
    meta = {"format": ckpt.FORMAT_NAME, "format_version": "1", "config": json.dumps(config)}
    save_file(tensors, str(tmp_path / "groups0.safetensors"), metadata=meta)
    cases[tmp_path / "groups0.safetensors"] = "unet.norm_groups = 0 is invalid: must be in [1, 16]"
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(str(path)) and expected in str(info.value), str(info.value)


def _authors_files(tmp_path: Path, model: DiffV2IQA) -> tuple[Path, Path]:
    """State dicts laid out as the authors' code saves them (see model/authors_layout/*.json)."""
    sr3 = {f"denoise_fn.{k}": v.clone() for k, v in model.unet.state_dict().items()}
    tables = step_tables(model.config.schedule, 2000)
    for name in ckpt.SR3_SCHEDULE_BUFFERS:
        sr3[name] = torch.tensor(tables.alphas_cumprod, dtype=torch.float32)
    div = {f"module.{k}": v.clone() for k, v in model.iqa.state_dict().items()}  # nn.DataParallel prefix
    torch.save(sr3, tmp_path / "I1000_E1_gen.pth")
    torch.save(div, tmp_path / "div2iqa.pth")
    return tmp_path / "I1000_E1_gen.pth", tmp_path / "div2iqa.pth"


def test_authors_files_load(tmp_path):
    source = build_model(tiny_config(), seed=3)
    sr3, div = _authors_files(tmp_path, source)
    loaded = load_authors(tiny_config(), sr3, div)
    assert _same_weights(loaded, source)


def test_authors_wrong_files_fail_naming_keys(tmp_path):
    source = build_model(tiny_config(), seed=3)
    sr3, div = _authors_files(tmp_path, source)
    with pytest.raises(CheckpointError, match="SR3 checkpoint .*does not match") as info:
        load_authors(tiny_config(), div, sr3)  # swapped
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)
    torch.save(source, tmp_path / "whole_model.pth")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="Only state dicts are accepted"):
        load_authors(tiny_config(), sr3, tmp_path / "whole_model.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_authors(tiny_config(), tmp_path / "nope.pth", div)


def _layout_state(name: str) -> dict[str, torch.Tensor]:
    keys = json.loads((LAYOUT / name).read_text())["keys"]
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def test_paper_layout_of_the_authors_loads_and_a_wrong_one_fails():
    with torch.device("meta"):
        model = DiffV2IQA(paper_config())
    sr3 = _layout_state("sr3_unet_paper.json")
    sr3.update({name: torch.empty(2000, device="meta") for name in ckpt.SR3_SCHEDULE_BUFFERS})
    load_state_strict(model.unet, sr3_unet_state(sr3), "sr3")
    div = _layout_state("div2iqa_paper.json")
    load_state_strict(model.iqa, div2iqa_state({f"module.{k}": v for k, v in div.items()}), "div2iqa")

    broken = dict(div)
    broken.pop("tablock1.0.c_q.weight")
    broken["qa.c_q.weight"] = torch.empty(784, 999, device="meta")
    broken["extra.weight"] = torch.empty(1, device="meta")
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model.iqa, broken, "div2iqa")
    msg = str(info.value)
    assert "missing keys (1): tablock1.0.c_q.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "qa.c_q.weight (784, 999) != (784, 1000)" in msg


def test_saved_checkpoints_are_byte_identical_across_processes(tmp_path):
    """safetensors orders its header by hash map, randomly per process; the saved bytes must not depend on that
    (a bundle embeds the checkpoint and records its sha256)."""
    import subprocess
    import sys

    code = ("import sys; from diffv2iqa_trt.config import tiny_config; "
            "from diffv2iqa_trt.model.diffv2iqa import build_model; "
            "from diffv2iqa_trt.model.checkpoint import save_checkpoint; "
            "save_checkpoint(build_model(tiny_config(), seed=3), sys.argv[1], trained=False, description='d')")
    paths = [tmp_path / f"c{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", code, str(p)], check=True, timeout=300)
    assert len({p.read_bytes() for p in paths}) == 1
    model, info = load_checkpoint(paths[0])
    reference = build_model(tiny_config(), seed=3)
    assert not info.trained and info.description == "d"
    for (k, a), (k2, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)

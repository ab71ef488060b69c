"""Checkpoint I/O: the native format, and the authors' SR3 and DIV2IQA state dicts.

Native format: one safetensors file; tensors are the state dict of `DiffV2IQA` (`unet.*`, `iqa.*`), and the metadata
holds the format name and version, the model config as JSON, and whether the weights are trained.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..atomic import atomic_path
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .diffv2iqa import DiffV2IQA

FORMAT_NAME = "diffv2iqa-trt-checkpoint"
FORMAT_VERSION = 1
SR3_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
})
_LIST_LIMIT = 20
# torch dtype -> the dtype name a safetensors header uses, for the dtypes a DiffV2IQA state dict holds.
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


@dataclass(frozen=True)
class CheckpointInfo:
    trained: bool
    description: str


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def _mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
              source: str) -> str | None:
    """The message listing missing, unexpected and mis-shaped keys of `found` against `expected`; None if none."""
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    misshaped = sorted(f"{k} {found[k]} != {v}" for k, v in expected.items() if k in found and found[k] != v)
    if not (missing or unexpected or misshaped):
        return None
    msg = f"{source} does not match the model architecture"
    if missing:
        msg += _listing("missing keys", missing)
    if unexpected:
        msg += _listing("unexpected keys", unexpected)
    if misshaped:
        msg += _listing("mis-shaped keys (checkpoint != model)", misshaped)
    return msg + "\n  Check that the preset (--preset) matches the checkpoint, or that this is the right file."


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load `state` into `module`, or raise CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problem = _mismatch(expected, {k: tuple(v.shape) for k, v in state.items()}, source)
    if problem:
        raise CheckpointError(problem)
    module.load_state_dict(dict(state), strict=True)


def save_checkpoint(model: DiffV2IQA, path: str | os.PathLike[str], *, trained: bool, description: str = "") -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "trained": json.dumps(trained),
        "description": description,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        with atomic_path(tmp) as canonical:
            _write_canonical(tmp, canonical)


def _write_canonical(src: Path, dst: Path) -> None:
    """Copy a .safetensors file with its JSON header re-serialised with sorted keys.

    safetensors writes the header (tensor entries and metadata) in hash-map order, which differs from one process to
    the next, so the same weights gave different bytes (and a bundle's checkpoint a different sha256) per build.
    Offsets in the header are relative to the data, so only the header changes; it is padded with spaces to a
    multiple of 8 bytes, as the format expects.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        (size,) = struct.unpack("<Q", fin.read(8))
        header = json.dumps(json.loads(fin.read(size)), sort_keys=True, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        fout.write(struct.pack("<Q", len(header)))
        fout.write(header)
        shutil.copyfileobj(fin, fout, 1 << 20)


_REWRITE_HINT = ("the file is damaged or was not written by this toolkit: re-convert the weights with "
                 "`diffv2iqa-trt convert` or use another checkpoint")


def _check_file(p: Path, what: str) -> None:
    """Refuse paths that cannot be a checkpoint before any reader opens them (a FIFO would block the read)."""
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a {what} file; pass the path of the file itself")
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found; check the path")
    if not p.is_file():
        raise CheckpointError(f"{p}: is not a regular file; pass the path of a {what} file")


def read_checkpoint_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, CheckpointInfo]:
    """The validated model config and the label of a native checkpoint, read from its header only."""
    p = Path(path)
    _check_file(p, "checkpoint (.safetensors)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        hint = (" It looks like a PyTorch pickle: authors' checkpoints are converted with "
                "`diffv2iqa-trt convert`." if p.suffix in (".pth", ".pt", ".ckpt") else
                " Pass a checkpoint written by this toolkit (`diffv2iqa-trt convert`, training, or a bundle's "
                "model.safetensors).")
        raise CheckpointError(f"{p}: not a native safetensors checkpoint ({exc}).{hint}") from None
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{p}: safetensors file without {FORMAT_NAME} metadata; convert it with "
                              "`diffv2iqa-trt convert`")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{p}: checkpoint format version {version}, this toolkit reads version "
                              f"{FORMAT_VERSION}; use the toolkit release that wrote it or re-convert the weights")
    if "config" not in meta:
        raise CheckpointError(f"{p}: the checkpoint metadata holds no model config; {_REWRITE_HINT}")
    try:
        data = json.loads(meta["config"])
        trained = json.loads(meta.get("trained", "false"))
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise CheckpointError(f"{p}: the checkpoint metadata is not valid JSON ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); {_REWRITE_HINT}") from None
    if not isinstance(trained, bool):
        raise CheckpointError(f"{p}: the checkpoint metadata 'trained' must be true or false; {_REWRITE_HINT}")
    try:
        config = ModelConfig.from_dict(data)  # validates: nothing is built from an impossible config
    except ConfigError as exc:
        raise CheckpointError(f"{p}: the model config in the checkpoint metadata is invalid: {exc}. In a checkpoint "
                              f"this means {_REWRITE_HINT}") from None
    return config, CheckpointInfo(trained=trained, description=meta.get("description", ""))


def _expected_state(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of the state dict of `DiffV2IQA(config)`, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        skeleton = DiffV2IQA(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}


def check_checkpoint_tensors(path: str | os.PathLike[str], config: ModelConfig) -> None:
    """Compare the tensors a native checkpoint's header declares with those the model of `config` holds: same keys,
    shapes and dtypes. Reads no tensor data, so an implausible file is refused before anything is allocated."""
    p = Path(path)
    expected = _expected_state(config)
    try:
        with safe_open(str(p), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
            found = {k: (tuple(sl.get_shape()), sl.get_dtype()) for k, sl in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: cannot read the checkpoint's tensor list ({exc}); {_REWRITE_HINT}") from None
    problem = _mismatch({k: s for k, (s, _) in expected.items()}, {k: s for k, (s, _) in found.items()}, str(p))
    if problem:
        raise CheckpointError(problem)
    wanted = {k: _SAFETENSORS_DTYPES.get(dtype, str(dtype)) for k, (_, dtype) in expected.items()}
    mistyped = sorted(f"{k} {found[k][1]} != {wanted[k]}" for k in expected if found[k][1] != wanted[k])
    if mistyped:
        raise CheckpointError(f"{p}: tensors of another dtype than the model's" +
                              _listing("keys (checkpoint != model)", mistyped) + f"\n  Probably {_REWRITE_HINT}.")


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[DiffV2IQA, CheckpointInfo]:
    """A native checkpoint -> model in eval mode, with its label.

    Order matters for hostile files: the config is read and validated, then the header's keys, shapes and dtypes are
    compared with the model's, and only then is the model built and the tensor data read."""
    config, info = read_checkpoint_config(path)
    check_checkpoint_tensors(path, config)
    model = DiffV2IQA(config)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint's tensors ({exc}); {_REWRITE_HINT}") from None
    load_state_strict(model, state, str(path))
    return model.eval(), info


def _torch_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    p = Path(path)
    _check_file(p, "PyTorch state dict (.pth)")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for pickles it refuses or cannot parse
        raise CheckpointError(
            f"{p}: cannot read as a PyTorch state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Only state dicts are accepted (torch.save(model.state_dict(), path)); a pickled whole model must be "
            "re-saved as its state dict with the authors' code.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    return obj


def _strip(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def sr3_unet_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SR3 generator state dict (`denoise_fn.*` + schedule buffers, maybe `module.`-prefixed) -> U-Net state dict."""
    state = _strip("module.", state)
    state = {k: v for k, v in state.items() if k not in SR3_SCHEDULE_BUFFERS}
    return _strip("denoise_fn.", state)


def div2iqa_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DIV2IQA state dict (maybe saved from nn.DataParallel, `module.`-prefixed) -> IQANet state dict."""
    return _strip("module.", state)


def load_authors(config: ModelConfig, sr3_path: str | os.PathLike[str],
                 div2iqa_path: str | os.PathLike[str]) -> DiffV2IQA:
    """The authors' two checkpoints (SR3 generator and DIV2IQA) -> our model, strictly checked."""
    config.validate()
    model = DiffV2IQA(config)
    load_state_strict(model.unet, sr3_unet_state(_torch_state_dict(sr3_path)), f"SR3 checkpoint {sr3_path}")
    load_state_strict(model.iqa, div2iqa_state(_torch_state_dict(div2iqa_path)),
                      f"DIV2IQA checkpoint {div2iqa_path}")
    return model.eval()


def convert_authors(config: ModelConfig, sr3_path: str | os.PathLike[str], div2iqa_path: str | os.PathLike[str],
                    out_path: str | os.PathLike[str]) -> DiffV2IQA:
    """Load the authors' two checkpoints and write them as one native checkpoint (trained)."""
    model = load_authors(config, sr3_path, div2iqa_path)
    save_checkpoint(model, out_path, trained=True,
                    description=f"converted from {Path(sr3_path).name} and {Path(div2iqa_path).name}")
    return model

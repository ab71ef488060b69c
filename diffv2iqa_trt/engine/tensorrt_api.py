"""Where TensorRT is found, which version it is, and the one place where TensorRT 10.x and 11.x are told apart.

TensorRT 11 removed the weakly typed build (BuilderFlag.FP16/INT8/..., calibrators, per-layer precision): precision
lives in the ONNX, and the network is always strongly typed. TensorRT 10 still needs the STRONGLY_TYPED creation flag
for that; TensorRT 11 deprecates the flag (every network is strongly typed). `network_flags` is that branch; nothing
else in the toolkit looks at the TensorRT version to decide how to call it.

Typed against the TensorRT 10.13 stubs (scripts/tensorrt_stubs.py). TensorRT has never been installed where this
code was written: it is type-checked, not run.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType

from ..errors import DependencyError

INSTALL_HINT = ("TensorRT comes from NVIDIA's package index, not PyPI: on a machine with an NVIDIA GPU and driver run "
                "`pip install --extra-index-url https://pypi.nvidia.com tensorrt` (TensorRT 10.x or 11.x; or "
                "`pip install 'diffv2iqa-trt[tensorrt-cu12]'` or `[tensorrt-cu13]`, by the CUDA major of the "
                "driver, which also bring the matching cuda-bindings). Without it, "
                "`build --target onnx` writes the ONNX bundle, and `--target auto` builds engines only where "
                "TensorRT is importable")


@dataclass(frozen=True, order=True)
class TensorRTVersion:
    major: int
    minor: int
    patch: int
    text: str  # the full version string, e.g. "10.13.0.35": engines are tied to it

    @classmethod
    def parse(cls, text: str) -> TensorRTVersion:
        m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if m is None:
            raise ValueError(f"not a TensorRT version: {text!r}")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0), text.strip())

    def __str__(self) -> str:
        return self.text


SUPPORTED_MAJORS = (10, 11)


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None when it can. A `tensorrt` package without a Builder (a leftover
    placeholder, or the type stubs installed into site-packages) counts as missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"TensorRT is not installed (import tensorrt: {exc})"
    if not hasattr(trt, "Builder"):
        where = getattr(trt, "__file__", None) or ", ".join(getattr(trt, "__path__", []))
        return f"the `tensorrt` package at {where} has no TensorRT in it (a placeholder, or type stubs)"
    try:
        version = tensorrt_version(trt)
    except ValueError as exc:
        return str(exc)
    if version.major not in SUPPORTED_MAJORS:
        return f"TensorRT {version} is installed; this toolkit builds engines with TensorRT 10.x or 11.x"
    return None


def require_tensorrt() -> ModuleType:
    """The tensorrt module, or DependencyError (exit 2) saying how to install it."""
    reason = tensorrt_missing()
    if reason is not None:
        raise DependencyError(f"{reason}. {INSTALL_HINT}")
    return importlib.import_module("tensorrt")


def tensorrt_version(trt: ModuleType) -> TensorRTVersion:
    # Shim: the 10.13 stubs do not declare `__version__`, which every TensorRT release has.
    text = getattr(trt, "__version__", None)
    if not isinstance(text, str):
        raise ValueError("the tensorrt module has no __version__ string; reinstall TensorRT")
    return TensorRTVersion.parse(text)


def network_flags(version: TensorRTVersion) -> int:
    """Creation flags of a strongly typed network: the STRONGLY_TYPED bit on 10.x, nothing on 11.x (where every
    network is strongly typed and the flag is deprecated)."""
    if version.major >= 11:
        return 0
    import tensorrt as trt

    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

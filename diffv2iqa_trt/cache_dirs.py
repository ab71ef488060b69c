"""The toolkit's cache folder, decided in one place: calibration sets, compiled OpenVINO models, ONNX Runtime's
TensorRT engines and TensorRT timing caches all live under it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DIFFV2IQA_TRT_CACHE"  # overrides the cache root


def cache_root() -> Path:
    """$DIFFV2IQA_TRT_CACHE, else $XDG_CACHE_HOME/diffv2iqa-trt (when absolute, as the XDG spec asks), else
    ~/.cache/diffv2iqa-trt."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "diffv2iqa-trt"

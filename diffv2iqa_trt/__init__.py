"""diffv2iqa-trt: a deployment toolkit for the DiffV2IQA image-quality model.

The public Python API (see the README and `diffv2iqa_trt.api`):

    import diffv2iqa_trt as iqa

    with iqa.load("bundle/") as scorer:
        results = scorer.score(["a.png", "b.jpg"])

Its names are imported on first use, so `import diffv2iqa_trt` (and the CLI's `--help`) stays free of NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Scorer, ScoreResult, create_metric, load, tensor_to_rgb

__all__ = ["ScoreResult", "Scorer", "__version__", "create_metric", "load", "tensor_to_rgb"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

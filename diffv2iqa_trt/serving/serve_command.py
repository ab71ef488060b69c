"""`diffv2iqa-trt serve` (placeholder: being written)."""

from __future__ import annotations


def serve() -> None:
    """Serve a bundle on Triton Inference Server (PyTriton). Not written yet."""
    raise NotImplementedError("serve is being written")

"""`diffv2iqa-trt export-triton` (placeholder: being written)."""

from __future__ import annotations


def export_triton() -> None:
    """Write a standalone Triton model repository of a bundle. Not written yet."""
    raise NotImplementedError("export-triton is being written")

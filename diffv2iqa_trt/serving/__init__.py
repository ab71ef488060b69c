"""Online scoring: `diffv2iqa-trt serve` (Triton Inference Server through PyTriton, calling the public API's Scorer)
and `diffv2iqa-trt export-triton` (a standalone Triton model repository of a bundle).

Nothing here imports PyTriton or tritonclient at module level: the CLI loads these verbs in every environment, and
PyTriton lives in its own one (see the `serve` extra in pyproject.toml)."""

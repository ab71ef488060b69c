"""diffv2iqa-trt: a deployment toolkit for the DiffV2IQA image-quality model."""

__version__ = "0.1.0"

"""Calibration sets for the FP16/INT8 variants: the real inputs of the three graphs, recorded by the bundle's own FP32
pipeline on a folder of images, cached by a hash of the weights, the images and the settings.

    cs, reused = calibration_set(bundle, ["photos/"], max_crops=64, progress=callback)
    for feed in cs.feeds("restore_step", batch_size=8): ...   # one dict of input name -> array per batch

Torch-free: it sits above runtime/ and bundle/ and below the quantisation tools that consume it.
"""

from .cache import cache_key, calibration_set, default_cache_dir, key_document, load_cached
from .dataset import DEFAULT_MAX_CROPS, FORMAT_VERSION, MIN_IMAGES, CalibrationSet, StepRange, step_ranges
from .record import Progress

__all__ = [
    "DEFAULT_MAX_CROPS",
    "FORMAT_VERSION",
    "MIN_IMAGES",
    "CalibrationSet",
    "Progress",
    "StepRange",
    "cache_key",
    "calibration_set",
    "default_cache_dir",
    "key_document",
    "load_cached",
    "step_ranges",
]

import numpy as np
import pytest

from diffv2iqa_trt.config import tiny_config
from diffv2iqa_trt.model.diffv2iqa import DiffV2IQA, build_model


@pytest.fixture(scope="session")
def tiny_model() -> DiffV2IQA:
    return build_model(tiny_config(), seed=0)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real photographs shipped in scikit-image's wheel, as RGB uint8."""
    from skimage import data

    gray = data.camera()
    return [data.astronaut(), data.chelsea(), data.coffee(), np.stack([gray] * 3, axis=2)]

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


@pytest.fixture(scope="session")
def auto_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    """A tiny bundle (seeded random weights, with its checkpoint) written by `build --target auto` on this machine,
    and what the command printed. Shared: the engine and stream-pipeline tests read it, none may change it."""
    from typer.testing import CliRunner

    from diffv2iqa_trt.bundle import load_bundle
    from diffv2iqa_trt.cli import app

    out = tmp_path_factory.mktemp("auto") / "tiny"
    result = CliRunner().invoke(app, ["build", "--preset", "tiny", "--target", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_bundle(out), result.output

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


# ------------------------------------------------------------------------------------------- export memo for tests
# A tiny bundle build spends ~80 % of its time in torch.onnx.export, and a dozen tests build bundles of the same
# seeded models. The export is deterministic (tests/test_export.py::test_bundle_bytes_do_not_depend_on_the_build_folder
# proves the bytes equal, and opts out of this memo with the `fresh_export` marker), so builds inside the test
# process reuse the first export of the same graph of the same weights. Tests of the exporter itself call
# export.onnx_export.export_graph directly, which the memo does not touch.

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fresh_export: builds in this test run torch.onnx.export, not the test memo")


_EXPORT_MEMO: dict[str, tuple[object, list[tuple[str, bytes]]]] = {}


def _model_key(model: object, graph: str, opset: int) -> str:
    import hashlib

    import torch

    digest = hashlib.sha256(f"{graph}|{opset}|{model.config!r}|{model.training}".encode())  # type: ignore[attr-defined]
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:  # type: ignore[attr-defined]
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float64 if tensor.is_floating_point() else tensor.dtype)
                      .contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(autouse=True)
def _export_memo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    from pathlib import Path

    from diffv2iqa_trt import assemble
    from diffv2iqa_trt.export.onnx_export import MIN_OPSET, export_graph

    if request.node.get_closest_marker("fresh_export") is not None:
        return

    def memo_export(model: object, graph: str, path: object, *, opset: int = MIN_OPSET) -> object:
        target = Path(path)  # type: ignore[arg-type]
        key = f"{target.name}|{_model_key(model, graph, opset)}"  # external data is named after the file
        if key not in _EXPORT_MEMO:
            result = export_graph(model, graph, target, opset=opset)  # type: ignore[arg-type]
            files = [target] + ([result.external_data] if result.external_data is not None else [])
            _EXPORT_MEMO[key] = (result, [(f.name, f.read_bytes()) for f in files])
            return result
        result, files = _EXPORT_MEMO[key]
        for name, data in files:
            (target.parent / name).write_bytes(data)
        external = result.external_data  # type: ignore[attr-defined]
        return dataclasses.replace(result, path=target,  # type: ignore[type-var]
                                   external_data=None if external is None else target.parent / external.name)

    monkeypatch.setattr(assemble, "export_graph", memo_export)

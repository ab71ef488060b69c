"""ONNX Runtime's GPU execution providers without a GPU: the options each provider gets (a pure function of the
manifest's graph entry, the variant and the cache folder) and the refusal of a session that silently lost its provider.

ONNX Runtime drops a provider it cannot initialise and runs the graph on the next one, down to the CPU. That is
simulated here with the real CPU session ONNX Runtime would have made: `get_available_providers` claims the GPU
providers, and `InferenceSession` keeps only the CPU provider (or CUDA and CPU, for a TensorRT that failed).
"""

import dataclasses
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from diffv2iqa_trt.cli import app
from diffv2iqa_trt.errors import BackendError
from diffv2iqa_trt.runtime.backends import BackendOptions
from diffv2iqa_trt.runtime.backends.onnxruntime_backend import (
    engine_cache_dir,
    executor_from_bundle,
    fallback_problem,
    provider_options,
)

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
RealSession = ort.InferenceSession


class Fallback:
    """Stands in for ort.InferenceSession: records each call, and returns the real CPU session ONNX Runtime makes when
    the GPU providers cannot be initialised, reporting `kept` as its providers."""

    def __init__(self, kept: list[str]) -> None:
        self.kept = kept
        self.calls: list[tuple[str, dict[str, object]]] = []

    def __call__(self, path: str, options: object = None, **kwargs: object) -> object:
        self.calls.append((path, kwargs))
        session = RealSession(path, options, providers=[CPU])
        session._providers = list(self.kept)  # what get_providers() reports, as after a real fallback
        return session


@pytest.fixture()
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """This onnxruntime build lists the GPU providers (as onnxruntime-gpu does, with or without a usable GPU)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])


def _tiny(auto_built):
    return auto_built[0]


# --------------------------------------------------------------------------------------------------------------------
# The options: real numbers from the tiny bundle's manifest (crop 64, opt batch 8, max batch 16 at max size 512)


def test_tensorrt_options_follow_the_manifest_profile_and_the_variant(auto_built, tmp_path):
    bundle = _tiny(auto_built)
    cache = tmp_path / "cache"
    providers = provider_options("tensorrt", graph="restore_step", entry=bundle.graph("restore_step"),
                                 precision="fp32", cache_dir=cache)
    assert [name for name, _ in providers] == [TRT, CUDA, CPU]
    trt = providers[0][1]
    assert trt == {
        "device_id": "0",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache / "engines" / "restore_step.fp32"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache / "timing"),
        "trt_profile_min_shapes": "x:1x3x64x64,y:1x3x64x64,gamma:1,coef:1x5,z:1x3x64x64",
        "trt_profile_opt_shapes": "x:8x3x64x64,y:8x3x64x64,gamma:8,coef:8x5,z:1x3x64x64",
        "trt_profile_max_shapes": "x:16x3x512x512,y:16x3x512x512,gamma:16,coef:16x5,z:1x3x512x512",
        "trt_fp16_enable": "False",
        "trt_int8_enable": "False",
    }
    # The CUDA EP behind it runs fp32 as fp32 (no TF32), on the same device.
    assert providers[1] == (CUDA, {"device_id": "0", "use_tf32": "0"}) and providers[2] == (CPU, {})

    vcg = dict(provider_options("tensorrt", graph="vcg", entry=bundle.graph("vcg"), precision="fp32",
                                cache_dir=cache)[0][1])
    assert vcg["trt_profile_max_shapes"] == "x:16x3x64x64,y0:16x3x64x64,y_t1:16x3x64x64,y_t2:16x3x64x64"
    assert vcg["trt_engine_cache_path"] == str(cache / "engines" / "vcg.fp32")


@pytest.mark.parametrize("precision,fp16,int8", [
    ("fp32", "False", "False"),  # the ONNX is fp32: TensorRT may not choose FP16 kernels
    ("fp16", "True", "False"),
    ("int8", "True", "True"),  # explicit Q/DQ with FP16 elsewhere; no calibration table for a Q/DQ model
    ("int8-cpu", "False", "True"),  # Q/DQ with FP32 elsewhere
])
def test_precision_flags_per_variant(auto_built, tmp_path, precision, fp16, int8):
    trt = provider_options("tensorrt", graph="vda", entry=_tiny(auto_built).graph("vda"), precision=precision,
                           cache_dir=tmp_path)[0][1]
    assert (trt["trt_fp16_enable"], trt["trt_int8_enable"]) == (fp16, int8)
    assert "trt_int8_calibration_table_name" not in trt
    assert trt["trt_engine_cache_path"] == str(tmp_path / "engines" / f"vda.{precision}")


def test_cuda_options_and_no_cache_without_a_folder():
    assert provider_options("cuda", device_id=1) == [(CUDA, {"device_id": "1", "use_tf32": "0"}), (CPU, {})]
    trt = provider_options("tensorrt")[0][1]
    assert trt == {"device_id": "0", "trt_fp16_enable": "False", "trt_int8_enable": "False"}


def test_engine_cache_lives_in_the_toolkit_cache_keyed_by_bundle(auto_built, tmp_path, monkeypatch):
    bundle = _tiny(auto_built)
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(tmp_path / "root"))
    folder = engine_cache_dir(bundle, "1.32.0")
    assert folder.parent == tmp_path / "root" / "onnxruntime-tensorrt"
    version, key = folder.name.split("-")
    assert version == "ort1.32.0" and len(key) == 16 and int(key, 16) >= 0
    assert engine_cache_dir(bundle, "1.32.0") == folder  # stable for one bundle
    # Another bundle (here: the same manifest built at another time) and another ONNX Runtime get other folders.
    rebuilt = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, created="2000-01-01T00:00:00Z"))
    assert engine_cache_dir(rebuilt, "1.32.0") != folder
    assert engine_cache_dir(bundle, "1.33.0").name == f"ort1.33.0-{key}"
    # Without the toolkit's variable: $XDG_CACHE_HOME/diffv2iqa-trt, as the calibration cache.
    monkeypatch.delenv("DIFFV2IQA_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    xdg = tmp_path / "xdg" / "diffv2iqa-trt" / "onnxruntime-tensorrt"
    assert engine_cache_dir(bundle, "1.32.0") == xdg / folder.name


# --------------------------------------------------------------------------------------------------------------------
# The fallback check


def test_fallback_problem_names_the_lost_provider():
    assert fallback_problem("vcg", [CUDA, CPU], [CUDA, CPU]) is None
    assert fallback_problem("vcg", [TRT, CUDA, CPU], [TRT, CUDA, CPU]) is None
    cuda = fallback_problem("vcg", [CUDA, CPU], [CPU])
    assert cuda is not None and "without CUDAExecutionProvider (it got ['CPUExecutionProvider'])" in cuda
    assert "cuDNN" in cuda and "onnxruntime-gpu[cuda,cudnn]" in cuda and "--device cpu" in cuda
    trt = fallback_problem("vda", [TRT, CUDA, CPU], [CUDA, CPU])
    assert trt is not None and "without TensorrtExecutionProvider" in trt and "here CUDAExecutionProvider" in trt
    assert "libnvinfer" in trt and "LD_LIBRARY_PATH" in trt


def test_cuda_session_that_fell_back_to_the_cpu_is_refused(auto_built, gpu_build, monkeypatch):
    """Fails on the old code: it checked only get_available_providers() and built the executor on the CPU."""
    fake = Fallback([CPU])
    monkeypatch.setattr(ort, "InferenceSession", fake)
    with pytest.raises(BackendError) as err:
        executor_from_bundle(_tiny(auto_built), BackendOptions(device="cuda"))
    message = str(err.value)
    assert "the restore_step session was created without CUDAExecutionProvider" in message
    assert "it got ['CPUExecutionProvider']" in message and "cuDNN" in message and "--device cpu" in message
    # The session was asked for CUDA with its options, and without ONNX Runtime's own retry on the CPU.
    path, kwargs = fake.calls[0]
    assert path.endswith("restore_step.fp32.onnx")
    assert kwargs == {"providers": [(CUDA, {"device_id": "0", "use_tf32": "0"}), (CPU, {})], "enable_fallback": 0}


def test_tensorrt_session_that_fell_back_to_cuda_is_refused(auto_built, gpu_build, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(tmp_path))
    fake = Fallback([CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", fake)
    bundle = _tiny(auto_built)
    with pytest.raises(BackendError, match="without TensorrtExecutionProvider .*libnvinfer"):
        executor_from_bundle(bundle, BackendOptions(device="tensorrt"))
    (name, trt), *_ = fake.calls[0][1]["providers"]  # type: ignore[misc]
    engines = Path(trt["trt_engine_cache_path"])
    assert name == TRT and engines == engine_cache_dir(bundle, ort.__version__) / "engines" / "restore_step.fp32"
    assert engines.is_dir() and Path(trt["trt_timing_cache_path"]).is_dir()  # made before the session
    assert trt["trt_profile_opt_shapes"] == "x:8x3x64x64,y:8x3x64x64,gamma:8,coef:8x5,z:1x3x64x64"


def test_sessions_that_kept_their_provider_are_accepted(auto_built, gpu_build, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(tmp_path))
    for device, kept in (("cuda", [CUDA, CPU]), ("tensorrt", [TRT, CUDA, CPU])):
        fake = Fallback(kept)
        monkeypatch.setattr(ort, "InferenceSession", fake)
        executor = executor_from_bundle(_tiny(auto_built), BackendOptions(device=device))
        assert executor.name == f"onnxruntime-{device}" and len(fake.calls) == 3


def test_unwritable_cache_folder_is_a_backend_error(auto_built, gpu_build, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DIFFV2IQA_TRT_CACHE", str(tmp_path / "file"))
    monkeypatch.setattr(ort, "InferenceSession", Fallback([TRT, CUDA, CPU]))
    with pytest.raises(BackendError, match=r"cannot create the TensorRT EP cache folder .*DIFFV2IQA_TRT_CACHE"):
        executor_from_bundle(_tiny(auto_built), BackendOptions(device="tensorrt"))


def test_gpu_session_creation_error_is_a_backend_error(auto_built, gpu_build, monkeypatch):
    def broken(path, options=None, **kwargs):
        raise RuntimeError("Invalid TensorRT EP option: trt_bogus")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(BackendError, match=r"could not create the restore_step session .* on CUDAExecutionProvider "
                                           r"\(RuntimeError: Invalid TensorRT EP option"):
        executor_from_bundle(_tiny(auto_built), BackendOptions(device="cuda"))


def test_cpu_sessions_are_created_as_before(auto_built, monkeypatch):
    """The CPU path is untouched: the bare provider name, no options, ONNX Runtime's defaults."""
    calls = []

    def spy(path, options=None, **kwargs):
        calls.append(kwargs)
        return RealSession(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    executor_from_bundle(_tiny(auto_built), BackendOptions(device="cpu"))
    assert calls == [{"providers": [CPU]}] * 3


def test_cli_refuses_the_fallback_with_exit_code_2(auto_built, gpu_build, monkeypatch, photos, tmp_path):
    from PIL import Image

    Image.fromarray(photos[0]).resize((64, 64)).save(tmp_path / "a.png")
    monkeypatch.setattr(ort, "InferenceSession", Fallback([CPU]))
    res = CliRunner().invoke(app, ["score", str(tmp_path / "a.png"), "--bundle", str(_tiny(auto_built).root),
                                   "--backend", "onnxruntime", "--device", "cuda"])
    assert res.exit_code == 2, res.output
    assert "without CUDAExecutionProvider" in res.stderr and "Traceback" not in res.output


def test_every_cache_lives_under_one_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One rule (cache_dirs.cache_root) for calibration sets, timing caches and the backends' compiled models."""
    from diffv2iqa_trt.cache_dirs import CACHE_ENV, cache_root
    from diffv2iqa_trt.calibration.cache import default_cache_dir
    from diffv2iqa_trt.engine.compatibility import Machine
    from diffv2iqa_trt.engine.timing_cache import default_cache_path

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG spec asks
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "diffv2iqa-trt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "diffv2iqa-trt"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    machine = Machine(tensorrt="10.13.0.35", gpu="NVIDIA H100", sm="9.0")
    assert default_cache_dir() == tmp_path / "mine" / "calibration"
    assert default_cache_path(machine) == tmp_path / "mine" / "timing" / "trt10.13.0.35-sm9.0-nvidia-h100.cache"

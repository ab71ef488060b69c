"""The checks that stand in for running TensorRT and CUDA here: removed APIs, CUDA names, and the type check.

- No module may name an API that TensorRT 11 removed (the weakly typed build, calibrators, the algorithm selector,
  the platform_has_fast_* queries, per-layer precision): checked on every identifier of the source, statically.
- Every `cudart.X` / `driver.X` / `utils.X` the code uses exists in the installed cuda-bindings (which imports
  without a GPU), and handles are read with `cuda.bindings.utils.get_cuda_native_handle`.
- mypy, against the fixed-up TensorRT 10.13 stubs, rejects misuse of the TensorRT API (so the lint that passes on
  engine/ is a real check) and accepts engine/.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "diffv2iqa_trt").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")])
sys.path.insert(0, str(ROOT / "scripts"))
import tensorrt_stubs  # noqa: E402  (scripts/ is not a package)

# Python names of what TensorRT 11 removed (from the 10.x -> 11.x migration guide and the 10.16 / 11.1 headers).
# Enum members are matched with their enum ("BuilderFlag.FP16"), so onnx.TensorProto.INT8 is not a hit.
REMOVED_IN_TRT11 = {
    # weak typing: precision flags and per-layer precision
    *(f"BuilderFlag.{flag}" for flag in ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                                         "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS")),
    "set_output_type", "reset_output_type", "output_type_is_set", "reset_precision", "precision_is_set",
    "set_dynamic_range", "dynamic_range", "get_dynamic_range_min", "get_dynamic_range_max",
    # implicit calibration
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "int8_calibrator", "set_calibration_profile", "get_calibration_profile",
    "CalibrationAlgoType",
    # algorithm selection and platform queries
    "IAlgorithmSelector", "algorithm_selector", "platform_has_fast_fp16", "platform_has_fast_int8",
    "platform_has_tf32",
    # superseded runtime calls
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "create_execution_context_without_device_memory",
    "get_device_memory_size_for_profile",
}
ENUMS = ("BuilderFlag", "NetworkDefinitionCreationFlag")


def trt_identifiers(source: str) -> set[str]:
    """Attribute names (enum members with their enum: `trt.BuilderFlag.FP16` gives BuilderFlag.FP16), names imported
    from tensorrt, and string arguments of getattr()/hasattr() in `source`: the ways code can reach a TensorRT API."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = node.value
            enum = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
            names.add(f"{enum}.{node.attr}" if enum in ENUMS else node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorrt"):
            names.update(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            names.add(node.args[1].value)
    return names


def test_scanner_catches_removed_apis() -> None:
    probe = ("import tensorrt as trt\n"
             "def f(config, builder):\n"
             "    config.set_flag(trt.BuilderFlag.FP16)\n"
             "    config.int8_calibrator = None\n"
             "    getattr(builder, 'platform_has_fast_fp16')\n"
             "from tensorrt import IInt8EntropyCalibrator2\n")
    assert {"BuilderFlag.FP16", "int8_calibrator", "platform_has_fast_fp16", "IInt8EntropyCalibrator2"} <= (
        trt_identifiers(probe) & REMOVED_IN_TRT11)
    assert "BuilderFlag.INT8" in trt_identifiers("from tensorrt import BuilderFlag\nBuilderFlag.INT8\n")
    # Precision names as data, and other libraries' INT8 members, are not TensorRT API calls.
    assert not trt_identifiers("PRECISIONS = ('fp16', 'int8')\nx = {'FP16': 1}\nonnx.TensorProto.INT8\n") & (
        REMOVED_IN_TRT11)


def test_no_module_names_an_api_tensorrt_11_removed() -> None:
    found = {str(p.relative_to(ROOT)): sorted(trt_identifiers(p.read_text()) & REMOVED_IN_TRT11) for p in SOURCES}
    assert {k: v for k, v in found.items() if v} == {}


# ------------------------------------------------------------------------------------------------ cuda-bindings


def cuda_names(source: str) -> dict[str, set[str]]:
    """`module -> attributes` for every module alias bound by `from cuda.bindings import runtime/driver/utils [as
    x]`."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("cuda.bindings", "cuda"):
            for alias in node.names:
                if alias.name in ("runtime", "driver", "cudart", "utils"):
                    aliases[alias.asname or alias.name] = {"cudart": "runtime"}.get(alias.name, alias.name)
    used: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.setdefault(aliases[node.value.id], set()).add(node.attr)
    return used


def test_cuda_scanner_sees_aliases() -> None:
    probe = ("def f():\n    from cuda.bindings import runtime as cudart\n    cudart.cudaMallocc(4)\n"
             "from cuda.bindings import utils as cuda_utils\ncuda_utils.get_cuda_native_handle(s)\n")
    assert cuda_names(probe) == {"runtime": {"cudaMallocc"}, "utils": {"get_cuda_native_handle"}}


def test_every_cuda_name_the_code_uses_exists() -> None:
    used: dict[str, set[str]] = {}
    for path in SOURCES:
        for module, names in cuda_names(path.read_text()).items():
            used.setdefault(module, set()).update(names)
    assert used.get("runtime"), "no module uses cuda-bindings: this test checks nothing"
    assert "get_cuda_native_handle" in used.get("utils", set()), "handles are read the supported way"
    missing = {m: sorted(n for n in names if not hasattr(importlib.import_module(f"cuda.bindings.{m}"), n))
               for m, names in used.items()}
    assert {m: n for m, n in missing.items() if n} == {}


# -------------------------------------------------------------------------------------------- TensorRT type check


def test_stub_fix_up_recipe() -> None:
    text = ("import tensorrt_libs as tensorrt_libs\n"
            "    def on_shape_change(self, in: list[PluginTensorDesc], out: list[PluginTensorDesc]) -> None:\n"
            "    def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights = None, scale: Weights = None, "
            "power: Weights = None, channel_axis: int) -> IScaleLayer:\n")
    fixed = tensorrt_stubs.fix_up(text)
    assert "tensorrt_libs" not in fixed
    assert "(self, in_: list[PluginTensorDesc]" in fixed and "channel_axis: int = ...)" in fixed
    ast.parse(fixed.replace("    def", "def").replace(":\n", ": ...\n"))  # parses once fixed


@pytest.fixture(scope="module")
def typings() -> Path:
    dest = ROOT / "typings"
    tensorrt_stubs.install(dest)  # a no-op when `make` already installed them; else needs PyPI once
    return dest


def _mypy(files: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--no-incremental", *files], cwd=ROOT, capture_output=True, text=True)


def test_mypy_rejects_misuse_of_the_tensorrt_api(typings: Path, tmp_path: Path) -> None:
    probe = ROOT / "diffv2iqa_trt" / "engine" / "_typing_probe.py"
    probe.write_text("import tensorrt as trt\n\n\n"
                     "def f(builder: trt.Builder, context: trt.IExecutionContext) -> None:\n"
                     "    profile = builder.create_optimization_profile()\n"
                     "    profile.set_shape('x', (1, 3), (1, 3), (1, 3))\n"
                     "    context.execute_async_v4(0)\n")
    try:
        proc = _mypy([str(probe)])
    finally:
        probe.unlink()
    out = proc.stdout
    assert proc.returncode == 1, out
    assert 'has incompatible type "tuple[int, int]"; expected "Dims"' in out
    assert '"IExecutionContext" has no attribute "execute_async_v4"' in out


def test_engine_modules_type_check_against_the_stubs(typings: Path) -> None:
    proc = _mypy(["diffv2iqa_trt/engine"])
    assert proc.returncode == 0, proc.stdout
    assert "Success: no issues found" in proc.stdout

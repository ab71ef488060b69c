"""The C++ TensorRT backend (cpp/src/tensorrt_backend.cpp), compiled -- never linked or run -- against the real
TensorRT 10.16 and 11.1 headers and the CUDA 13 runtime headers: the stand-in for building it on a GPU machine.

- Both header sets: `g++ -fsyntax-only` with warnings as errors. TensorRT's and CUDA's headers come in through
  -isystem, so their own warnings do not count; a call of ours to anything TensorRT marks deprecated does.
- Negative controls, so a pass means something: `enqueueV3` misspelt `enqueueV9` fails with "no member named";
  `getDeviceMemorySize()` (no V2) fails as deprecated under 10.16 and as missing under 11.1.
- No name TensorRT 11 removed appears in cpp/src (comments and strings aside); the list itself is checked against
  the two header sets. The backend is runtime-only: no builder, no ONNX parser.
- cpp/include/diffv2iqa/backend.hpp needs neither CUDA nor TensorRT: a fake backend compiles and runs against it.

TensorRT headers: `build/tensorrt-headers/<version>/include` inside the checkout (git-ignored: copy or link the
public headers there), else the workplace's `../shared/third_party/tensorrt-headers`, or $DIFFV2IQA_TRT_HEADERS in place
of either. CUDA headers: scripts/cuda_headers.sh (PyPI once).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = ROOT / "cpp" / "src"
SOURCE = SRC_DIR / "tensorrt_backend.cpp"
INTERFACE = ROOT / "cpp" / "include" / "diffv2iqa" / "backend.hpp"
CUDA_INCLUDE = ROOT / "build" / "cuda-headers" / "nvidia" / "cu13" / "include"
VERSIONS = ("10.16", "11.1")
WARNINGS = ["-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-Werror"]

# C++ names TensorRT 11 removed that a runtime could reach (declared in the 10.16 headers, absent from 11.1's; the
# test below checks both): superseded runtime calls, implicit-batch and shape-value queries, weak typing,
# calibration, algorithm selection, platform queries.
REMOVED_IN_TRT11 = {
    "createExecutionContextWithoutDeviceMemory", "getDeviceMemorySize", "getDeviceMemorySizeForProfile",
    "allInputShapesSpecified", "canBroadcastInputAcrossBatch", "isOutputBroadcastAcrossBatch", "setShapeValues",
    "getShapeValues", "getProfileTensorValues", "setWeightStreamingBudget", "getWeightStreamingBudget",
    "getMinimumWeightStreamingBudget",
    "setDynamicRange", "getDynamicRangeMin", "getDynamicRangeMax", "getTensorsWithDynamicRange", "resetDynamicRange",
    "dynamicRangeIsSet", "setOutputType", "resetOutputType", "outputTypeIsSet", "setPrecision", "resetPrecision",
    "precisionIsSet",
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "setInt8Calibrator", "getInt8Calibrator", "CalibrationAlgoType",
    "setCalibrationProfile", "getCalibrationProfile", "QuantizationFlag", "setQuantizationFlag",
    "IAlgorithmSelector", "setAlgorithmSelector", "getAlgorithmSelector",
    "platformHasFastFp16", "platformHasFastInt8", "platformHasTf32",
}
# Gone since TensorRT 10.0 (absent from both header sets): the binding-index API, enqueueV2 and execute.
REMOVED_BEFORE = {"enqueueV2", "execute", "getNbBindings", "getBindingIndex", "bindingIsInput",
                  "getBindingDimensions", "setBindingDimensions", "getBindingDataType", "setOptimizationProfile"}
# Not removed, but no business in a runtime backend (BuilderFlag is where 11 removed the weak-typing flags).
BUILD_TIME = {"BuilderFlag", "IBuilder", "IBuilderConfig", "INetworkDefinition", "createInferBuilder",
              "nvonnxparser", "IParser"}
# What the backend is meant to use: the scan must see these, or it is reading the wrong thing.
EXPECTED = {"createInferRuntime", "deserializeCudaEngine", "createExecutionContext", "getTensorIOMode",
            "getTensorDataType", "getDeviceMemorySizeV2", "setInputShape", "setTensorAddress", "enqueueV3",
            "cudaStreamCreateWithFlags", "cudaEventRecord", "cudaStreamWaitEvent"}

_NOT_CODE = re.compile(r"""//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""", re.S)


def cpp_identifiers(text: str) -> set[str]:
    """The identifiers of C++ source, comments and string/char literals left out."""
    return set(re.findall(r"\b[A-Za-z_]\w*\b", _NOT_CODE.sub(" ", text)))


def header_identifiers(include: Path) -> set[str]:
    return set().union(*(cpp_identifiers(p.read_text(errors="replace")) for p in include.rglob("*.h")))


# ---------------------------------------------------------------------------------------------------- fixtures


def headers_root() -> Path:
    """$DIFFV2IQA_TRT_HEADERS, else build/tensorrt-headers inside the checkout, else the workplace's shared/ folder
    beside the checkout (or inside it, where a checkout carries one). Where none exists, the checkout's own folder
    is the one a skip names."""
    env = os.environ.get("DIFFV2IQA_TRT_HEADERS")
    if env:
        return Path(env)
    candidates = [ROOT / "build" / "tensorrt-headers",
                  *(base / "shared" / "third_party" / "tensorrt-headers" for base in (ROOT.parent, ROOT))]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def trt_include(version: str) -> Path:
    include = headers_root() / version / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.skip(f"no TensorRT {version} headers at {include} (put the public TensorRT headers of "
                    f"{' and '.join(VERSIONS)} in build/tensorrt-headers/<version>/include, or set "
                    "DIFFV2IQA_TRT_HEADERS to the folder holding them)")
    return include


def find_cxx() -> str:
    found = shutil.which("g++")
    if not found:
        pytest.skip("no g++ found")
    return found


@functools.cache
def cuda_include() -> Path:
    """The CUDA runtime headers, downloaded by scripts/cuda_headers.sh when build/cuda-headers lacks them."""
    if not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file():
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "cuda_headers.sh")], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable}, timeout=600)
        assert proc.returncode == 0, f"scripts/cuda_headers.sh failed (it needs PyPI once):\n{proc.stderr}"
        assert Path(proc.stdout.split()[-1]) == CUDA_INCLUDE
    return CUDA_INCLUDE


@dataclass(frozen=True)
class Toolchain:
    version: str
    cxx: str
    trt: Path
    cuda: Path


@pytest.fixture(params=VERSIONS)
def toolchain(request: pytest.FixtureRequest) -> Toolchain:
    """The compiler and both include folders for one TensorRT version: skips (TensorRT headers, g++) come before
    the CUDA headers are fetched."""
    trt = trt_include(request.param)
    cxx = find_cxx()
    return Toolchain(request.param, cxx, trt, cuda_include())


def compile_backend(tc: Toolchain, source: Path) -> subprocess.CompletedProcess[str]:
    cmd = [tc.cxx, "-std=c++17", "-fsyntax-only", *WARNINGS, "-isystem", str(tc.trt), "-isystem", str(tc.cuda),
           "-I", str(ROOT / "cpp" / "include"), "-I", str(SRC_DIR), str(source)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def altered_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = SOURCE.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {SOURCE.name}"
    copy = tmp_path / "tensorrt_backend.cpp"  # includes "tensorrt_backend.hpp", found through -I cpp/src
    copy.write_text(text.replace(old, new))
    return copy


# ------------------------------------------------------------------------------------------------ compilation


@pytest.mark.parametrize("version", VERSIONS)
def test_headers_are_the_version_their_folder_names(version: str) -> None:
    text = (trt_include(version) / "NvInferVersion.h").read_text()
    major, minor = (re.search(rf"#define TRT_{part}_ENTERPRISE (\d+)", text) for part in ("MAJOR", "MINOR"))
    assert major and minor and f"{major[1]}.{minor[1]}" == version


def test_backend_compiles_without_a_warning(toolchain: Toolchain) -> None:
    proc = compile_backend(toolchain, SOURCE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_negative_control_a_misspelt_method_fails(toolchain: Toolchain, tmp_path: Path) -> None:
    proc = compile_backend(toolchain, altered_copy(tmp_path, "ctx->enqueueV3(", "ctx->enqueueV9("))
    assert proc.returncode != 0
    assert "no member named" in proc.stderr and "enqueueV9" in proc.stderr, proc.stderr


def test_negative_control_an_api_tensorrt_11_removed_fails(toolchain: Toolchain, tmp_path: Path) -> None:
    """getDeviceMemorySize(): deprecated in 10.16 (an error here: our code is not -isystem), gone in 11.1."""
    proc = compile_backend(toolchain, altered_copy(tmp_path, "->getDeviceMemorySizeV2()", "->getDeviceMemorySize()"))
    assert proc.returncode != 0
    want = "is deprecated" if toolchain.version.startswith("10.") else "no member named"
    assert want in proc.stderr and "getDeviceMemorySize" in proc.stderr, proc.stderr


def test_interface_needs_neither_cuda_nor_tensorrt(tmp_path: Path) -> None:
    """backend.hpp alone (no -isystem at all): a fake backend implements it, and the contract checks answer."""
    includes = re.findall(r"#include\s*[<\"]([^>\"]+)", INTERFACE.read_text())
    assert not [i for i in includes if re.match(r"(Nv|cuda|driver_|vector_types)", i)], includes
    driver = tmp_path / "fake_backend.cpp"
    driver.write_text(r'''
#include "diffv2iqa/backend.hpp"
#include <cstdio>
#include <memory>
using namespace diffv2iqa;
struct Fake final : GraphBackend {
    int calls = 0;
    void restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                      const DeviceTensor& coef, const DeviceTensor& z, DeviceTensor& y_next, Stream) override {
        check_restore_step(x, y, gamma, coef, z, y_next);
        ++calls;
    }
    void vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
             DeviceTensor& score, Stream) override { check_branch(Graph::kVcg, x, y0, y_t1, y_t2, score); ++calls; }
    void vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
             DeviceTensor& score, Stream) override { check_branch(Graph::kVda, x, y0, y_t1, y_t2, score); ++calls; }
};
static float pool[16];  // distinct addresses only: a fake backend reads nothing
int main() {
    std::unique_ptr<GraphBackend> backend(new Fake);
    DeviceTensor x = device_tensor(pool + 0, {2, 3, 8, 8}), y = device_tensor(pool + 1, {2, 3, 8, 8});
    DeviceTensor gamma = device_tensor(pool + 2, {2}), coef = device_tensor(pool + 3, {2, 5});
    DeviceTensor z = device_tensor(pool + 4, {1, 3, 8, 8}), y_next = device_tensor(pool + 5, {2, 3, 8, 8});
    DeviceTensor crop = device_tensor(pool + 6, {2, 3, 4, 4}), score = device_tensor(pool + 7, {2});
    backend->restore_step(x, y, gamma, coef, z, y_next, Stream{});
    backend->vcg(crop, crop, crop, crop, score, Stream{});
    backend->vda(crop, crop, crop, crop, score, Stream{});
    std::printf("calls %d elements %lld\n", static_cast<Fake&>(*backend).calls, static_cast<long long>(x.elements()));
    DeviceTensor bad_coef = device_tensor(pool + 3, {2, 4}), wide = device_tensor(pool + 8, {2, 3, 4, 5});
    auto refused = [](auto call) {
        try { call(); } catch (const std::invalid_argument& e) { std::printf("%s\n", e.what()); }
    };
    refused([&] { backend->restore_step(x, y, gamma, bad_coef, z, y_next, Stream{}); });
    refused([&] { backend->restore_step(x, y, gamma, coef, z, y, Stream{}); });
    refused([&] { backend->vda(wide, wide, wide, wide, score, Stream{}); });
    std::printf("%s %zu\n", graph_name(Graph::kRestoreStep), graph_tensors(Graph::kVcg).size());
}
''')
    exe = tmp_path / "fake_backend"
    cmd = [find_cxx(), "-std=c++17", *WARNINGS, "-I", str(ROOT / "cpp" / "include"), str(driver), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out == ["calls 3 elements 384",
                   "restore_step: coef has shape [2,4], the contract wants [2,5]",
                   "restore_step: y_next must not alias x or y (keep two y buffers and swap them)",
                   "vda: x has shape [2,3,4,5], the contract wants [batch,3,S,S]",
                   "restore_step 5"]


# ------------------------------------------------------------------------------------------------ the API scan


def test_scanner_reads_code_not_comments_or_strings() -> None:
    probe = ('// engine->getDeviceMemorySize() is gone\n'
             'auto n = engine->getDeviceMemorySize(); /* setDynamicRange */ log("enqueueV2");\n'
             "config->setFlag(nvinfer1::BuilderFlag::kFP16);\n")
    found = cpp_identifiers(probe)
    assert {"getDeviceMemorySize", "BuilderFlag"} <= found
    assert not found & {"setDynamicRange", "enqueueV2", "gone"}


def test_removed_names_are_what_the_headers_say() -> None:
    """Every REMOVED_IN_TRT11 name is declared by 10.16 and not by 11.1; REMOVED_BEFORE by neither."""
    ids = {v: header_identifiers(trt_include(v)) for v in VERSIONS}
    assert sorted(REMOVED_IN_TRT11 - ids["10.16"]) == []
    assert sorted(REMOVED_IN_TRT11 & ids["11.1"]) == []
    assert sorted(REMOVED_BEFORE & (ids["10.16"] | ids["11.1"])) == []
    assert EXPECTED - {n for n in EXPECTED if n.startswith("cuda")} <= ids["10.16"] & ids["11.1"]


def test_no_removed_or_build_time_api_in_cpp_src() -> None:
    sources = sorted(p for p in SRC_DIR.rglob("*") if p.suffix in (".hpp", ".cpp", ".h", ".cc"))
    assert sources, "no C++ sources in cpp/src"
    found = {str(p.relative_to(ROOT)): sorted(cpp_identifiers(p.read_text()) & (REMOVED_IN_TRT11 | REMOVED_BEFORE |
                                                                                BUILD_TIME)) for p in sources}
    assert {k: v for k, v in found.items() if v} == {}
    used = set().union(*(cpp_identifiers(p.read_text()) for p in sources))
    assert sorted(EXPECTED - used) == []
    includes = set().union(*(re.findall(r"#include\s*[<\"]([^>\"]+)", p.read_text()) for p in sources))
    assert not includes & {"NvInfer.h", "NvOnnxParser.h", "NvInferPlugin.h"}, "the backend is runtime-only"


def test_one_place_branches_on_the_tensorrt_major() -> None:
    conditionals = [line for p in sorted(SRC_DIR.rglob("*.?pp")) for line in p.read_text().splitlines()
                    if re.match(r"\s*#\s*(if|ifdef|ifndef|elif)\b.*NV_TENSORRT", line)]
    assert conditionals == ["#if NV_TENSORRT_MAJOR == 10", "#elif NV_TENSORRT_MAJOR == 11"]

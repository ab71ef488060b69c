#!/usr/bin/env bash
# Wheels the GPU machines lack, for CPython 3.12 on x86-64 Linux, into build/wheelhouse (git-ignored), so that
# scripts/gpu_check.sh installs nothing from a network. Run it once where PyPI is reachable, then carry
# build/wheelhouse with the working tree to the GPU machine.
# The GPU image (read 2026-11: Python 3.12, torch 2.11 CUDA 13, numpy, Pillow, safetensors, rich, typer,
# scikit-image, onnx, onnx-ir, onnxscript, onnxruntime (CPU), cuda-bindings, CuPy) has no jsonschema, whose
# rpds-py dependency is compiled: that is all the default wheelhouse holds (about 0.6 MiB).
#   scripts/gpu_wheelhouse.sh              jsonschema and its dependencies
#   scripts/gpu_wheelhouse.sh --with-onnx  also onnxruntime (CPU) and onnxscript, for an image without them
#                                          (about 20 MiB more; the device tool carries at most 64 MiB in all)
set -euo pipefail
cd "$(dirname "$0")/.."
download() {
    python3 -m pip download --quiet --dest build/wheelhouse --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 "$@"
}
download "jsonschema>=4.18"  # with its dependencies (attrs, referencing, rpds-py, ...)
if [ "${1:-}" = "--with-onnx" ]; then
    # Without dependencies: numpy, protobuf, onnx, sympy, ml-dtypes, packaging and flatbuffers are in the image.
    download --no-deps "onnxruntime>=1.20" "onnxscript>=0.2" "onnx-ir>=0.1"
fi
ls build/wheelhouse
du -sh build/wheelhouse

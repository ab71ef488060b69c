#!/usr/bin/env bash
# Wheels the GPU machines lack (read 2026-11: they have Python 3.12, torch, numpy, Pillow, safetensors, rich, typer,
# scikit-image, onnx, cuda-bindings, CuPy; not jsonschema, whose rpds-py dependency is compiled), downloaded here for
# CPython 3.12 on x86-64 Linux into build/wheelhouse (about 0.6 MiB; git-ignored), so scripts/gpu_check.sh installs
# nothing from a network. Needs PyPI once.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --dest build/wheelhouse --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 "jsonschema>=4.18"
ls build/wheelhouse

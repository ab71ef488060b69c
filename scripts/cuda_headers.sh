#!/usr/bin/env bash
# The CUDA runtime headers (cuda_runtime_api.h and the crt/ headers it includes), for compiling the C++ TensorRT
# backend (cpp/src/tensorrt_backend.cpp) without a CUDA toolkit: NVIDIA's PyPI wheels nvidia-cuda-runtime and
# nvidia-cuda-crt, pinned, downloaded into build/cuda-headers/wheels (git-ignored) and their nvidia/cu13/include
# folders unpacked into build/cuda-headers. Idempotent: a second run downloads nothing. Prints the include folder.
# Needs PyPI once. Headers only: nothing here is linked or run.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=13.2.86  # both wheels exist at this version (checked with `pip index versions`, 2026-12)
PYTHON=${PYTHON:-python3}
DEST=build/cuda-headers
INCLUDE=$DEST/nvidia/cu13/include
STAMP=$DEST/.installed-$VERSION

if [[ ! -f $STAMP ]]; then
    rm -rf "$DEST"
    mkdir -p "$DEST/wheels"
    # The platform is pinned so the same wheels (identical headers) come down on any host.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --dest "$DEST/wheels" "nvidia-cuda-runtime==$VERSION" "nvidia-cuda-crt==$VERSION"
    "$PYTHON" - "$DEST" <<'EOF'
import sys
import zipfile
from pathlib import Path

dest = Path(sys.argv[1])
wheels = sorted((dest / "wheels").glob("*.whl"))
assert len(wheels) == 2, wheels
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("nvidia/cu13/include/")])
EOF
    test -f "$INCLUDE/cuda_runtime_api.h" && test -f "$INCLUDE/crt/host_defines.h"
    touch "$STAMP"
fi
echo "$(pwd)/$INCLUDE"

#!/usr/bin/env bash
# The GPU check (diffv2iqa_trt/benchmarks/gpu_check.py): the torch-cuda stream pipeline against the CPU reference,
# the device layers' copies, events and graphs, and throughput on paper; writes gpu_check.md/.json into OUT.
#   scripts/gpu_check.sh OUT [--budget-s 320] [--batches 1,8,32]    on a CUDA machine, from the repository root
#   PYTHON=.venv/bin/python scripts/gpu_check.sh OUT --dry-run      on a CPU machine: every step, on the host
# PYTHON (default python3) is the interpreter that has torch.
# Installs nothing from a network: packages the machine lacks come from build/wheelhouse (scripts/gpu_wheelhouse.sh)
# into a temporary folder on PYTHONPATH. Finishes in under 6 minutes (the harness stops at its time budget).
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT [options]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
deps=$(mktemp -d)
trap 'rm -rf "$deps"' EXIT
if ! "$py" -c "import jsonschema" 2>/dev/null; then
    if [ ! -d "$root/build/wheelhouse" ]; then
        echo "jsonschema is missing and there is no build/wheelhouse: run scripts/gpu_wheelhouse.sh on a machine" \
             "with PyPI access and carry build/wheelhouse along" >&2
        exit 2
    fi
    "$py" -m pip install --quiet --no-index --find-links "$root/build/wheelhouse" --target "$deps" jsonschema
fi
export PYTHONPATH="$root:$deps${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
timeout 350 "$py" -m diffv2iqa_trt.benchmarks.gpu_check --out "$out" "$@"

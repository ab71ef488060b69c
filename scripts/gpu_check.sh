#!/usr/bin/env bash
# The GPU check (diffv2iqa_trt/benchmarks/gpu_check.py): device layers, the torch-cuda stream pipeline and the PyTorch
# graphs on cuda-python's CudaDevice against the CPU reference, the bundle path (score --backend torch-cuda against
# onnxruntime), copy/compute overlap and throughput; writes gpu_check.md/.json into OUT after every phase.
#   scripts/gpu_check.sh OUT [--budget-s 320] [--batches 1,8,32]    on a CUDA machine, from the repository root
#   PYTHON=.venv/bin/python scripts/gpu_check.sh OUT --dry-run --budget-s 150    on a CPU machine: every phase
# PYTHON (default python3) is the interpreter that has torch. Other options: --phases, --grace-s, --inject-failure.
# Installs nothing from a network: packages the machine lacks come from build/wheelhouse (scripts/gpu_wheelhouse.sh,
# carried with the tree) into a temporary folder on PYTHONPATH. The harness keeps to --budget-s (checked between
# rows and batches), its watchdog stops it --grace-s (30) later, and `timeout` here kills it 60 s after that.
# gpu_check.json's layout is typed in diffv2iqa_trt/benchmarks/gpu_check_report.py: read it with
# GpuCheckReport.from_json(text) (attributes, not string keys).
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT [options]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
budget=320
grace=30
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --budget-s) budget=${args[i + 1]:-$budget} ;;
        --budget-s=*) budget=${args[i]#*=} ;;
        --grace-s) grace=${args[i + 1]:-$grace} ;;
        --grace-s=*) grace=${args[i]#*=} ;;
    esac
done
limit=$(( ${budget%.*} + ${grace%.*} + 60 ))
mkdir -p "$out"
deps=$(mktemp -d)
trap 'rm -rf "$deps"' EXIT
# What the GPU image lacks (jsonschema for bundles; onnxruntime/onnxscript where an image has none): one package at
# a time, so one missing wheel does not block the others; a phase that needs a missing one records the ImportError.
for module in jsonschema onnxscript onnxruntime; do
    # find_spec, not import: importing onnxscript alone takes seconds
    "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null \
        && continue
    nodeps=()
    [ "$module" = jsonschema ] || nodeps=(--no-deps)  # the onnx wheels' dependencies are in the image
    if [ -d "$root/build/wheelhouse" ] && "$py" -m pip install --quiet --no-index --no-compile "${nodeps[@]}" \
            --find-links "$root/build/wheelhouse" --target "$deps" "$module" 2>/dev/null; then
        echo "gpu_check: $module installed from build/wheelhouse"
    else
        echo "gpu_check: warning: $module is missing (not in build/wheelhouse: scripts/gpu_wheelhouse.sh); the" \
             "phases that need it will report the import error" >&2
    fi
done
export PYTHONPATH="$root:$deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --kill-after=15 "$limit" "$py" -u -m diffv2iqa_trt.benchmarks.gpu_check --out "$out" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: killed by timeout after ${limit} s; $out/gpu_check.json holds every phase finished before" >&2
fi
exit "$rc"

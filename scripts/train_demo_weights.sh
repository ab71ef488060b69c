#!/usr/bin/env bash
# The demo-weights recipe of diffv2iqa_trt/weights/MODEL_CARD.md, end to end (about 30 min on one CPU core).
# Usage: scripts/train_demo_weights.sh [DEST] [WORK]
#   DEST: where the checkpoint, logs, metrics and curves go (default: diffv2iqa_trt/weights, the committed files)
#   WORK: scratch space for the pre-trained restorer (default: out/demo-training)
# Every step runs on one torch thread with fixed seeds, so a re-run repeats the numbers on the same machine and
# torch version (see the model card for what was observed).
set -euo pipefail
DEST=${1:-diffv2iqa_trt/weights}
WORK=${2:-out/demo-training}
CLI=${CLI:-diffv2iqa-trt}
mkdir -p "$DEST" "$WORK"

# 1. restorer pre-training on (distorted, pristine) crop pairs of the training split
$CLI train restorer --out "$WORK/tiny-restorer.safetensors" --log "$DEST/tiny-demo-restorer-log.json" \
    --steps 800 --batch-size 16 --lr 5e-4 --seed 0 --threads 1
# 2. IQA training on the frozen restorer's snapshots toward the SSIM pseudo-MOS
$CLI train iqa --restorer "$WORK/tiny-restorer.safetensors" --out "$DEST/tiny-demo.safetensors" \
    --log "$DEST/tiny-demo-iqa-log.json" --epochs 20 --crops-per-image 4 --batch-size 16 --lr 1e-3 \
    --weight-decay 1e-4 --augment dihedral --warmup 0.5 --ema 0.995 --aux-weight 0.3 \
    --seed 0 --threads 1
# 3. image-level metrics with the runtime pipeline (default centre crop), and the curves
$CLI train evaluate --checkpoint "$DEST/tiny-demo.safetensors" --split val --split test --crops center \
    --out "$DEST/tiny-demo-metrics.json" --threads 1
$CLI train curves --restorer-log "$DEST/tiny-demo-restorer-log.json" --iqa-log "$DEST/tiny-demo-iqa-log.json" \
    --out "$DEST/tiny-demo-curves.png"

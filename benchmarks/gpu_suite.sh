#!/usr/bin/env bash
# Every GPU figure in one run on one H100/H200 (at most 8 minutes; the plan is printed first),
# written to $OUT/gpu_suite.json ($OUT: a folder, default ./gpu_suite_out). Per scorer (Gamma
# ViT-B/16 at batch 256, Q-Align and Compare2Score at the 7B shape; random weights, bf16):
# images/s, FLOPs per image and MFU, GPU busy % over the timed loop, host-path ms per image,
# decode + preprocess images/s per core (1 MP and 12 MP JPEG); then a `vqpipe score` job over
# 30,000 synthetic images: its steady rate after the first committed part, GPU busy % then.
#
#   bash benchmarks/gpu_suite.sh                          # → $OUT/gpu_suite.json
#   bash benchmarks/gpu_suite.sh --out figures --budget-s 480 --job-images 50000
#   bash benchmarks/gpu_suite.sh --dry-run                # CPU: every section, tiny settings
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/_gpu_suite.py "$@"

#!/usr/bin/env bash
# Every GPU figure in one run on a single-GPU machine (at most 8 minutes), written to one JSON:
# Gamma ViT-B/16 bf16 at batch 256, Q-Align and Compare2Score at the 7B shape (random weights),
# and a full `vqpipe score` job on one GPU with images/s and GPU utilisation sampled via NVML.
#
#   bash benchmarks/gpu_suite.sh                      # → gpu_suite.json
#   bash benchmarks/gpu_suite.sh --out figures.json --budget-s 480
#   bash benchmarks/gpu_suite.sh --dry-run            # CPU: small settings, checks it would run
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/_gpu_suite.py "$@"

#!/usr/bin/env bash
# pFedGate's sensitivity to its two learning rates (the authors report it): the model's lr and
# the gate's lr on configs/fmnist-pfedgate-paper.yaml at s = 0.3, over a grid, each run shorter
# than the comparison. Pick the pair with the best mean accuracy, then set both in the config.
# Usage: bash benchmarks/pfedgate_lr_sweep.sh [OUT_DIR] [ROUNDS]
#        (grids: LRS="0.005 0.01 0.02" GATE_LRS="0.01 0.03 0.1"; then
#         python benchmarks/summarize_runs.py OUT_DIR)
set -euo pipefail
out=${1:-runs/pfedgate-lr-sweep}
rounds=${2:-15}
cfg=configs/fmnist-pfedgate-paper.yaml
for lr in ${LRS:-0.005 0.01 0.02}; do
  for gate_lr in ${GATE_LRS:-0.01 0.03 0.1}; do
    fedsparse simulate --config "$cfg" --out "$out" --rounds "$rounds" --budgets 0.3:1 \
      --name "lr${lr}-gate${gate_lr}" --lr "$lr" --set "method.pfedgate.gate_lr=$gate_lr"
  done
done

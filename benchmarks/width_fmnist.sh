#!/usr/bin/env bash
# Width methods beside FedAvg and pFedGate on Fashion-MNIST (configs/fmnist-width.yaml): the same
# partitions, devices, rounds and training for all; FedAvg trains the dense model on every device.
# Usage: bash benchmarks/width_fmnist.sh [OUT_DIR]   (then: python benchmarks/summarize_runs.py OUT_DIR)
set -euo pipefail
out=${1:-runs/width-fmnist}
cfg=configs/fmnist-width.yaml
run() { fedsparse simulate --config "$cfg" --out "$out" "$@"; }
run --name fedavg --method dense --strategy fedavg \
  --budgets 1.0:0.4:low-end-phone,1.0:0.3:mid-phone,1.0:0.3:laptop
for method in heterofl fjord fedrolex pfedgate; do
  run --name "$method" --method "$method"
done
# HeteroFL's scaler (off by default: it cost accuracy here with tracked BN statistics)
for method in heterofl fedrolex; do
  run --name "$method-scaler" --method "$method" --set "method.$method.scaler=true"
done

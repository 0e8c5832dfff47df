#!/usr/bin/env bash
# Simulated time-to-accuracy on Fashion-MNIST (configs/fmnist-pfedgate.yaml's data, model, rounds and
# training) with mixed device tiers: half low-end phones, 30% mid-range phones, 20% laptops.
# Dense FedAvg trains the whole model everywhere; pFedGate and FedTiny give the slow devices the
# low densities. Target: mean client accuracy 0.7.
# Usage: bash benchmarks/clock_fmnist.sh [OUT_DIR]   (then: fedsparse compare OUT_DIR/*)
set -euo pipefail
out=${1:-runs/clock-fmnist}
cfg=configs/fmnist-pfedgate.yaml
run() { fedsparse simulate --config "$cfg" --out "$out" --set clock.target_accuracy=0.7 "$@"; }
run --name dense --method dense --strategy fedavg --budgets 1.0:0.5:low-end-phone,1.0:0.3:mid-phone,1.0:0.2:laptop
run --name pfedgate --method pfedgate --budgets 0.1:0.5:low-end-phone,0.3:0.3:mid-phone,0.5:0.2:laptop
run --name fedtiny --method fedtiny --budgets 0.1:0.5:low-end-phone,0.3:0.3:mid-phone,0.5:0.2:laptop \
  --set method.pruning.adjust_every=5

#!/usr/bin/env bash
# FedTiny beside dense FedAvg and the sparse baselines on Fashion-MNIST (configs/fmnist-fedtiny.yaml):
# fixed magnitude mask, SNIP, FedDST, FedTiny (ERK allocation, and uniform as before) and FedMef at
# densities 0.01, 0.05 and 0.1; every run (dense too) shares the server's held-back set and its warm-up.
# Usage: bash benchmarks/fedtiny_fmnist.sh [OUT_DIR]   (then: python benchmarks/summarize_runs.py OUT_DIR)
set -euo pipefail
out=${1:-runs/fedtiny-fmnist}
cfg=configs/fmnist-fedtiny.yaml
run() { fedsparse simulate --config "$cfg" --out "$out" "$@"; }
run --name dense --method dense --strategy fedavg --budgets 1.0:1
for rho in 0.01 0.05 0.1; do
  run --name "magnitude-$rho" --method prune-at-init --set method.pruning.criterion=magnitude --budgets "$rho:1"
  run --name "snip-$rho" --method prune-at-init --set method.pruning.criterion=snip --budgets "$rho:1"
  run --name "feddst-$rho" --method feddst --budgets "$rho:1"
  run --name "fedtiny-$rho" --method fedtiny --budgets "$rho:1"
  run --name "fedtiny-uniform-$rho" --method fedtiny --budgets "$rho:1" \
    --set method.pruning.allocation=uniform
  run --name "fedmef-$rho" --method fedmef --budgets "$rho:1"
done

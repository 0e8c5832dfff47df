#!/usr/bin/env bash
# Filter-level pruning on Fashion-MNIST (configs/fmnist-fedtiny.yaml, the same partitions, server
# set and warm-up as benchmarks/fedtiny_fmnist.sh): FedTiny pruning and growing whole channels,
# the filter-level magnitude mask fixed at init, HeteroFL (the first channels, no selection)
# and dense FedAvg, at densities 0.1, 0.05, 0.02 and 0.01, and weight-level SNIP at 0.01 beside
# them. Every filter-level run trains narrower networks.
# Usage: bash benchmarks/fedtiny_filter_fmnist.sh [OUT_DIR]
#        (then: python benchmarks/summarize_runs.py OUT_DIR)
set -euo pipefail
out=${1:-runs/fedtiny-filter-fmnist}
cfg=configs/fmnist-fedtiny.yaml
run() { fedsparse simulate --config "$cfg" --out "$out" "$@"; }
run --name dense --method dense --strategy fedavg --budgets 1.0:1
for rho in 0.1 0.05 0.02 0.01; do
  run --name "fedtiny-filter-$rho" --method fedtiny --budgets "$rho:1" \
    --set method.pruning.granularity=filter
  run --name "magnitude-filter-$rho" --method prune-at-init --budgets "$rho:1" \
    --set method.pruning.granularity=filter
  run --name "heterofl-$rho" --method heterofl --budgets "$rho:1"
done
run --name snip-0.01 --method prune-at-init --set method.pruning.criterion=snip --budgets 0.01:1

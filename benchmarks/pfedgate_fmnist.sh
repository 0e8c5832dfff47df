#!/usr/bin/env bash
# The pFedGate comparison on Fashion-MNIST: FedAvg, the personalised baselines (FedAvg-FT, local,
# Ditto) and pFedGate at s = 1, 0.5, 0.3 and mixed tiers, with the joint knapsack (the default)
# and with the authors' grouped knapsack (blocks cut to fit, kept-only gradients), all with
# configs/fmnist-pfedgate.yaml's data, model, rounds and training.
# Usage: bash benchmarks/pfedgate_fmnist.sh [OUT_DIR]   (then: python benchmarks/summarize_runs.py OUT_DIR)
set -euo pipefail
out=${1:-runs/pfedgate-fmnist}
cfg=configs/fmnist-pfedgate.yaml
run() { fedsparse simulate --config "$cfg" --out "$out" "$@"; }
run --name fedavg --method dense --strategy fedavg --budgets 1.0:1
run --name fedavg-ft --method fedavg-ft --strategy fedavg --budgets 1.0:1
run --name local --method local --strategy masked-fedavg --budgets 1.0:1
run --name ditto --method ditto --strategy masked-fedavg --budgets 1.0:1
run --name pfedgate-s1 --budgets 1.0:1
run --name pfedgate-s0.5 --budgets 0.5:1
run --name pfedgate-s0.3 --budgets 0.3:1
run --name pfedgate-mixed --budgets 0.5:0.5,0.1:0.5
grouped=(--set method.pfedgate.knapsack=grouped --set method.pfedgate.block_fit=4 --set method.pfedgate.ste=kept)
run --name pfedgate-grouped-s0.5 --budgets 0.5:1 "${grouped[@]}"
run --name pfedgate-grouped-s0.3 --budgets 0.3:1 "${grouped[@]}"
run --name pfedgate-grouped-mixed --budgets 0.5:0.5,0.1:0.5 "${grouped[@]}"

#!/usr/bin/env bash
# The pFedGate comparison on Fashion-MNIST with configs/fmnist-pfedgate-paper.yaml (same data,
# partitions, model, rounds, training and evaluation for every run): FedAvg and the personalised
# baselines (FedAvg-FT, local, Ditto), then pFedGate at s = 1, 0.5, 0.3 and mixed tiers (half 0.5,
# half 0.1) with its defaults (grouped knapsack, `split` blocks per tensor, kept-only gradients)
# and with blocks cut to fit (block_fit 4), the channel-aligned blocks at s = 0.3 and, for
# reference, the joint knapsack with the full STE at s = 0.3.
# Usage: bash benchmarks/pfedgate_fmnist.sh [OUT_DIR]   (then: python benchmarks/summarize_runs.py OUT_DIR)
#        ONLY="fedavg pfedgate-s0.3" runs a subset by name.
set -euo pipefail
out=${1:-runs/pfedgate-fmnist}
cfg=configs/fmnist-pfedgate-paper.yaml
run() {
  local name=$1; shift
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return; fi
  fedsparse simulate --config "$cfg" --out "$out" --name "$name" "$@"
}
run fedavg --method dense --strategy fedavg --budgets 1.0:1
run fedavg-ft --method fedavg-ft --strategy fedavg --budgets 1.0:1
run local --method local --strategy masked-fedavg --budgets 1.0:1
run ditto --method ditto --strategy masked-fedavg --budgets 1.0:1
run pfedgate-s1 --budgets 1.0:1
run pfedgate-s0.5 --budgets 0.5:1
run pfedgate-s0.3 --budgets 0.3:1
run pfedgate-mixed --budgets 0.5:0.5,0.1:0.5
fit=(--set method.pfedgate.block_fit=4)
run pfedgate-fit-s0.5 --budgets 0.5:1 "${fit[@]}"
run pfedgate-fit-s0.3 --budgets 0.3:1 "${fit[@]}"
run pfedgate-fit-mixed --budgets 0.5:0.5,0.1:0.5 "${fit[@]}"
run pfedgate-channel-s0.3 --budgets 0.3:1 --set method.pfedgate.blocks=channel
run pfedgate-joint-s0.3 --budgets 0.3:1 --set method.pfedgate.knapsack=joint \
  --set method.pfedgate.ste=full

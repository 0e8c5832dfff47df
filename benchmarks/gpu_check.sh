#!/usr/bin/env bash
# GPU check: a short Fashion-MNIST simulation (configs/fashion-mnist-cnn.yaml, dense FedAvg,
# 100 clients, 10 per round) with the clients on the GPU (--gpus-per-client), then the same run
# on the CPU; prints each run's per-round time (median of the rounds after the first) and the
# GPU memory in use at its peak (nvidia-smi, sampled every 0.2 s: every client worker's CUDA
# context included). Needs a CUDA build of torch 2.13.0 and the Fashion-MNIST files.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (GPUS_PER_CLIENT=0.25 ROUNDS=6 METHOD=dense)
set -euo pipefail
out=${1:-runs/gpu-check}
gpus=${GPUS_PER_CLIENT:-0.25}
rounds=${ROUNDS:-6}
method=${METHOD:-dense}
budgets=${BUDGETS:-1.0:1}
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here: run it on a machine with an NVIDIA GPU" >&2; exit 2; }
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA device: install a CUDA build of torch==2.13.0" >&2; exit 2; }
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu-memory-mib.txt" &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
run() { fedsparse simulate --config configs/fashion-mnist-cnn.yaml --rounds "$rounds" --method "$method" \
          --budgets "$budgets" --set eval.every="$rounds" --out "$out" "$@"; }
run --name gpu --gpus-per-client "$gpus"
kill $sampler
run --name cpu
python - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
memory = [int(line) for line in (out / "gpu-memory-mib.txt").read_text().split() if line.isdigit()]
for name in ("gpu", "cpu"):
    run = sorted(p.parent for p in out.glob(f"{name}-*/summary.json"))[-1]
    seconds = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    print(f"{name}: {statistics.median(seconds[1:]):.3f} s/round (rounds 2+; round 1 {seconds[0]:.1f} s), "
          f"accuracy mean {summary['accuracy']['mean']:.4f}, run {run}")
print(f"GPU memory in use, peak during the gpu run: {max(memory, default=0)} MiB")
EOF

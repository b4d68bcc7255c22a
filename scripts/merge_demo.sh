#!/usr/bin/env bash
# Quick-start demo of the merge CLI, offline, in about a minute on 2 CPU cores:
#   1. builds a small LLaMA-architecture pool in outs/demo/pool (a random base and 4 "fine-tuned"
#      checkpoints = base + seeded noise; scripts/bench_pool.py),
#   2. merges it with every example config in configs/examples/ (native and mergekit YAML),
#   3. loads every merged folder with transformers, runs a forward pass and writes
#      outs/demo/results.csv and outs/demo/results.md.
# Usage: bash scripts/merge_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/bench_pool.py --out outs/demo/pool --num-models 4 --hidden 256 --layers 4 \
  --intermediate 688 --vocab 4096 --heads 4 --shard-mb 10 --quiet
for config in configs/examples/*.y*ml; do
  name=$(basename "${config%.*}")
  echo "merging ${name}"
  python3 -m merging merge "$config" --out "outs/demo/merged/${name}" --overwrite --quiet > /dev/null
done
python3 scripts/demo_report.py outs/demo

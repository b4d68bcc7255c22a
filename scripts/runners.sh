# Runner functions shared by every domain (merging/benchmark): a domain's script sets _DOMAIN (its python -m
# module), _DEFAULT_POOL and _DEFAULT_TARGETS (the scaling claims' 4 target tasks), then sources this file.
# Usage and examples: scripts/discriminative.sh, scripts/vision.sh.
# EXPERIMENT (default: the pool's name) names where rows and the tables judged on them go under outs/; a domain
# script may define _domain_options (the options its every command takes).
_domain_options() { :; }
_bench() {
  local command=$1 named=()
  shift
  case $command in run|scale|plot|claims|variants) named=(${EXPERIMENT:+--experiment "$EXPERIMENT"}) ;; esac
  # shellcheck disable=SC2046  # a domain's options are words
  python3 -m "$_DOMAIN" "$command" --pool "${POOL:-$_DEFAULT_POOL}" $(_domain_options) "${named[@]}" "$@"
}
_bench_run() {
  local method=$1; shift
  # shellcheck disable=SC2086  # POOL_SEEDS is a list of seeds
  _bench run --method "$method" ${POOL_SEEDS:+--pool-seeds $POOL_SEEDS} "$@"
}
run_prepare()     { _bench prepare "$@"; }
# The cores this process may use, whatever OMP_NUM_THREADS says (plain nproc honours it: 1 under the advised setting).
_cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
# shellcheck disable=SC2086
run_finetune()    { _bench finetune --workers "${WORKERS:-$(_cores)}" ${POOL_SEEDS:+--seeds $POOL_SEEDS} "$@"; }
run_majority()    { _bench_run majority "$@"; }
run_probe()       { _bench_run probe "$@"; }
run_pretrained()  { _bench_run pretrained "$@"; }
run_finetuned()   { _bench_run finetuned "$@"; }
run_avg()         { _bench_run average "$@"; }
run_task_arith()  { _bench_run task_arithmetic "$@"; }
run_ties()        { _bench_run ties "$@"; }
run_dare_ties()   { _bench_run dare_ties "$@"; }
run_from()        { _bench_run from "$@"; }
run_tsv_m()       { _bench_run tsv_m "$@"; }
run_iso_c()       { _bench_run iso_c "$@"; }
run_iso_cts()     { _bench_run iso_cts "$@"; }
run_cart()        { _bench_run cart "$@"; }
run_star()        { _bench_run star "$@"; }
run_wudi()        { _bench_run wudi "$@"; }
run_pcb()         { _bench_run pcb "$@"; }
# data-driven (proxy split: 100 labelled train examples per task; AdaMerging: unlabelled test inputs)
run_frank_wolfe() { _bench_run frank_wolfe "$@"; }
run_frank_wolfe_soft() { _bench_run frank_wolfe_soft "$@"; }
run_regmean()     { _bench_run regmean "$@"; }
run_regmean_plusplus() { _bench_run regmean_plusplus "$@"; }
run_fisher()      { _bench_run fisher "$@"; }
run_adamerging()  { _bench_run adamerging "$@"; }
run_greedy_soup() { _bench_run greedy_soup "$@"; }
# routed (one body per input; fresh training examples per task train its router)
run_twin_merging() { _bench_run twin_merging "$@"; }
# Run the functions named, in turn, each announced on stderr as "[stage i/n] name (m min elapsed, about k min left)";
# stop at the first that fails. The time left adds up the stages' durations in the last run that reached them,
# recorded per domain and pool in $MERGING_CACHE/stage_times/ (absent until a run has timed every stage left).
_stage_times() { echo "${MERGING_CACHE:-$HOME/.cache/merging}/stage_times/${_DOMAIN}-$(basename "${POOL:-$_DEFAULT_POOL}" .yaml).tsv"; }
_time_left() {  # _time_left FILE STAGE…: ", about k min left" when FILE times every STAGE
  local file=$1; shift
  [ -f "$file" ] || return 0
  awk -F'\t' -v stages="$*" '{ last[$1] = $2 }
    END { n = split(stages, s, " "); total = 0
          for (i = 1; i <= n; i++) { if (!(s[i] in last)) exit; total += last[s[i]] }
          printf ", about %d min left", int((total + 59) / 60) }' "$file"
}
_stages() {
  local n=$# i=0 started=$SECONDS stage times begun
  times=$(_stage_times)
  mkdir -p "$(dirname "$times")"
  for stage in "$@"; do
    i=$((i + 1))
    printf '[stage %d/%d] %s (%d min elapsed%s)\n' "$i" "$n" "$stage" $(((SECONDS - started) / 60)) \
      "$(_time_left "$times" "${@:i}")" >&2
    begun=$SECONDS
    "$stage" || return
    printf '%s\t%d\n' "$stage" $((SECONDS - begun)) >> "$times"
  done
  printf '[stages done] %d in %d min\n' "$n" $(((SECONDS - started) / 60)) >&2
}
run_baselines() {     # references and data-free merges: the benchmark's main comparison (the fine-tuned checkpoints
  # are scored first: every row's normalised score divides by them, so the references after read no extra model)
  _stages run_finetune run_finetuned run_majority run_probe run_pretrained run_avg run_task_arith run_ties \
    run_dare_ties run_from
}
run_modern() {        # the recent data-free merges: per-matrix (SVD or a per-matrix objective) and PCB, docs/methods.md
  _stages run_tsv_m run_iso_c run_iso_cts run_cart run_star run_wudi run_pcb
}
run_data_driven() {   # methods that read data (proxy examples, unlabelled test inputs, validation scores)
  _stages run_greedy_soup run_regmean run_regmean_plusplus run_fisher run_adamerging run_frank_wolfe run_frank_wolfe_soft \
    run_twin_merging
}
run_all() { run_baselines && run_modern && run_data_driven; }
# The paper's scaling claims (merging/benchmark/scaling.py): TARGETS (default _DEFAULT_TARGETS) keep their own
# checkpoints; k extra checkpoints join them: other tasks' (irrelevance; k = every other task is the paper's main
# 20-model setting) or the targets' other seeds (relevance by seeds, ours).
_scaling() {
  local claim=$1 sizes=$2 methods=$3 k m
  shift 3
  for k in $sizes; do
    for m in $methods; do
      # shellcheck disable=SC2086  # TARGETS and POOL_SEEDS are lists
      _bench scale --claim "$claim" --method "$m" --extra "$k" \
        --targets ${TARGETS:-$_DEFAULT_TARGETS} \
        ${POOL_SEEDS:+--pool-seeds $POOL_SEEDS} "$@" || return
    done
  done
}
run_irrelevance() {
  _scaling irrelevance "${SIZES:-0 2 4 8 16}" "${METHODS:-frank_wolfe frank_wolfe_soft task_arithmetic ties adamerging}" "$@" &&
    _bench plot --claim irrelevance
}
run_relevance() {
  _scaling relevance "${SIZES:-1 2 4 8 16}" "${METHODS:-frank_wolfe frank_wolfe_soft task_arithmetic ties adamerging}" "$@" &&
    _bench plot --claim relevance
}
# The paper's relevance protocol: the targets' checkpoints plus k other tasks' (one each), every checkpoint's task a
# target of the merge, scored on every task of the pool (merging/benchmark/scaling.py).
run_relevance_tasks() {
  _scaling relevance_tasks "${SIZES:-0 4 8 12 16}" "${METHODS:-frank_wolfe frank_wolfe_soft task_arithmetic ties adamerging}" "$@" &&
    _bench plot --claim relevance_tasks
}
# The paper's main setting: every other task's checkpoint beside the targets' own, scored on the targets.
run_main() {
  _scaling irrelevance all "${METHODS:-frank_wolfe_soft adamerging task_arithmetic ties dare_ties average}" "$@"
}
# The paper's claims (configs/claims.yaml) judged on the rows above: outs/<pool>_claims.md, a plot per claim.
# shellcheck disable=SC2086  # TARGETS is a list
run_claims() { _bench claims --targets ${TARGETS:-$_DEFAULT_TARGETS} "$@"; }
# Issue 19's Frank-Wolfe variants (configs/fw_variants.yaml) judged on the all-task and scaling rows:
# outs/<pool>_fw_variants.md.
# shellcheck disable=SC2086  # TARGETS is a list
run_variants() { _bench variants --targets ${TARGETS:-$_DEFAULT_TARGETS} "$@"; }
# Rows made before the finetuned_digest column, given it where re-made rows reproduce them (merging/benchmark/adopt.py).
run_adopt() { _bench adopt "$@"; }
run_memory() {
  _scaling irrelevance "${SIZES:-0 4 12}" "${METHODS:-frank_wolfe adamerging regmean}" "$@" &&
    _bench plot --claim irrelevance --y peak_rss_gb
}

# Discriminative domain runners. Usage:
#   source scripts/discriminative.sh
#   run_baselines                             # references + data-free merges (the main comparison)
#   run_all                                   # run_baselines, then the data-driven methods
#   run_ties --density 0.2 --scaling 0.7      # fix hyper-parameters (otherwise chosen on validation)
#   POOL=configs/discriminative/other.yaml run_task_arith
#   POOL_SEEDS=0 run_baselines                # one fine-tuning seed instead of the pool's finetune.seeds
# Each run appends one row per fine-tuning seed to outs/<experiment>/results.csv and rebuilds
# outs/<experiment>/results.md (mean ± std over seeds, then every row); experiment defaults to the pool's
# name (set EXPERIMENT=... to change). The first call prepares the data and fine-tunes the missing
# checkpoints (cached under ${MERGING_CACHE:-~/.cache/merging}).
_disc() {
  local command=$1; shift
  python3 -m discriminative "$command" --pool "${POOL:-configs/discriminative/minilm_8tasks.yaml}" "$@"
}
_disc_run() {
  local method=$1; shift
  # shellcheck disable=SC2086  # POOL_SEEDS is a list of seeds
  _disc run --method "$method" ${EXPERIMENT:+--experiment "$EXPERIMENT"} ${POOL_SEEDS:+--pool-seeds $POOL_SEEDS} "$@"
}
run_prepare()     { _disc prepare "$@"; }
# shellcheck disable=SC2086
run_finetune()    { _disc finetune --workers "${WORKERS:-$(nproc)}" ${POOL_SEEDS:+--seeds $POOL_SEEDS} "$@"; }
run_majority()    { _disc_run majority "$@"; }
run_probe()       { _disc_run probe "$@"; }
run_pretrained()  { _disc_run pretrained "$@"; }
run_finetuned()   { _disc_run finetuned "$@"; }
run_avg()         { _disc_run average "$@"; }
run_task_arith()  { _disc_run task_arithmetic "$@"; }
run_ties()        { _disc_run ties "$@"; }
run_dare_ties()   { _disc_run dare_ties "$@"; }
run_from()        { _disc_run from "$@"; }
# data-driven (proxy split: 100 labelled train examples per task; AdaMerging: unlabelled test inputs)
run_frank_wolfe() { _disc_run frank_wolfe "$@"; }
run_frank_wolfe_soft() { _disc_run frank_wolfe_soft "$@"; }
run_regmean()     { _disc_run regmean "$@"; }
run_fisher()      { _disc_run fisher "$@"; }
run_adamerging()  { _disc_run adamerging "$@"; }
run_greedy_soup() { _disc_run greedy_soup "$@"; }
run_baselines() {     # references and data-free merges: the benchmark's main comparison
  run_finetune && run_majority && run_probe && run_pretrained && run_finetuned && run_avg && run_task_arith &&
    run_ties && run_dare_ties && run_from
}
run_data_driven() {   # methods that read data (proxy examples, unlabelled test inputs, validation scores)
  run_greedy_soup && run_regmean && run_fisher && run_adamerging && run_frank_wolfe && run_frank_wolfe_soft
}
run_all() { run_baselines && run_data_driven; }
# The paper's scaling claims (merging/benchmark/scaling.py): TARGETS (4 of the pool's tasks) keep their own
# checkpoints; k extra checkpoints join them: other tasks' (irrelevance) or the targets' other seeds (relevance).
# Rows in outs/<pool>_<claim>/results.csv, plots beside them.
#   run_irrelevance                         # k = 0 2 4 8 16, FW hard/soft vs TA, TIES, AdaMerging
#   SIZES="1 4" METHODS="frank_wolfe ties" run_relevance
#   SIZES="0 12" METHODS=frank_wolfe run_irrelevance --init base --lambda 1 --eta 1   # overrides for every point
#   run_memory                              # peak RSS at 4, 8, 16 candidates: FW, AdaMerging, RegMean
_scaling() {
  local claim=$1 sizes=$2 methods=$3 k m
  shift 3
  for k in $sizes; do
    for m in $methods; do
      # shellcheck disable=SC2086  # TARGETS and POOL_SEEDS are lists
      _disc scale --claim "$claim" --method "$m" --extra "$k" \
        --targets ${TARGETS:-sarcasm_headlines bbc_topic hyperbaton epistemic_reasoning} \
        ${POOL_SEEDS:+--pool-seeds $POOL_SEEDS} "$@" || return
    done
  done
}
run_irrelevance() {
  _scaling irrelevance "${SIZES:-0 2 4 8 16}" "${METHODS:-frank_wolfe frank_wolfe_soft task_arithmetic ties adamerging}" "$@" &&
    _disc plot --claim irrelevance
}
run_relevance() {
  _scaling relevance "${SIZES:-1 2 4 8 16}" "${METHODS:-frank_wolfe frank_wolfe_soft task_arithmetic ties adamerging}" "$@" &&
    _disc plot --claim relevance
}
run_memory() {
  _scaling irrelevance "${SIZES:-0 4 12}" "${METHODS:-frank_wolfe adamerging regmean}" "$@" &&
    _disc plot --claim irrelevance --y peak_rss_gb
}

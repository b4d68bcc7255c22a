# Discriminative domain runners. Usage:
#   source scripts/discriminative.sh
#   run_baselines                             # references + data-free merges (the main comparison)
#   run_modern                                # TSV-M, ISO-C, ISO-CTS, CART, STAR, WUDI, PCB
#   run_all                                   # run_baselines, run_modern, then the data-driven methods
#   run_ties --density 0.2 --scaling 0.7      # fix hyper-parameters (otherwise chosen on validation)
#   POOL=configs/discriminative/other.yaml run_task_arith
#   POOL_SEEDS=0 run_baselines                # one fine-tuning seed instead of the pool's finetune.seeds
#   run_frank_wolfe --preset layerwise --grid-points 0 &   # a long grid shared out: each process stores its
#   run_frank_wolfe --preset layerwise --grid-points 1 2   # points (no row); then the plain run reads them back
# Each run appends one row per fine-tuning seed to outs/<experiment>/results.csv and rebuilds
# outs/<experiment>/results.md (mean ± std over seeds, then every row); experiment defaults to the pool's
# name (set EXPERIMENT=... to change; the scaling rows, claims and variants tables follow it: a pool re-made on
# another machine is judged apart, docs/architecture.md). The first call prepares the data and fine-tunes the missing
# checkpoints (cached under ${MERGING_CACHE:-~/.cache/merging}).
# Every function is in scripts/runners.sh (the same in every domain); the scaling examples:
# (rows in outs/<pool>_<claim>/results.csv, plots beside them)
#   run_irrelevance                         # k = 0 2 4 8 16, FW hard/soft vs TA, TIES, AdaMerging
#   SIZES="1 4" METHODS="frank_wolfe ties" run_relevance
#   SIZES="0 12" METHODS=frank_wolfe run_irrelevance --init base --lambda 1 --eta 1   # overrides for every point
#   run_memory                              # peak RSS at 4, 8, 16 candidates: FW, AdaMerging, RegMean
#   METHODS=frank_wolfe_soft run_main --preset main     # the paper's main setting: every checkpoint, 4 targets
#   run_claims                              # the paper's claims judged on these rows (outs/<pool>_claims.md)
_DOMAIN=discriminative
_DEFAULT_POOL=configs/discriminative/minilm_8tasks_v2.yaml
_DEFAULT_TARGETS="sarcasm_headlines bbc_topic tomi guess_the_singer"
# shellcheck source=scripts/runners.sh
source "$(dirname "${BASH_SOURCE[0]}")/runners.sh"

# Generative domain runners: the functions every domain has (scripts/runners.sh), on LoRA or full fine-tunes of a
# causal LM scored through lm-eval. Usage:
#   source scripts/generative.sh
#   run_prepare; run_finetune                 # the 16-task suite; one LoRA adapter per task (SmolLM2-135M),
#                                             # WORKERS processes (default: the core count), one thread each
#   run_finetuned; run_pretrained             # each adapter on its own task (the 100), and the base
#   run_task_arith; run_ties; run_dare_ties; run_from      # data-free merges of the 16 adapters (from: FroM-LoRA)
#   run_modern                                # TSV-M, ISO-C, ISO-CTS, CART, STAR, WUDI, PCB, KnOTS
#   run_frank_wolfe                           # FW hard, A and B merged separately (the official code)
#   run_frank_wolfe --space product           # FW hard on ΔW = (α/r)·B·A, re-factored to rank r
#   run_all                                   # all of the above
#   POOL=configs/generative/smollm2_3_full.yaml run_finetune         # the FroM setting: 3 full fine-tunes,
#   POOL=configs/generative/smollm2_3_full.yaml run_from_table       # TA, TIES, DARE+TIES, FroM, DARE+FroM
#   POOL=configs/generative/llama2_16_lora.yaml run_frank_wolfe      # the paper's adapters (hub access)
# Rows land in outs/<pool name>/results.csv and results.md (EXPERIMENT names another folder; POOL_SEEDS the
# fine-tuning seeds, one row each); merges in ~/.cache/merging/generative/merged/.
# LIMIT=N scores the first N test examples per task (default: all, at most 200).
_DOMAIN=generative
_DEFAULT_POOL=configs/generative/smollm2_12_lora_v2.yaml
source "$(dirname "${BASH_SOURCE[0]}")/runners.sh"
_domain_options() { echo ${LIMIT:+--limit "$LIMIT"}; }
run_from() {  # FroM-LoRA on adapters, FroM on full fine-tunes
  if grep -q "^kind: lora" "${POOL:-$_DEFAULT_POOL}"; then _bench_run from_lora "$@"; else _bench_run from "$@"; fi
}
run_knots()       { _bench_run knots "$@"; }  # KnOTS-TIES on the adapters (merging/methods/knots.py)
run_baselines() {
  _stages run_finetune run_finetuned run_pretrained run_task_arith run_ties run_dare_ties run_from
}
run_modern() {   # the recent data-free merges (product space, re-factored) and KnOTS on the adapters
  _stages run_tsv_m run_iso_c run_iso_cts run_cart run_star run_wudi run_pcb run_knots
}
run_data_driven() { _stages run_frank_wolfe; }
run_all() { run_baselines && run_modern && run_data_driven && run_frank_wolfe --space product; }
run_from_table() {  # the FroM paper's full-model table
  run_finetuned && run_task_arith && run_ties && run_dare_ties && run_from && run_from --drop-rate 0.9
}
# What the other domains' benchmarks have and this one does not: classifier references and scaling claims, and the
# data-driven methods that need a classifier's objective.
unset -f run_majority run_probe run_frank_wolfe_soft run_regmean run_fisher run_adamerging run_greedy_soup \
  run_irrelevance run_relevance run_relevance_tasks run_main run_claims run_variants run_memory

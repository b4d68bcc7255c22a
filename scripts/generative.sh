# Generative domain runners (the same function names as scripts/discriminative.sh and scripts/vision.sh).
# Usage:
#   source scripts/generative.sh
#   run_prepare; run_finetune                 # the 16-task suite; one LoRA adapter per task (SmolLM2-135M),
#                                             # WORKERS processes (default: the core count), one thread each
#   run_pretrained; run_finetuned             # the base, and each adapter on its own task (the 100)
#   run_task_arith; run_ties; run_dare_ties; run_from      # data-free merges of the 16 adapters (from: FroM-LoRA)
#   run_frank_wolfe                           # FW hard, A and B merged separately (the official code)
#   run_frank_wolfe --space product       # FW hard on ΔW = (α/r)·B·A, re-factored to rank r
#   run_all                                   # all of the above
#   POOL=configs/generative/smollm2_3_full.yaml run_finetune         # the FroM setting: 3 full fine-tunes,
#   POOL=configs/generative/smollm2_3_full.yaml run_from_table       # TA, TIES, DARE+TIES, FroM, DARE+FroM
#   POOL=configs/generative/llama2_16_lora.yaml run_frank_wolfe      # the paper's adapters (hub access)
# Rows land in outs/<pool name>/results.csv and results.md; merges in ~/.cache/merging/generative/merged/.
# LIMIT=N scores the first N test examples per task (default: all, at most 200).
_POOL() { echo "${POOL:-configs/generative/smollm2_16_lora.yaml}"; }
_gen() { local command=$1; shift; python3 -m generative "$command" --pool "$(_POOL)" ${LIMIT:+--limit $LIMIT} "$@"; }
_merge() { _gen merge "$@"; }
run_prepare()     { _gen prepare "$@"; }
# The cores this process may use, whatever OMP_NUM_THREADS says (plain nproc honours it: 1 under the advised setting).
_cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
run_finetune()    { _gen finetune --workers "${WORKERS:-$(_cores)}" ${POOL_SEEDS:+--seeds $POOL_SEEDS} "$@"; }
run_pretrained()  { _gen evaluate --label base "$@"; }
run_finetuned()   { _gen finetuned "$@"; }
run_task_arith()  { _merge task_arithmetic "$@"; }
run_ties()        { _merge ties "$@"; }
run_dare_ties()   { _merge dare_ties "$@"; }
run_from()        { if grep -q "^kind: lora" "$(_POOL)"; then _merge from_lora "$@"; else _merge from "$@"; fi; }
run_frank_wolfe() { _merge frank_wolfe "$@"; }
run_baselines()   { run_finetuned && run_pretrained && run_task_arith && run_ties && run_dare_ties && run_from; }
run_all()         { run_baselines && run_frank_wolfe && run_frank_wolfe --space product; }
run_from_table()  {   # the FroM paper's full-model table
  run_finetuned && run_task_arith && run_ties && run_dare_ties && run_from && run_from --drop-rate 0.9
}

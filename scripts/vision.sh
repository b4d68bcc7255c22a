# Vision domain runners (the same functions as scripts/discriminative.sh, in scripts/runners.sh). Usage:
#   source scripts/vision.sh
#   run_prepare                               # the 20 offline image tasks (Fashion-MNIST: apt-get install
#                                             # dataset-fashion-mnist, or FASHION_MNIST_DIR=<folder>)
#   run_finetune                              # one EfficientNet-Lite0 checkpoint per task and seed
#   run_baselines; run_all                    # references + data-free merges; then the data-driven methods
#   run_modern                                # TSV-M, ISO-C, ISO-CTS, CART, STAR, WUDI, PCB (part of run_all)
#   run_ties --statistics reestimate          # BatchNorm statistics re-estimated on the proxy pictures
#                                             # (default: averaged over the merged checkpoints)
#   POOL=configs/vision/clip_vit_b32_tall8.yaml run_task_arith     # the paper's CLIP ViT-B/32 (hub access)
#   run_irrelevance; run_relevance; run_memory                     # the scaling claims, 4 target tasks
# Rows land in outs/<pool name>/results.csv and results.md, scaling points in outs/<pool>_<claim>/.
_DOMAIN=vision
_DEFAULT_POOL=configs/vision/efficientnet_lite0_20tasks_v2.yaml
_DEFAULT_TARGETS="mnist fashion_mnist emoji digits"
# shellcheck source=scripts/runners.sh
source "$(dirname "${BASH_SOURCE[0]}")/runners.sh"

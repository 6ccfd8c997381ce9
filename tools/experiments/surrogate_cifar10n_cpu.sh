#!/usr/bin/env bash
# CE vs L2RW vs the surrogate (meta-reweighting without the bi-level step) on full CIFAR-10 with
# CIFAR-10N "worse" labels (40.2 % noisy) and 40 % symmetric noise in the short CPU setting
# (training/configs/cifar10_cpu_short.yaml: tiny CNN, 10 epochs, the 1,000-image clean subset held
# out of every method's training set; surrogate: 30 clean CE steps per epoch as in the paper's code,
# alpha0 phase until the first lr milestone, epoch 5). The CE runs are shared with ido_cifar10_cpu.sh.
# Resumable: re-running it keeps finished runs and continues interrupted ones.
# Writes runs/cpu-short/<label set>/{ce,surrogate,l2rw} and two tables in RESULTS.md.
#   usage: [SETS="cifar10n-worse sym-0.40-s0"] tools/experiments/surrogate_cifar10n_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/experiments/common.sh
DATA=${1:-data}
RUNS=${2:-runs/cpu-short}
ensure_cifar10 "$DATA" sym-0.40-s0 cifar10n-worse

CONFIG=training/configs/cifar10_cpu_short.yaml
for set in ${SETS:-cifar10n-worse sym-0.40-s0}; do
  common=("data.root=$DATA" "data.label_set=$set")
  train "$RUNS/$set/ce" "$CONFIG" "${common[@]}" method.name=ce
  train "$RUNS/$set/surrogate" "$CONFIG" "${common[@]}" method.name=surrogate \
    method.params.val_steps=30 method.params.skip_epochs=0 method.params.alpha0_epochs=5
  train "$RUNS/$set/l2rw" "$CONFIG" "${common[@]}" method.name=l2rw
  $PY tools/report.py "$RUNS/$set"/ce "$RUNS/$set"/l2rw "$RUNS/$set"/surrogate \
    --title "CIFAR-10 $set, reweighting, short CPU setting (tiny CNN, 10 epochs, 1,000 clean held out)" \
    --command "tools/experiments/surrogate_cifar10n_cpu.sh" \
    --paper "no readable numbers (arXiv 2510.12209 claims SOTA on CIFAR-10N; ResNet-34, 200 epochs)" \
    --append RESULTS.md
done

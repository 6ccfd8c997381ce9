#!/usr/bin/env bash
# CE vs L2RW vs the surrogate (meta-reweighting without the bi-level step) on full CIFAR-10 with
# CIFAR-10N "worse" labels (40.2 % noisy) and 40 % symmetric noise, CPU-sized
# (training/configs/cifar10_cpu_small_{ce_heldout,l2rw,surrogate}.yaml: tiny CNN, 24 epochs, the
# 2,000-image clean subset held out of every method's training set). Roughly, on 2 cores: CE ~13 min,
# the surrogate ~1.2x CE, L2RW ~3x CE a run (see BENCHMARKS.md "Reweighting cost"), 6 runs in all.
# Writes runs/surrogate-cpu/<label set>/<method> and two tables in RESULTS.md.
#   usage: tools/experiments/surrogate_cifar10n_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/surrogate-cpu}
SHARED=${SHARED:-../shared/data/cifar10}
LABELS="$DATA/cifar10/labels/train"

if [ ! -f "$DATA/cifar10/manifest.json" ]; then
  $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$DATA" \
    --label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n "$SHARED/CIFAR-10_human.pt" --clean-subset 2000
fi
# an existing conversion (e.g. from alr_cifar10_sym40_cpu.sh) gets what it lacks, shards untouched
for set in sym-0.40-s0 cifar10n-worse; do
  if [ ! -f "$LABELS/$set.npy" ]; then
    $PY tools/make_shards.py --add-label-set --name cifar10 --out "$DATA" --label-set "$set" \
      --cifar-n "$SHARED/CIFAR-10_human.pt"
  fi
done
if [ ! -f "$LABELS/masks/clean-subset-2000-s0.npy" ]; then
  $PY tools/make_shards.py --add-label-set --name cifar10 --out "$DATA" --clean-subset 2000
fi

CONFIGS=training/configs
for set in cifar10n-worse sym-0.40-s0; do
  common=("data.root=$DATA" "out_dir=$RUNS/$set" "data.label_set=$set")
  $PY training/run.py --config "$CONFIGS/cifar10_cpu_small_ce_heldout.yaml" "${common[@]}" run_name=ce
  $PY training/run.py --config "$CONFIGS/cifar10_cpu_small_surrogate.yaml" "${common[@]}" run_name=surrogate
  $PY training/run.py --config "$CONFIGS/cifar10_cpu_small_l2rw.yaml" "${common[@]}" run_name=l2rw
  $PY tools/report.py "$RUNS/$set"/ce "$RUNS/$set"/l2rw "$RUNS/$set"/surrogate \
    --title "CIFAR-10 $set, reweighting, CPU setting (tiny CNN, 24 epochs, clean subset 2,000 held out)" \
    --command "tools/experiments/surrogate_cifar10n_cpu.sh" \
    --paper "no readable numbers (arXiv 2510.12209 claims SOTA on CIFAR-10N; ResNet-34, 200 epochs)" \
    --append RESULTS.md
done

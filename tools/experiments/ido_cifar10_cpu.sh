#!/usr/bin/env bash
# CE vs IDO on full CIFAR-10 with 40 % symmetric noise and with CIFAR-10N "worse" labels (40.2 % noisy),
# CPU-sized (training/configs/cifar10_cpu_small.yaml and cifar10_cpu_small_ido.yaml: tiny CNN, 24 epochs;
# IDO stage 1 = 8 epochs of CE + counting, stage 2 = 16 epochs of the two-view loss). Roughly, on 2 cores:
# CE ~13 min a run, IDO ~1.7x CE (a stage-2 step is ~2.1x a CE step, BENCHMARKS.md "IDO cost"); 4 runs.
# Needs the trainer to build the training loader with the method's views (make_loader(..., views=...)).
# Writes runs/ido-cpu/<label set>/<method> and one table per label set in RESULTS.md.
#   usage: tools/experiments/ido_cifar10_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/ido-cpu}
SHARED=${SHARED:-../shared/data/cifar10}
LABELS="$DATA/cifar10/labels/train"

if [ ! -f "$DATA/cifar10/manifest.json" ]; then
  $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$DATA" \
    --label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n "$SHARED/CIFAR-10_human.pt"
fi
# an existing conversion gets the label sets it lacks, shards untouched
for set in sym-0.40-s0 cifar10n-worse; do
  if [ ! -f "$LABELS/$set.npy" ]; then
    $PY tools/make_shards.py --add-label-set --name cifar10 --out "$DATA" --label-set "$set" \
      --cifar-n "$SHARED/CIFAR-10_human.pt"
  fi
done

CONFIGS=training/configs
for set in sym-0.40-s0 cifar10n-worse; do
  common=("data.root=$DATA" "out_dir=$RUNS/$set" "data.label_set=$set")
  $PY training/run.py --config "$CONFIGS/cifar10_cpu_small.yaml" "${common[@]}" run_name=ce method.name=ce
  $PY training/run.py --config "$CONFIGS/cifar10_cpu_small_ido.yaml" "${common[@]}" run_name=ido
  $PY tools/report.py "$RUNS/$set"/ce "$RUNS/$set"/ido \
    --title "CIFAR-10 $set, IDO, CPU setting (tiny CNN, 24 epochs, stages 8/16)" \
    --command "tools/experiments/ido_cifar10_cpu.sh" \
    --paper "IDO 96.9 (sym-40, pretrained ResNet-50, 5+10 epochs); no CIFAR-10N worse number in the spec" \
    --append RESULTS.md
done

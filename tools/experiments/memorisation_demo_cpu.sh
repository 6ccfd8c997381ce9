#!/usr/bin/env bash
# Every method in the CPU memorisation regime (training/configs/demo_memorisation_cpu.yaml: the
# shipped 5,000-image subset, tiny CNN, no augmentation, 50 epochs, lr 0.05 / 10 at epoch 10, the
# 100-image clean subset held out of every run), on 40 % symmetric noise and CIFAR-10N "worse".
# Resumable: finished runs are kept, interrupted ones continue. Two copies may share the runs root
# (the run locks of common.sh), e.g. one per label set with OMP_NUM_THREADS=1 each:
#   SETS=sym-0.40-s0 tools/experiments/memorisation_demo_cpu.sh & SETS=cifar10n-worse tools/experiments/...
# Writes runs/memorisation/<label set>/<run> and one table per label set in RESULTS.md.
#   usage: [SETS="..."] [ONLY="ce alr ..."] tools/experiments/memorisation_demo_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/experiments/common.sh
DATA=${1:-data}
RUNS=${2:-runs/memorisation}
SETS=${SETS:-sym-0.40-s0 cifar10n-worse}
CONFIG=training/configs/demo_memorisation_cpu.yaml

if [ ! -f "$DATA/cifar10-demo/labels/train/masks/clean-subset-100-s0.npy" ]; then
  if [ ! -f "$DATA/cifar10-demo/manifest.json" ]; then
    $PY tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out "$DATA" \
      --label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n tools/demo/cifar10n-demo.npz --clean-subset 100
  else
    $PY tools/make_shards.py --add-label-set --name cifar10-demo --out "$DATA" --clean-subset 100
  fi
fi

# run name -> method overrides (soft-label warm-up 12 epochs: just past CE's peak, before it memorises)
declare -A RUN=(
  [ce]="method.name=ce"
  [selc]="method.name=alr method.params.lam=0.0 method.params.warmup_epochs=12 method.params.alpha=0.9"
  [alr]="method.name=alr method.params.lam=0.2 method.params.warmup_epochs=12 method.params.alpha=0.9"
  [l2rw]="method.name=l2rw"
  [surrogate]="method.name=surrogate"
  [gce]="method.name=gce"
  [sce]="method.name=sce"
  [elr]="method.name=elr"
  [coteaching]="method.name=coteaching"  # + forget_rate = the label set's realised noise rate (below)
)
ORDER=(ce selc alr l2rw surrogate gce sce elr coteaching)
# realised wrong-label fraction of the demo subset's label sets (tools/demo/README.md, RESULTS.md)
declare -A NOISE=([sym-0.40-s0]=0.362 [cifar10n-worse]=0.418)
ONLY=${ONLY:-${ORDER[*]}}

for set in $SETS; do
  done_runs=()
  for name in "${ORDER[@]}"; do
    if [[ " $ONLY " == *" $name "* ]]; then
      # shellcheck disable=SC2086
      extra=()
      if [ "$name" = coteaching ]; then extra=("method.params.forget_rate=${NOISE[$set]}"); fi
      train "$RUNS/$set/$name" "$CONFIG" "data.root=$DATA" "data.label_set=$set" ${RUN[$name]} "${extra[@]}"
    fi
    if [ -f "$RUNS/$set/$name/results.json" ]; then done_runs+=("$RUNS/$set/$name"); fi
  done
  $PY tools/report.py "${done_runs[@]}" \
    --title "Memorisation regime: CIFAR-10 demo subset $set (tiny CNN, no augmentation, 50 epochs, 100 clean held out)" \
    --command "tools/experiments/memorisation_demo_cpu.sh" \
    --paper "the published orderings are against CE in each method's own setting; see the notes below" \
    --append RESULTS.md
done

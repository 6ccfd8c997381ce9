#!/usr/bin/env bash
# Every method in the CPU memorisation regime (training/configs/demo_memorisation_cpu.yaml: the
# shipped 5,000-image subset, tiny CNN, no augmentation, 50 epochs, lr 0.05 / 10 at epoch 10, the
# 100-image clean subset held out of every run), on 40 % symmetric noise and CIFAR-10N "worse"
# (SETS=cifar10n-aggre, 9 % noise, is there for the label-issue scoring: label_issues_cpu.sh).
# Resumable: finished runs are kept, interrupted ones continue. Two copies may share the runs root
# (the run locks of common.sh), e.g. one per label set with OMP_NUM_THREADS=1 each:
#   SETS=sym-0.40-s0 tools/experiments/memorisation_demo_cpu.sh & SETS=cifar10n-worse tools/experiments/...
# Writes runs/memorisation/<label set>/<run> and one table per label set in RESULTS.md.
#   usage: [SETS="..."] [ONLY="ce alr ..." (run in this order)] tools/experiments/memorisation_demo_cpu.sh [DATA_ROOT] [RUNS_ROOT]
# The table of a label set is rewritten in RESULTS.md after every run, so a partial sweep still reports.
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
      --label-set sym-0.40-s0 --label-set cifar10n-worse --label-set cifar10n-aggre \
      --cifar-n tools/demo/cifar10n-demo.npz --clean-subset 100
  else
    $PY tools/make_shards.py --add-label-set --name cifar10-demo --out "$DATA" --clean-subset 100
  fi
fi
if [ ! -f "$DATA/cifar10-demo/labels/train/cifar10n-aggre.npy" ]; then  # added after the first sweeps
  $PY tools/make_shards.py --add-label-set --name cifar10-demo --out "$DATA" --label-set cifar10n-aggre \
    --cifar-n tools/demo/cifar10n-demo.npz
fi

# run name -> method overrides (soft-label warm-up and IDO's stage 1: 12 epochs, just past CE's peak,
# before it memorises)
declare -A RUN=(
  [ce]="method.name=ce"
  [selc]="method.name=alr method.params.lam=0.0 method.params.warmup_epochs=12 method.params.alpha=0.9"
  [alr]="method.name=alr method.params.lam=0.2 method.params.warmup_epochs=12 method.params.alpha=0.9"
  [ido]="method.name=ido method.params.stage1_epochs=12"
  [ebomlc]="method.name=ebomlc"
  [surrogate]="method.name=surrogate"
  [l2rw]="method.name=l2rw"
  [mlc]="method.name=mlc"
  [mlc_d]="method.name=mlc_d"
  [gce]="method.name=gce"
  [sce]="method.name=sce"
  [elr]="method.name=elr"
  # ELR+'s weight averaging ramps over 40,000 of the paper's 78,200 steps; the same half of this run's 3,850
  [elr_plus]="method.name=elr_plus method.params.ema_step=2000"
  [coteaching]="method.name=coteaching"  # + forget_rate = the label set's realised noise rate (below)
  [jocor]="method.name=jocor"  # + forget_rate, as Co-teaching
  [sop]="method.name=sop"
  [sop_plus]="method.name=sop_plus"  # its second view augments even with data.augment false, as IDO's strong view
  [mwnet]="method.name=mwnet"
  # lambda_u has no default (the authors choose it per noise level): 25, theirs for the nearest paper setting
  # (CIFAR-10 sym 50 %), as in training/configs/cifar10_dividemix.yaml
  [dividemix]="method.name=dividemix method.params.warmup_epochs=12 method.params.lambda_u=25"
  # the first readings of the corrected methods, beside their authors' forms
  [ido-per_sample]="method.name=ido method.params.stage1_epochs=12 method.params.entropy=per_sample"
  [ebomlc-probs]="method.name=ebomlc method.params.upper_mix=probs"
  [ebomlc-bome]="method.name=ebomlc method.params.w1_grad=bome"
  [ebomlc-alg2]="method.name=ebomlc method.params.main_lower_step=false"
  [ebomlc-clean_in_lower]="method.name=ebomlc method.params.clean_in_lower=true"
  [mlc-noisy_lower]="method.name=mlc method.params.clean_in_lower=false"
  [mlc_d-bome]="method.name=mlc_d method.params.w1_grad=bome"
)
# the seed papers' methods first, then the baselines, then the first readings (the order they run in)
ORDER=(ce selc alr ido ebomlc surrogate gce elr coteaching ebomlc-probs ido-per_sample l2rw mlc sce sop mwnet
       dividemix ebomlc-alg2 ebomlc-bome mlc_d ebomlc-clean_in_lower mlc-noisy_lower jocor elr_plus sop_plus
       mlc_d-bome)
ONLY=${ONLY:-${ORDER[*]}}
# realised wrong-label fraction of the demo subset's label sets (tools/demo/README.md, RESULTS.md)
declare -A NOISE=([sym-0.40-s0]=0.362 [cifar10n-worse]=0.418 [cifar10n-aggre]=0.092)

report() {  # the table of every finished run of label set $1, replacing its earlier version
  local set=$1 done_runs=() name
  for name in "${ORDER[@]}"; do
    if [ -f "$RUNS/$set/$name/results.json" ]; then done_runs+=("$RUNS/$set/$name"); fi
  done
  $PY tools/report.py "${done_runs[@]}" \
    --title "Memorisation regime: CIFAR-10 demo subset $set (tiny CNN, no augmentation, 50 epochs, 100 clean held out)" \
    --command "tools/experiments/memorisation_demo_cpu.sh" --append RESULTS.md > /dev/null
}

for name in $ONLY; do
  [ -n "${RUN[$name]:-}" ] || { echo "unknown run name '$name' in ONLY; known: ${ORDER[*]}" >&2; exit 2; }
done
for set in $SETS; do
  for name in $ONLY; do
    extra=()
    if [ "$name" = coteaching ] || [ "$name" = jocor ]; then extra=("method.params.forget_rate=${NOISE[$set]}"); fi
    # shellcheck disable=SC2086
    train "$RUNS/$set/$name" "$CONFIG" "data.root=$DATA" "data.label_set=$set" ${RUN[$name]} "${extra[@]}"
    report "$set"
  done
done

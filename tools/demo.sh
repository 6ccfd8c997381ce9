#!/usr/bin/env bash
# `make demo`: CE and SELC, one after the other, in the CPU memorisation regime on the shipped
# 5,000-image CIFAR-10 subset with 40 % symmetric noise (training/configs/demo_memorisation_cpu.yaml:
# tiny CNN, no augmentation, lr 0.05 / 10 at epoch 10), then one side-by-side table and a PNG of
# both test-accuracy curves. Augmentation is off so that CE memorises the wrong labels within
# minutes on a CPU: CE peaks near epoch 15 and then falls, SELC's refined targets hold it up.
#   usage: tools/demo.sh [DATA_ROOT] [RUN_DIR] [key=value overrides for both runs, e.g. epochs=2 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUN=${2:-runs/demo-$(date +%Y%m%d-%H%M%S)}
shift $(( $# < 2 ? $# : 2 ))
WARMUP=${WARMUP:-12}  # SELC's CE warm-up, epochs: just before CE starts to memorise

if [ ! -f "$DATA/cifar10-demo/manifest.json" ]; then
  $PY tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out "$DATA" \
    --label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n tools/demo/cifar10n-demo.npz --clean-subset 100
elif [ ! -f "$DATA/cifar10-demo/labels/train/masks/clean-subset-100-s0.npy" ]; then
  $PY tools/make_shards.py --add-label-set --name cifar10-demo --out "$DATA" --clean-subset 100
fi

common=(--config training/configs/demo_memorisation_cpu.yaml "data.root=$DATA" "out_dir=$RUN" epochs=40 "$@")
echo "== CE, then SELC (40 epochs each, a few minutes on 2 cores); outputs in $RUN"
$PY training/run.py "${common[@]}" run_name=ce method.name=ce
$PY training/run.py "${common[@]}" run_name=selc method.name=alr method.params.lam=0.0 \
  "method.params.warmup_epochs=$WARMUP"
echo
$PY tools/report.py "$RUN/ce" "$RUN/selc" --title "CE vs SELC where CE memorises (demo subset, sym-40 %)" \
  --plot "$RUN/test_accuracy.png"

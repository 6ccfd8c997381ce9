#!/usr/bin/env bash
# CE, SELC and ALR on full CIFAR-10 with 40 % symmetric noise in the ALR paper's setting (ResNet-34,
# 200 epochs, bf16) on one GPU. Paper: CE 81.88, SELC 91.18, ALR 91.89.
#   usage: tools/experiments/alr_cifar10_sym40_gpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/alr-gpu}
SHARED=${SHARED:-../shared/data/cifar10}

if [ ! -f "$DATA/cifar10/manifest.json" ]; then
  $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$DATA" --label-set sym-0.40-s0
fi
for method in ce selc alr; do
  $PY training/run.py --config "training/configs/cifar10_$method.yaml" "data.root=$DATA" "out_dir=$RUNS" run_name=$method
done
$PY tools/report.py "$RUNS"/ce "$RUNS"/selc "$RUNS"/alr \
  --title "CIFAR-10 sym-40 %, paper setting (ResNet-34, 200 epochs, bf16)" \
  --command "tools/experiments/alr_cifar10_sym40_gpu.sh" --paper "CE 81.88, SELC 91.18, ALR 91.89" --append RESULTS.md

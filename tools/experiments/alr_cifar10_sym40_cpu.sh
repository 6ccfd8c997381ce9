#!/usr/bin/env bash
# CE vs SELC vs ALR on full CIFAR-10 with 40 % symmetric noise, CPU-sized (training/configs/cifar10_cpu_small.yaml:
# tiny CNN, 24 epochs; about 13 minutes a run on 2 cores). Writes runs/alr-cpu/* and the table in RESULTS.md.
#   usage: tools/experiments/alr_cifar10_sym40_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/alr-cpu}
SHARED=${SHARED:-../shared/data/cifar10}

if [ ! -f "$DATA/cifar10/manifest.json" ]; then
  $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$DATA" --label-set sym-0.40-s0
fi
common=(--config training/configs/cifar10_cpu_small.yaml "data.root=$DATA" "out_dir=$RUNS" data.label_set=sym-0.40-s0)
alr=(method.name=alr method.params.warmup_epochs=8 method.params.alpha=0.9)
$PY training/run.py "${common[@]}" run_name=ce method.name=ce
$PY training/run.py "${common[@]}" run_name=selc "${alr[@]}" method.params.lam=0.0
$PY training/run.py "${common[@]}" run_name=alr "${alr[@]}" method.params.lam=0.2
$PY tools/report.py "$RUNS"/ce "$RUNS"/selc "$RUNS"/alr \
  --title "CIFAR-10 sym-40 %, CPU setting (tiny CNN, 24 epochs)" \
  --command "tools/experiments/alr_cifar10_sym40_cpu.sh" --paper "CE 81.88, SELC 91.18, ALR 91.89 (ResNet-34, 200 epochs)" \
  --append RESULTS.md

#!/usr/bin/env bash
# CE vs MLC vs EBOMLC on full CIFAR-10 with 40 % uniform noise (symx: always to another class) and a
# 1,000-image class-balanced clean subset, CPU-sized (training/configs/cifar10_meta_cpu_small.yaml:
# tiny CNN, 24 epochs, 128 noisy + 128 clean images a step). Paper (ResNet-32, 120 epochs): MLC 86.08,
# EBOMLC 89.58. Not timed end to end yet: tools/bench_meta.py puts an EBOMLC step at ~2.5-3x a CE step
# and MLC at ~2-3x EBOMLC, so expect roughly 15 min (CE), 90 min (MLC) and 40 min (EBOMLC) on 2 cores.
# Writes runs/ebomlc-cpu/* and the table in RESULTS.md.
#   usage: tools/experiments/ebomlc_cifar10_uniform40_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/ebomlc-cpu}
SHARED=${SHARED:-../shared/data/cifar10}

if [ ! -f "$DATA/cifar10/manifest.json" ]; then
  $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$DATA" \
    --label-set symx-0.40-s0 --clean-subset 1000
elif ! grep -q '"symx-0.40-s0"' "$DATA/cifar10/manifest.json" || ! grep -q 'clean-subset-1000-s0' "$DATA/cifar10/manifest.json"; then
  echo "error: $DATA/cifar10 lacks symx-0.40-s0 or clean-subset-1000-s0; add them with" >&2
  echo "  $PY tools/make_shards.py --add-label-set --name cifar10 --out $DATA --label-set symx-0.40-s0 --clean-subset 1000" >&2
  exit 2
fi
common=(--config training/configs/cifar10_meta_cpu_small.yaml "data.root=$DATA" "out_dir=$RUNS")
# CE trains on the same 49,000 noisy images (the clean subset is left out) for a like-for-like comparison.
$PY training/run.py "${common[@]}" run_name=ce method.name=ce
$PY training/run.py "${common[@]}" run_name=mlc method.name=mlc
$PY training/run.py "${common[@]}" run_name=ebomlc method.name=ebomlc
$PY tools/report.py "$RUNS"/ce "$RUNS"/mlc "$RUNS"/ebomlc \
  --title "CIFAR-10 uniform-40 % (symx) + 1,000 clean, CPU setting (tiny CNN, 24 epochs)" \
  --command "tools/experiments/ebomlc_cifar10_uniform40_cpu.sh" \
  --paper "MLC 86.08, EBOMLC 89.58 (ResNet-32, 120 epochs, 3 seeds)" \
  --append RESULTS.md

#!/usr/bin/env bash
# CE vs SELC vs ALR on the shipped 5,000-image CIFAR-10 subset with 40 % symmetric noise and a
# ResNet-32 (0.47 M parameters, 5x the tiny CNN on a tenth of the data), meant to let CE memorise the
# wrong labels after the lr drop (see RESULTS.md for what happened). Writes RESULTS.md rows.
#   usage: tools/experiments/alr_demo_memorisation_cpu.sh [DATA_ROOT] [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${1:-data}
RUNS=${2:-runs/alr-demo-mem}

if [ ! -f "$DATA/cifar10-demo/manifest.json" ]; then
  $PY tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out "$DATA" --label-set sym-0.40-s0
fi
common=(--config training/configs/demo_cpu.yaml "data.root=$DATA" "out_dir=$RUNS" model.name=resnet32 epochs=50
        optim.lr=0.05 optim.schedule=multistep "optim.milestones=[30,40]" data.batch_size=64)
alr=(method.name=alr method.params.warmup_epochs=15 method.params.alpha=0.9)
$PY training/run.py "${common[@]}" run_name=ce method.name=ce
$PY training/run.py "${common[@]}" run_name=selc "${alr[@]}" method.params.lam=0.0
$PY training/run.py "${common[@]}" run_name=alr "${alr[@]}" method.params.lam=0.2
$PY tools/report.py "$RUNS"/ce "$RUNS"/selc "$RUNS"/alr \
  --title "CIFAR-10 demo subset (5,000 train) sym-40 %, ResNet-32, 50 epochs" \
  --command "tools/experiments/alr_demo_memorisation_cpu.sh" --append RESULTS.md

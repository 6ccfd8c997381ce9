#!/usr/bin/env bash
# One GPU check (README "GPU check"): on a machine with a CUDA GPU,
#   1. convert CIFAR-10 (../shared/data/cifar10/cifar10-jpg.tar.gz, or $CIFAR10_ARCHIVE) with sym-40 % labels,
#   2. the loader benchmark in cache mode on the device                      -> loader.md
#   3. the Trainer against a bare torch loop, real against synthetic data    -> trainer.json, trainer.md
#   4. the fast recipes of CE, ALR and SELC at sym-40 % (cifar10_fast_*.yaml) -> runs.json, runs.md
# and writes those 5 files plus gpu_check.log into one folder (at most 8 files; run folders go to $WORK).
#   usage: [METHODS="ce alr selc"] tools/gpu_check.sh [--dry-run] [OUT_DIR]    OUT_DIR default: $OUT, else
#   runs/gpu-check-<time>. runs.md/.json are rewritten after each recipe, so a check cut off by a time limit
#   keeps what finished (CE and ALR first: the comparison the recipes exist for).
# --dry-run: every stage for a few steps on the CPU, on the shipped demo subset (tools/demo/cifar10-demo.tar.gz),
# with a tiny CNN and no compile (the CPU compile is tested apart, tests/test_gpu_options.py).
# Needs the package's dependencies (pip install -e .): numba, zarr, torchvision, accelerate, pydantic are
# imported unconditionally; nvidia-dali and webdataset are not needed (cache mode, stream mode unused).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR=${1:-${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}}
METHODS=${METHODS:-ce alr selc}  # the fast recipes to run, in this order
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT_DIR" "$WORK"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1

stage() { echo; echo "== $* ($(date +%T))"; }

stage "preflight"
$PY - "$DRY" <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "torchvision", "numba", "zarr", "accelerate", "pydantic", "yaml", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: install the project (pip install -e .) into this environment")
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: run on a GPU machine, or pass --dry-run for the CPU rehearsal")
EOF

if [ "$DRY" = 1 ]; then
  ARCHIVE=tools/demo/cifar10-demo.tar.gz NAME=cifar10-demo
  LOADER=(--batch-size 64 --warmup 0 --repeats 1 --num-threads 2)
  BENCH=(--steps 3 --warmup 1 --repeats 1)
  SMALL=(cpu=true compile=false model.name=tiny_cnn mixed_precision=no data.batch_size=32 data.eval_batch_size=250
         data.num_threads=2)
  RUNS=("${SMALL[@]}" epochs=2 optim.warmup_epochs=0 data.epoch_samples=128)
  REFINE=(method.params.warmup_epochs=1)
else
  ARCHIVE=${CIFAR10_ARCHIVE:-../shared/data/cifar10/cifar10-jpg.tar.gz} NAME=cifar10
  LOADER=(--batch-size 512 --warmup 1 --repeats 5)
  BENCH=(--steps 50 --warmup 1 --repeats 3)
  SMALL=() RUNS=() REFINE=()
fi
DATA=${DATA:-$WORK/data}
COMMON=("data.root=$DATA" "data.name=$NAME")

stage "convert $ARCHIVE -> $DATA/$NAME"
if [ ! -f "$DATA/$NAME/manifest.json" ]; then
  $PY tools/make_shards.py --source "$ARCHIVE" --name "$NAME" --out "$DATA" --label-set sym-0.40-s0 --no-progress
fi

stage "loader benchmark, cache mode"
$PY tools/bench_loader.py --dataset "$DATA/$NAME" --modes cache "${LOADER[@]}" | tee "$OUT_DIR/loader.md"

stage "trainer vs bare loop, real vs synthetic data"
$PY tools/bench_trainer.py --config training/configs/cifar10_fast_ce.yaml "${BENCH[@]}" --out "$OUT_DIR" \
  --work "$WORK" "${COMMON[@]}" "${SMALL[@]}"

summarise() {  # runs.md and runs.json from the recipes finished so far (a cut-off check keeps them);
  # each written beside and then renamed, so a check killed mid-write keeps the previous complete file
  $PY tools/report.py "$@" \
    --title "Fast recipes, CIFAR-10 sym-40 % (tools/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry-run'))" \
    > "$OUT_DIR/runs.md.part"
  mv "$OUT_DIR/runs.md.part" "$OUT_DIR/runs.md"
  $PY - "$OUT_DIR/runs.json" "$@" <<'EOF'
import json, sys
from pathlib import Path
runs = {}
for run_dir in map(Path, sys.argv[2:]):
    results = json.loads((run_dir / "results.json").read_text())
    runs[run_dir.name] = {k: v for k, v in results.items() if k != "history"}
    runs[run_dir.name]["last_epoch"] = results["history"][-1]
part = Path(sys.argv[1] + ".part")
part.write_text(json.dumps(runs, indent=2) + "\n")
part.replace(sys.argv[1])
EOF
}

finished=()
for method in $METHODS; do
  stage "fast recipe: $method"
  extra=()
  [ "$method" != ce ] && extra=("${REFINE[@]}")
  $PY training/run.py --config "training/configs/cifar10_fast_$method.yaml" "${COMMON[@]}" "out_dir=$WORK/runs" \
    "run_name=$method" "${RUNS[@]}" "${extra[@]}"
  finished+=("$WORK/runs/$method")
  summarise "${finished[@]}"
done
cat "$OUT_DIR/runs.md"
echo "results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"

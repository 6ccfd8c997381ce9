# Shared by the experiment scripts (source it): the Python to use, the data preparation and a
# resumable `train` that skips a finished run, continues an interrupted one and starts a new one.
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/data/cifar10}

# ensure_cifar10 DATA LABEL_SET... : convert CIFAR-10 once, then add the label sets and the
# 1,000-image clean subset it lacks (shards untouched).
ensure_cifar10() {
  local data=$1; shift
  if [ ! -f "$data/cifar10/manifest.json" ]; then
    $PY tools/make_shards.py --source "$SHARED/cifar10-jpg.tar.gz" --name cifar10 --out "$data" \
      --cifar-n "$SHARED/CIFAR-10_human.pt" --clean-subset 1000 $(printf -- '--label-set %s ' "$@")
  fi
  local set
  for set in "$@"; do
    if [ ! -f "$data/cifar10/labels/train/$set.npy" ]; then
      $PY tools/make_shards.py --add-label-set --name cifar10 --out "$data" --label-set "$set" \
        --cifar-n "$SHARED/CIFAR-10_human.pt"
    fi
  done
  if [ ! -f "$data/cifar10/labels/train/masks/clean-subset-1000-s0.npy" ]; then
    $PY tools/make_shards.py --add-label-set --name cifar10 --out "$data" --clean-subset 1000
  fi
}

# train RUN_DIR CONFIG OVERRIDES... : one training run into RUN_DIR (= out_dir/run_name). A lock
# (RUN_DIR.lock) lets two scripts share a runs root: a run another script is training is skipped
# (the table that needs it is then written by whichever script runs last).
train() {
  local dir=$1 config=$2 lock; shift 2
  local args=(--config "$config" "out_dir=$(dirname "$dir")" "run_name=$(basename "$dir")" "$@")
  mkdir -p "$(dirname "$dir")"
  exec {lock}>"$dir.lock"
  if ! flock -n "$lock"; then
    echo "== $dir is being trained by another script (lock $dir.lock held): skipped here"
    exec {lock}>&-
    return 0
  fi
  if [ -f "$dir/results.json" ]; then
    echo "== $dir finished already: kept"
  elif [ -d "$dir/checkpoints" ] && [ -n "$(ls -A "$dir/checkpoints")" ]; then
    echo "== $dir: resuming"; $PY training/run.py --resume "${args[@]}"
  else
    echo "== $dir"; $PY training/run.py "${args[@]}"
  fi
  exec {lock}>&-
}

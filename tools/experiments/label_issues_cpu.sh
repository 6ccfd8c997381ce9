#!/usr/bin/env bash
# Label-issue detection of the finished CPU memorisation runs (memorisation_demo_cpu.sh): each run's
# in-sample pred_probs exported to RUN/label_issues/, scored against the clean labels (precision,
# recall, AUROC, suggested-label accuracy) for the run's own argmax, cleanlab's confident learning
# on the same pred_probs and the method's soft labels where it keeps them; one table in RESULTS.md.
# Then the held-out table: the runs named in FOLD_RUNS (<label set>/<run> under RUNS_ROOT; default:
# CE, cleanlab's own recipe, on the two CIFAR-10N label sets) scored with FOLDS-fold predictions
# (default 4), each from a fold run of the run's config that never saw the sample: FOLDS trainings
# of 3/4 of a run each, per run, resumable (fold runs under RUN/label_issues-<K>fold/folds/). The in-sample part is inference only (seconds a run). Unfinished
# runs (no results.json) are left out, so re-run it later.
#   usage: [FOLDS=4] [FOLD_RUNS="cifar10n-worse/ce ..."] tools/experiments/label_issues_cpu.sh [RUNS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/experiments/common.sh
RUNS=${1:-runs/memorisation}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # beside running experiments on 2 cores

done_runs=()
for results in "$RUNS"/*/*/results.json; do
  [ -f "$results" ] && done_runs+=("$(dirname "$results")")
done
if [ ${#done_runs[@]} -eq 0 ]; then
  echo "no finished run under $RUNS (none has results.json yet)"; exit 1
fi
$PY tools/score_label_issues.py "${done_runs[@]}" --append RESULTS.md

fold_runs=()
for run in ${FOLD_RUNS:-cifar10n-worse/ce cifar10n-aggre/ce}; do
  if [ -f "$RUNS/$run/results.json" ]; then fold_runs+=("$RUNS/$run"); fi
done
if [ ${#fold_runs[@]} -gt 0 ]; then
  $PY tools/score_label_issues.py "${fold_runs[@]}" --folds "${FOLDS:-4}" --append RESULTS.md
fi

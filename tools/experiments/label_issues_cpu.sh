#!/usr/bin/env bash
# Label-issue detection of the finished CPU memorisation runs (memorisation_demo_cpu.sh): each run's
# in-sample pred_probs exported to RUN/label_issues/, scored against the clean labels (precision,
# recall, AUROC, suggested-label accuracy) for the run's own argmax, cleanlab's confident learning
# on the same pred_probs and the method's soft labels where it keeps them; one table in RESULTS.md.
# Inference only (seconds a run); unfinished runs (no results.json) are left out, so re-run it later.
#   usage: tools/experiments/label_issues_cpu.sh [RUNS_ROOT]
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

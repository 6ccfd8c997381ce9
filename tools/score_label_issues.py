"""Score label-issue detection against the clean labels, for finished runs (results.json).

    python tools/score_label_issues.py runs/memorisation/sym-0.40-s0/ce runs/memorisation/sym-0.40-s0/selc \
        --append RESULTS.md
    python tools/score_label_issues.py runs/memorisation/cifar10n-worse/ce --folds 4 --append RESULTS.md

For each run: tools/find_label_issues.py exports its in-sample pred_probs (final checkpoint) to
RUN/label_issues/ (with --folds K: held-out pred_probs from K fold runs of the run's config, to
RUN/label_issues-Kfold/, in a table of their own), then every ranking is scored on the training split:
  pred_probs argmax   flagged: predicted class != given label; score: self-confidence p[y]
  cleanlab            flagged: cleanlab.filter.find_label_issues(labels, pred_probs) (confident learning);
                      score: cleanlab.rank.get_label_quality_scores (self-confidence by default)
  store <name>        a method's own (N, K) soft labels: flagged: argmax != given; score: row[y] / row sum
                      (in-sample tables only: the store does not change with the predictions)
Columns: flagged samples; precision and recall of the flags for the wrong given labels (given != clean);
AUROC of the score for them; and the accuracy of the suggested label (the argmax) on the flagged
samples whose label is wrong. Inference only: set OMP_NUM_THREADS=1 beside running experiments.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from find_label_issues import main as export_label_issues  # noqa: E402
from report import load_results, method_label, upsert_section  # noqa: E402
from training.evaluation import auroc  # noqa: E402
from training.outputs import hardware, write_atomic  # noqa: E402

TITLE = "Label issues: CPU memorisation regime (in-sample predictions of each run's final checkpoint)"
FOLDS_TITLE = "Label issues: CPU memorisation regime ({k}-fold held-out predictions of each run's config)"
PROVENANCE = {  # the caption's word on where the predictions come from, by whether they are held out
    False: "In-sample: each model trained on these labels, so a run that memorised them (CE) flags few; "
           "`tools/find_label_issues.py --folds K` gives held-out ones.",
    True: "Held out: every sample predicted by the fold run that never saw it (same config, the fold's "
          "samples excluded), the cleanlab way; fold runs under RUN/label_issues-Kfold/folds/.",
}


def score(flagged: np.ndarray, quality: np.ndarray, suggested: np.ndarray, wrong: np.ndarray,
          clean: np.ndarray) -> dict:
    hits = flagged & wrong
    return {
        "flagged": int(flagged.sum()),
        "precision": hits.sum() / max(flagged.sum(), 1),
        "recall": hits.sum() / max(wrong.sum(), 1),
        "auroc": auroc(-quality, wrong),
        "suggested_acc": float((suggested[hits] == clean[hits]).mean()) if hits.any() else float("nan"),
    }


def rankings(run_dir: Path, folds: int | None) -> tuple[list[tuple[str, dict]], dict]:
    """[(ranking name, scores)] of one run (its in-sample predictions, or K-fold held-out ones), and its
    results.json."""
    from cleanlab.rank import get_label_quality_scores

    from training.label_issues import EXPORT_DIR, load_run

    out = run_dir / (f"{EXPORT_DIR}-{folds}fold" if folds else EXPORT_DIR)
    held_out = ["--folds", str(folds)] if folds else []
    if export_label_issues([str(run_dir), "--rule", "cleanlab", "--out", str(out), *held_out]) != 0:
        raise RuntimeError(f"{run_dir}: the export failed (see above)")
    probs, labels = np.load(out / "pred_probs.npy"), np.load(out / "labels.npy")
    results = load_results(run_dir)
    run = load_run(run_dir)
    clean = run.dataset.labels(run.config.data.train_split, "clean")
    wrong = labels != clean
    suggested = probs.argmax(axis=1)
    rows = [("pred_probs argmax", score(suggested != labels, np.load(out / "label_quality.npy"), suggested, wrong, clean)),
            ("cleanlab", score(np.load(out / "label_issues.npy"), get_label_quality_scores(labels, probs),
                               suggested, wrong, clean))]
    n, k = probs.shape
    for name, arr in ([] if folds else run.arrays.items()):
        if arr.shape == (n, k):
            soft = arr / np.maximum(arr.sum(axis=1, keepdims=True), 1e-12)
            argmax = soft.argmax(axis=1)
            rows.append((f"store {name}", score(argmax != labels, soft[np.arange(n), labels], argmax, wrong, clean)))
    return rows, results


def table(runs: list[Path], folds: int | None) -> str:
    lines = ["| label set | run | method | wrong labels | ranking | flagged | precision | recall | AUROC | "
             "suggested label acc |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for run_dir in runs:
        rows, results = rankings(run_dir, folds)
        noise = results.get("label_set_noise_rate")
        for name, s in rows:
            lines.append(f"| {results['label_set']} | {results['run']} | {method_label(results)} | "
                         f"{'-' if noise is None else f'{100 * noise:.1f} %'} | {name} | {s['flagged']} | "
                         f"{100 * s['precision']:.1f} | {100 * s['recall']:.1f} | {s['auroc']:.3f} | "
                         f"{100 * s['suggested_acc']:.1f} |")
    return "\n".join(lines)


def hardware_line(folds: int | None) -> str:
    """Fold runs train on this machine (name it); in-sample scoring is inference on the runs' checkpoints."""
    if not folds:
        return "CPU inference only"
    hw = hardware(num_processes=1)
    return f"fold runs trained on {hw['cpu']}, {hw['cpu_cores']} cores, {', '.join(hw['gpus']) or 'no GPU'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (with results.json)")
    parser.add_argument("--append", type=Path, help="upsert the section into this markdown file (RESULTS.md)")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="score K-fold held-out predictions (trains K fold runs of each run's config; "
                             "finished fold runs are reused)")
    parser.add_argument("--command", default="tools/experiments/label_issues_cpu.sh",
                        help="the command line recorded under the table")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "results.json").is_file()]
    if missing:
        print(f"error: not finished (no results.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.folds is not None and args.folds < 2:
        print("error: --folds needs K >= 2", file=sys.stderr)
        return 2
    title = FOLDS_TITLE.format(k=args.folds) if args.folds else TITLE
    text = (f"## {title}\n\n{table(args.runs, args.folds)}\n\n"
            "Precision/recall: of the flagged samples, the share whose given label is wrong / of the wrong labels, "
            "the share flagged; AUROC: of the ranking score for the wrong labels; suggested label acc: the argmax "
            f"equals the clean label, over flagged wrong labels. {PROVENANCE[bool(args.folds)]}\n"
            f"Hardware: {hardware_line(args.folds)}; {date.today().isoformat()}.\n"
            f"Command: `{args.command}`\n")
    print(text)
    if args.append:  # one quick read-modify-write: an experiment script rewrites this file between its runs
        existing = args.append.read_text() if args.append.exists() else "# Results\n\n"
        write_atomic(args.append, upsert_section(existing, text, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())

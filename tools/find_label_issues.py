"""Find suspected label errors of a run's training split (cleanlab's layouts; training/label_issues.py).

    python tools/find_label_issues.py runs/demo/ce                     # latest checkpoint, in-sample
    python tools/find_label_issues.py runs/demo/ce --epoch 12          # a kept checkpoint
    python tools/find_label_issues.py runs/demo/ce --folds 4           # out-of-sample: 4 fold runs, then export

Writes pred_probs.npy [N, K], labels.npy, label_quality.npy, label_issues.npy, a ranked label_issues.csv,
label_issues.png and manifest.json to --out (default RUN/label_issues). Without --folds the
predictions are in-sample (the model trained on these very labels and has fitted some of the wrong
ones), so fewer errors are flagged than a held-out model would flag; --folds K trains K runs of the
run's config, each without one fold, and predicts every sample with the model that never saw it.
Then, e.g.:  cleanlab.filter.find_label_issues(np.load("labels.npy"), np.load("pred_probs.npy"))
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.errors import UserError  # noqa: E402
from pipeline.format.dataset import Dataset  # noqa: E402
from training import label_issues as li  # noqa: E402
from training.config import Config  # noqa: E402
from training.run_setup import loader_args  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="find_label_issues.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_argument_group("which run")
    which.add_argument("run", type=Path, help="a run directory (config.yaml, checkpoints/, state.zarr/)")
    which.add_argument("--epoch", type=int, help="the checkpoint of this epoch (default: the latest)")
    which.add_argument("--data-root", help="replaces the run's data.root (a run made in another directory)")
    how = parser.add_argument_group("how")
    how.add_argument("--folds", type=int, default=None, metavar="K",
                     help="out-of-sample predictions from K runs of the run's config, each without one fold "
                          "(trains K models: as long as K runs)")
    how.add_argument("--rule", default="auto", choices=["auto", "cleanlab", "argmax"],
                     help="flag rule: cleanlab's confident learning, or predicted class != given label "
                          "(auto: cleanlab where installed)")
    how.add_argument("--out", type=Path, help="output folder (default: RUN/label_issues; files overwritten)")
    return parser


def cross_validated_probs(config: Config, out_dir: Path, folds: int) -> np.ndarray:
    """(N, K) out-of-sample pred_probs: for each fold a run of the same config trained without it (the
    trainer's `exclude`), predicting that fold. Fold runs live in out_dir/folds/fold-F; a finished one
    is reused, an interrupted one resumed."""
    from training.trainer import Trainer

    dataset = Dataset(Path(config.data.root) / config.data.name)
    labels = dataset.labels(config.data.train_split, config.data.label_set)
    probs = np.zeros((len(labels), dataset.num_classes), dtype=np.float32)
    for f, held_out in enumerate(li.fold_masks(labels, folds, config.seed)):
        fold_cfg = config.model_copy(update={
            "out_dir": str(out_dir / "folds"), "run_name": f"fold-{f}", "export_label_issues": False,
            "tracking": config.tracking.model_copy(update={"backend": "none"})})
        fold_dir = out_dir / "folds" / f"fold-{f}"
        if not (fold_dir / "results.json").is_file():
            resume = any((fold_dir / "checkpoints").glob("epoch-*"))
            Trainer(fold_cfg, resume=resume, exclude=held_out).fit()
        run = li.load_run(fold_dir)
        fold_probs = li.predict_split(run.method, run.models, run.dataset, config.data.train_split,
                                      loader_args(config, run.accelerator), config.data.eval_batch_size,
                                      run.accelerator)
        probs[held_out] = fold_probs[held_out]
    return probs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.folds is not None and args.folds < 2:
        print("error: --folds needs K >= 2", file=sys.stderr)
        return 2

    out = args.out or args.run / li.EXPORT_DIR
    try:
        run = li.load_run(args.run, args.epoch, args.data_root)
        split = run.config.data.train_split
        source = {"run": str(args.run), "checkpoint": run.checkpoint.name}
        if args.folds:
            probs = cross_validated_probs(run.config, out, args.folds)
            source["folds"] = args.folds
        else:
            probs = li.predict_split(run.method, run.models, run.dataset, split, loader_args(run.config, run.accelerator),
                                     run.config.data.eval_batch_size, run.accelerator)
        labels = run.dataset.labels(split, run.config.data.label_set)
        manifest = li.export(out, probs, labels, run.dataset, split, run.arrays, loader_args(run.config,
                             run.accelerator)["transform"], in_sample=not args.folds, rule=args.rule, source=source)
    except (UserError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.run} ({run.checkpoint.name}): {manifest['flagged']} of {manifest['num_samples']} labels flagged "
          f"by {manifest['flag_rule']}; predictions {manifest['pred_probs']}")
    if not args.folds:
        print("note: in-sample predictions under-flag the labels the model memorised; --folds K for held-out ones")
    print(f"outputs: {out}/ (label_issues.csv ranked, label_issues.png, pred_probs.npy, labels.npy, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

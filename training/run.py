"""Entry point: train one run.

    python training/run.py --config training/configs/demo_cpu.yaml optim.lr=0.05 epochs=3
    accelerate launch --num_processes 8 training/run.py --config training/configs/cifar10_ce.yaml
    python training/run.py --config ... --resume        # continue the run from its last checkpoint
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import UserError, describe_os_error  # noqa: E402
from training.config import load_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an image classifier on noisy labels with one noisyflow method.",
        epilog="Overrides are dotted keys, e.g. data.label_set=cifar10n-worse optim.lr=0.02 "
               "method.name=ce epochs=5; see README 'Config reference'.",
    )
    parser.add_argument("--config", help="YAML recipe (may derive from a 'base:' recipe)")
    parser.add_argument("--describe-method", metavar="NAME",
                        help="print a method's parameters (type, default, meaning) and exit")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.describe_method:
        from training.methods import describe_method

        try:
            print(describe_method(args.describe_method))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if not args.config:
        parser.error("--config is required (or --describe-method NAME)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level.upper() != "DEBUG":  # Accelerate logs every checkpoint file at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.overrides)
        from training.trainer import Trainer, format_table  # heavy imports after the config is known good

        trainer = Trainer(config, resume=args.resume)
        results = trainer.fit()
    except UserError as err:  # anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        logging.getLogger("run").debug("OSError", exc_info=True)
        print(f"error: {describe_os_error(err, 'out_dir=... (or data.root=...)')}", file=sys.stderr)
        return 1
    if trainer.accelerator.is_main_process:
        print(f"\n{config.resolved_run_name}: {config.method.name} on {config.data.name} / {config.data.label_set}")
        print(format_table(results["history"]))
        print(f"best test acc {results['best_test_acc']:.4f}  last {results['last_test_acc']:.4f}  "
              f"({results['train_seconds']:.0f} s training, {results['images_per_s']:.0f} img/s)")
        print(f"outputs: {trainer.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

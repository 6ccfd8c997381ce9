"""Inspect a run's sample-store snapshots: list versions, summarise arrays, export to .npz.

    python tools/inspect_state.py runs/cifar10-alr                   # versions + summary of CURRENT
    python tools/inspect_state.py runs/cifar10-alr --tag epoch-0050  # a given version
    python tools/inspect_state.py runs/cifar10-alr --export soft.npz --names soft_target
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

from state.reader import StateReader, summarize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspect_state.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("which state")
    where.add_argument("path", help="a run directory holding state.zarr/, or the state.zarr directory")
    where.add_argument("--tag", default=None, help="version to read (default: the one CURRENT names)")
    what = parser.add_argument_group("what to do")
    what.add_argument("--list", action="store_true", help="only list the complete versions")
    what.add_argument("--names", nargs="+", default=None, help="arrays to summarise/export (default: all)")
    what.add_argument("--export", type=Path, default=None,
                      help="write the arrays of the version to this .npz (overwritten if present)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reader = StateReader(args.path)
        versions = reader.versions()
        current = reader.current()
        print(f"state: {reader.path}")
        if not versions:
            print("no complete snapshot yet")
            return 1
        for v in versions:
            when = datetime.datetime.fromtimestamp(v.written_at).isoformat(timespec="seconds")
            mark = "*" if v.tag == current else " "
            print(f" {mark} {v.tag:<24} seq={v.seq:<4} N={v.num_samples:<9} processes={v.num_processes} {when}")
        if args.list:
            return 0
        tag = args.tag or current
        arrays = reader.arrays(tag, names=args.names)
        print(f"\nversion {tag}:")
        print(f"{'name':<20} {'shape':<18} {'dtype':<8} {'min':>10} {'max':>10} {'mean':>10} {'row sum':>10}")
        for row in summarize(arrays):
            row_sum = f"{row['mean_row_sum']:>10.4g}" if "mean_row_sum" in row else f"{'':>10}"
            print(f"{row['name']:<20} {str(row['shape']):<18} {row['dtype']:<8} {row.get('min', float('nan')):>10.4g} "
                  f"{row.get('max', float('nan')):>10.4g} {row.get('mean', float('nan')):>10.4g} {row_sum}")
        if args.export is not None:
            args.export.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.export, **arrays)
            print(f"\nexported {sorted(arrays)} of {tag} to {args.export}")
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

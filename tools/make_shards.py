"""Convert a raw image dataset into noisyflow shards + label sets, or add label sets to one.

Examples:
  # the shipped demo subset, with 40 % symmetric noise and the CIFAR-10N labels of its images
  python tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out data \\
      --label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n tools/demo/cifar10n-demo.npz
  # full CIFAR-10 from the JPEG tree, then add a noisy set later without rewriting shards
  python tools/make_shards.py --source ../shared/data/cifar10/cifar10-jpg.tar.gz --name cifar10 --out data
  python tools/make_shards.py --add-label-set --name cifar10 --out data --label-set asym-0.40-s0
  # CIFAR-100 with the CIFAR-100N human labels
  python tools/make_shards.py --source cifar-100-python.tar.gz --name cifar100 --out data \
      --cifar-n CIFAR-100_human.pt --label-set cifar100n-noisy
  # real-world noisy datasets, each from its official layout (formats are detected; see pipeline/make/sources/)
  python tools/make_shards.py --source clothing1M --name clothing1m --out data --resize-shorter 256
  python tools/make_shards.py --source webvision --name mini-webvision --out data --resize-shorter 256 \
      --imagenet-val ILSVRC2012/val --imagenet-val-labels ILSVRC2012/val.txt
  python tools/make_shards.py --source ANIMAL-10N --name animal10n --out data
  python tools/make_shards.py --source Food-101N_release --food101 food-101 --name food101n --out data \
      --resize-shorter 256
  # your own images with your own noisy labels: a CSV of path,label[,clean_label][,split] rows
  python tools/make_shards.py --source my-images/ --labels labels.csv --name mydata --out data
  # check every file of a converted dataset against its manifest (sha256) and list each bad one
  python tools/make_shards.py --verify cifar10 --out data

A conversion that stops (Ctrl-C, a crash, a full disk) keeps its complete shards in
<out>/.<name>.partial; running the same command again continues from there.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import pipeline  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import UserError, describe_os_error
from pipeline.format import label_sets
from pipeline.format.dataset import Dataset
from pipeline.make import cifar_n
from pipeline.make.convert import ConvertConfig, LabelRequests, add_label_sets, convert, partial_dir
from pipeline.make.sources import FORMATS, resolve_source

log = logging.getLogger("make_shards")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_shards.py",
        description=(
            "Convert a raw dataset into <out>/<name>/: WebDataset shards holding image bytes and the global "
            "sample index, DALI index files, labels/<split>/*.npy label sets indexed by idx, and manifest.json "
            "(sha256 of every file, realised noise rates, transition matrices, provenance). The output appears "
            "only when complete."
        ),
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source")
    src.add_argument("--source", metavar="PATH", help="image tree <root>/<split>/<class>/*.jpg|png as a folder or .tar(.gz); an "
                     "official cifar-10/100-python archive or folder; the root of Clothing1M, WebVision 1.0, "
                     "ANIMAL-10N or Food-101N in its official layout; download:cifar10 / download:cifar100; or, with --labels, "
                     "a folder of images or a file listing image paths")
    src.add_argument("--format", default="auto", choices=FORMATS, help="source format (default: detected)")
    src.add_argument("--splits", metavar="LIST", help="comma-separated splits to convert (default: every split found)")
    src.add_argument("--imagenet-val", type=Path, metavar="DIR",
                     help="webvision: ILSVRC-2012 val folder (flat, or in synset subfolders) -> split imagenet_val")
    src.add_argument("--imagenet-val-labels", type=Path, metavar="FILE",
                     help="webvision: label file of a flat ImageNet val folder: 'ILSVRC2012_val_00000001.JPEG 65' "
                     "lines (0-based ImageNet-1k id in synset order) or LOC_val_solution.csv")
    src.add_argument("--webvision-classes", type=int, metavar="K",
                     help="webvision: keep classes 0..K-1 (default: 50, the mini-WebVision protocol)")
    src.add_argument("--food101", type=Path, metavar="DIR",
                     help="food101n: the food-101 folder (images/, meta/test.txt) that gives the test split")
    src.add_argument("--labels", type=Path, metavar="FILE.csv",
                     help="csv: labels of the images of --source (a folder, or a file listing image paths): a header "
                     "row naming path (or key), label, and optionally clean_label and split; labels are class names or "
                     "indices (see pipeline/make/sources/csv_labels.py)")
    src.add_argument("--classes", type=Path, metavar="FILE",
                     help="csv: class names, one per line, in label order (default: the sorted set of the CSV's "
                     "names, or 0..max when the labels are indices)")
    src.add_argument("--cache-dir", metavar="DIR", default=str(Path.home() / ".cache" / "noisyflow"),
                     help="where download: sources are kept (default: %(default)s)")

    out = p.add_argument_group("output")
    out.add_argument("--name", help="dataset name: the directory <out>/<name> (required)")
    out.add_argument("--out", metavar="DIR", default="data", help="root of converted datasets (default: %(default)s)")
    out.add_argument("--samples-per-shard", type=int, metavar="S", default=5000, help="samples per .tar shard (default: %(default)s)")
    out.add_argument("--seed", type=int, default=0, help="seed of the idx permutation of every split (default: %(default)s)")
    out.add_argument("--force", action="store_true", help="replace an existing dataset (atomically) or existing label sets")
    out.add_argument("--resize-shorter", type=int, metavar="PX",
                     help="resize images whose shorter side is longer than PX to PX (aspect kept) and re-encode them "
                     "as JPEG; smaller images keep their bytes (e.g. 256 for ImageNet-style training)")
    out.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                     help="JPEG quality of resized images (default: %(default)s)")
    out.add_argument("--workers", type=int, default=0, metavar="N",
                     help="processes that verify/resize images (default: 0 = one per CPU core)")
    out.add_argument("--restart", action="store_true",
                     help="discard the partial state of an interrupted conversion instead of continuing it")

    lab = p.add_argument_group(
        "label sets",
        "Noisy label sets go to the --noisy-split; 'clean' is always written for every split. Names: clean; "
        + label_sets.ACCEPTED_FORMS + "; " + ", ".join(sorted(cifar_n.LABEL_SETS)) + " (need --cifar-n).",
    )
    lab.add_argument("--label-set", action="append", default=[], metavar="NAME", help="label set to make (repeatable)")
    lab.add_argument("--cifar-n", type=Path, metavar="PATH", help="CIFAR-10_human.pt / CIFAR-100_human.pt, or the demo's .npz")
    lab.add_argument("--label-file", action="append", default=[], metavar="NAME=PATH",
                     help="labels from a .npy or text file (one int per line) in the source's order (repeatable)")
    lab.add_argument("--clean-subset", type=int, metavar="M",
                     help="also write mask clean-subset-<M>-s<seed>: a class-balanced clean meta subset of M samples")
    lab.add_argument("--clean-subset-seed", type=int, metavar="SEED", help="seed of the clean subset (default: --seed)")
    lab.add_argument("--noisy-split", metavar="SPLIT", default="train", help="split that gets noisy label sets and masks (default: %(default)s)")

    mode = p.add_argument_group("mode")
    mode.add_argument("--add-label-set", action="store_true",
                      help="add the label sets / mask to the existing <out>/<name> without touching its shards")
    mode.add_argument("--verify", metavar="NAME", help="check every file of <out>/NAME against its manifest (existence, "
                      "size, sha256), list each bad one, exit 1 if any")
    mode.add_argument("--no-progress", action="store_true", help="no progress bars")
    mode.add_argument("-v", "--verbose", action="store_true", help="log details (realised noise rates, files)")
    return p


def _label_files(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--label-file {item!r}: expected NAME=PATH")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verify:
        return _verify(Path(args.out) / args.verify, progress=not args.no_progress)
    if not args.name:
        parser.error("--name is required (the dataset directory <out>/<name>)")
    if args.add_label_set == bool(args.source):
        parser.error("give --source to convert, or --add-label-set to add to an existing dataset (not both)")
    seed_subset = args.clean_subset_seed if args.clean_subset_seed is not None else args.seed
    req = LabelRequests(
        label_sets=list(dict.fromkeys(args.label_set)),
        cifar_n=args.cifar_n,
        label_files=_label_files(args.label_file, parser),
        clean_subset=args.clean_subset,
        clean_subset_seed=seed_subset,
    )
    recorded = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        if args.add_label_set:
            added = add_label_sets(Path(args.out) / args.name, req, args.noisy_split, args.force, recorded)
            print(f"added {', '.join(added) or 'nothing'} to {Path(args.out) / args.name}")
            return 0
        cfg = ConvertConfig(
            source=resolve_source(args.source, args.cache_dir),
            source_format=args.format,
            name=args.name,
            out=Path(args.out),
            splits=args.splits.split(",") if args.splits else None,
            noisy_split=args.noisy_split,
            seed=args.seed,
            samples_per_shard=args.samples_per_shard,
            force=args.force,
            labels=req,
            argv=recorded,
            progress=not args.no_progress,
            source_options={"imagenet_val": args.imagenet_val, "imagenet_val_labels": args.imagenet_val_labels,
                            "webvision_classes": args.webvision_classes, "food101": args.food101,
                            "labels": args.labels, "classes": args.classes},
            resize_shorter=args.resize_shorter,
            jpeg_quality=args.jpeg_quality,
            workers=args.workers,
            restart=args.restart,
        )
        path = convert(cfg)
    except UserError as err:  # anything else is a bug and keeps its traceback
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        log.debug("OSError", exc_info=True)
        partial = partial_dir(Path(args.out), args.name)
        kept = f"; complete shards are kept in {partial}: run the same command again to continue" if partial.exists() else ""
        print(f"make_shards: error: {describe_os_error(err, '--out')}{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"make_shards: interrupted; run the same command again to continue from "
              f"{partial_dir(Path(args.out), args.name)}", file=sys.stderr)
        return 130
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


def _verify(path: Path, progress: bool) -> int:
    """--verify: every file of the dataset against the manifest; 0 when all match."""
    try:
        found = Dataset(path).problems(progress=progress)
    except UserError as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2
    for line in found:
        print(f"bad: {line}", file=sys.stderr)
    if found:
        print(f"make_shards: {len(found)} file(s) of {path} do not match the manifest; re-convert it with --force",
              file=sys.stderr)
        return 1
    print(f"{path}: every file matches the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())

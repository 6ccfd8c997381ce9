"""Builds the shipped demo subset from the full CIFAR-10 JPEG archive and the CIFAR-10N file.

Writes (byte-for-byte reproducible: sorted members, zero mtimes and owners, gzip mtime 0):
  tools/demo/cifar10-demo.tar.gz   cifar10-demo/{train,test}/<class>/NNNN.jpg, the first 500 train and
                                   100 test images of every class (NNNN < 500 / < 100), same names as the
                                   full tree, so CIFAR-N joins by file name still hold
  tools/demo/cifar10n-demo.npz     CIFAR-10N labels of exactly those 5,000 train images: `key`
                                   ("train/<class>/NNNN.jpg"), `position` (original CIFAR train index)
                                   and the published arrays (clean_label, aggre_label, random_label1..3,
                                   worse_label); read by pipeline/make/cifar_n.py, so --cifar-n accepts it

Usage: python tools/demo/make_demo_subset.py [--data ../shared/data/cifar10] [--out tools/demo]
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

try:
    import pipeline  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.make import cifar_n

PER_CLASS = {"train": 500, "test": 100}
ROOT = "cifar10-demo"
_MEMBER = re.compile(r"^[^/]+/(?P<split>train|test)/(?P<cls>[^/]+)/(?P<num>\d{4})\.jpg$")


def _tar_info(name: str, size: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if size is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


def build(data_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    chosen: dict[str, bytes] = {}
    with tarfile.open(data_dir / "cifar10-jpg.tar.gz", "r|gz") as tar:
        for member in tar:
            m = _MEMBER.match(member.name)
            if member.isfile() and m and int(m.group("num")) < PER_CLASS[m.group("split")]:
                f = tar.extractfile(member)
                assert f is not None
                chosen[f"{m.group('split')}/{m.group('cls')}/{m.group('num')}.jpg"] = f.read()
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "cifar10-demo.tar.gz"
    dirs = sorted({f"{ROOT}/{k.rsplit('/', 2)[0]}" for k in chosen} | {f"{ROOT}/{k.rsplit('/', 1)[0]}" for k in chosen} | {ROOT})
    with open(archive, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for d in dirs:
                tar.addfile(_tar_info(d, None))
            for key in sorted(chosen):
                tar.addfile(_tar_info(f"{ROOT}/{key}", len(chosen[key])), io.BytesIO(chosen[key]))

    # CIFAR-10N labels of the chosen train images, joined by file name (data/cifar10/README.md)
    full = cifar_n.load(data_dir / "CIFAR-10_human.pt")
    keys = sorted(k for k in chosen if k.startswith("train/"))
    positions = cifar_n.original_positions(full, keys, np.arange(len(keys)), cifar_n.CIFAR10_CLASSES)
    labels_path = out_dir / "cifar10n-demo.npz"
    np.savez_compressed(
        labels_path,
        key=np.array(keys),
        position=positions,
        **{name: array[positions] for name, array in full.arrays.items()},
    )
    return archive, labels_path


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=here.parents[2] / "shared" / "data" / "cifar10",
                   help="folder with cifar10-jpg.tar.gz and CIFAR-10_human.pt (default: %(default)s)")
    p.add_argument("--out", type=Path, default=here, help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    for path in build(args.data, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

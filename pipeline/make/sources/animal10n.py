"""animal10n: ANIMAL-10N (Song et al., ICML 2019) in its official layout.

    <root>/training/<label>_<id>.jpg   50,000 images, 64x64
    <root>/testing/<label>_<id>.jpg     5,000 images

The label is the integer before the first underscore. Splits: ``train`` (label set
``animal10n-noisy``: the crowd labels, about 8 % wrong) and ``test`` (``clean``: the test labels
are the evaluation ground truth). Source order: file names sorted.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from pipeline.make.sources.base import FileRecords, Source, SourceError, SourceSplit

log = logging.getLogger(__name__)

# label order of the dataset page (https://dm.kaist.ac.kr/datasets/animal-10n/): 5 confusing pairs
CLASSES = ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster", "guinea pig"]
SPLITS = {"train": "training", "test": "testing"}
_NAME = re.compile(r"^(?P<label>\d+)_[^/]+\.(?:jpe?g|png)$", re.IGNORECASE)


def is_animal10n(path: Path) -> bool:
    if not (path.is_dir() and (path / "training").is_dir() and (path / "testing").is_dir()):
        return False
    return any(_NAME.match(e.name) for e in os.scandir(path / "training") if e.is_file())


def read_animal10n(path: str | Path, splits: list[str] | None = None) -> Source:
    root = Path(path)
    wanted = list(SPLITS) if splits is None else list(splits)
    result: dict[str, SourceSplit] = {}
    for s in wanted:
        if s not in SPLITS:
            raise SourceError(f"{root}: ANIMAL-10N has splits {list(SPLITS)}, not {s!r}")
        folder = root / SPLITS[s]
        if not folder.is_dir():
            raise SourceError(f"{root}: folder {SPLITS[s]}/ is missing")
        keys: list[str] = []
        labels: list[int] = []
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            m = _NAME.match(name)
            if m is None:
                raise SourceError(f"{folder / name}: expected a file name <label>_<id>.jpg")
            label = int(m.group("label"))
            if label >= len(CLASSES):
                raise SourceError(f"{folder / name}: unknown class {label} (labels are 0..{len(CLASSES) - 1})")
            keys.append(f"{SPLITS[s]}/{name}")
            labels.append(label)
        if not keys:
            raise SourceError(f"{folder}: no images")
        records = FileRecords(root, keys, np.asarray(labels), f"{folder}/", np.zeros(len(keys), dtype=np.int64))
        result[s] = SourceSplit(s, records, label_name="animal10n-noisy" if s == "train" else "clean")
        log.info("%s: %d images", s, len(keys))
    return Source("animal10n", root, list(CLASSES), result, extra={"class_order": "published"})

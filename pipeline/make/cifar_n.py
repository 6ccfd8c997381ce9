"""CIFAR-N human noisy labels (Wei et al., ICLR 2022): loading the published files and joining them to idx.

The published ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` are torch zip archives holding a pickled
dict of numpy int64 arrays in original CIFAR train order. They are read here without torch: the
member ending in ``data.pkl`` is unpickled by an unpickler that only admits the numpy classes such a
dict needs (a file holding torch tensors or anything else is refused, not executed).

A compact ``.npz`` form (used by the shipped demo subset) holds the same arrays for a subset,
plus ``key``: the image-folder source key of each row ("train/cat/0042.jpg").

Joining: for a CIFAR pickle source, ``source_index`` is already the original position. For the
image-folder tree of CIFAR-10 (data/cifar10/README.md) file ``train/<class c>/NNNN.jpg`` is the
NNNN-th original position whose clean label is c.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.format.dataset import first_out_of_range
from pipeline.make.noise import CIFAR10_CLASSES

log = logging.getLogger(__name__)

# label-set name -> (which file, array key)
LABEL_SETS = {
    "cifar10n-aggre": ("cifar10", "aggre_label"),
    "cifar10n-random1": ("cifar10", "random_label1"),
    "cifar10n-random2": ("cifar10", "random_label2"),
    "cifar10n-random3": ("cifar10", "random_label3"),
    "cifar10n-worse": ("cifar10", "worse_label"),
    "cifar100n-noisy": ("cifar100", "noisy_label"),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_FOLDER_KEY = re.compile(r"^(?P<split>[^/]+)/(?P<cls>[^/]+)/(?P<num>\d+)\.\w+$")
_PICKLE_KEY = re.compile(r"^[^/:]+:\d+$")


class CifarNError(UserError, ValueError):
    """A CIFAR-N file is unreadable or does not fit the dataset; the message names the file."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickled by numpy 1.x; numpy 2 moved it to numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


@dataclass
class CifarNLabels:
    path: Path
    dataset: str  # "cifar10" or "cifar100"
    arrays: dict[str, np.ndarray]  # int64 (M,) each, row order = original order or `keys`
    keys: list[str] | None = None  # npz subset form: source key per row

    def __len__(self) -> int:
        return len(self.arrays["clean_label"])


def load(path: str | Path) -> CifarNLabels:
    """Reads a CIFAR-N .pt file (zip + pickle, no torch) or the compact .npz subset form."""
    path = Path(path)
    if not path.is_file():
        raise CifarNError(f"CIFAR-N file {path} not found (pass --cifar-n with CIFAR-10_human.pt or CIFAR-100_human.pt)")
    keys = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
        if "key" not in raw:
            raise CifarNError(f"{path}: a CIFAR-N .npz needs a 'key' array of source keys")
        keys = [str(k) for k in raw.pop("key")]
    else:
        try:
            with zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not members:
                    raise CifarNError(f"{path}: no member ending in data.pkl; is this a torch-saved CIFAR-N file?")
                raw = _NumpyOnlyUnpickler(io.BytesIO(z.read(members[0]))).load()
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as err:
            raise CifarNError(f"{path}: cannot read as a CIFAR-N file ({err})") from err
        if not isinstance(raw, dict):
            raise CifarNError(f"{path}: expected a pickled dict of arrays, got {type(raw).__name__}")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in raw.items() if isinstance(v, np.ndarray) and v.ndim == 1}
    if "clean_label" not in arrays:
        raise CifarNError(f"{path}: no 'clean_label' array (found {sorted(raw)})")
    dataset = "cifar100" if "noisy_label" in arrays else "cifar10"
    label_keys = {"clean_label"} | {key for want, key in LABEL_SETS.values() if want == dataset}
    for name in sorted(label_keys & set(arrays)):
        bad = first_out_of_range(arrays[name], NUM_CLASSES[dataset])
        if bad is not None:
            raise CifarNError(f"{path}: {name}[{bad}] = {arrays[name][bad]} is outside [0, {NUM_CLASSES[dataset]}) of "
                              f"{dataset}; the file is damaged or not a CIFAR-N file")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise CifarNError(f"{path}: arrays differ in length {lengths}")
    if keys is not None and len(keys) != len(arrays["clean_label"]):
        raise CifarNError(f"{path}: {len(keys)} keys for {len(arrays['clean_label'])} labels")
    return CifarNLabels(path, dataset, arrays, keys)


def original_positions(cn: CifarNLabels, source_keys: list[str], source_index: np.ndarray, classes: list[str]) -> np.ndarray:
    """Row of the CIFAR-N arrays for each idx (int64 (N,)), from the dataset's source keys / index."""
    n = len(source_keys)
    if cn.keys is not None:  # subset form: join by source key
        row_of = {k: i for i, k in enumerate(cn.keys)}
        rows = np.empty(n, dtype=np.int64)
        for idx, key in enumerate(source_keys):
            if key not in row_of:
                raise CifarNError(f"{cn.path}: has no labels for sample {key!r} (idx {idx}); is it the file for this subset?")
            rows[idx] = row_of[key]
        return rows
    if all(_PICKLE_KEY.match(k) for k in source_keys[:100]):  # CIFAR pickle source: already original order
        return np.asarray(source_index, dtype=np.int64)
    # CIFAR image-folder tree: key train/<class>/NNNN.<ext> -> the NNNN-th position of that class.
    # Class indices follow CIFAR's order by name, whatever order the dataset's classes are in.
    cifar_order = CIFAR10_CLASSES if cn.dataset == "cifar10" else sorted(classes)
    if set(classes) != set(cifar_order):
        raise CifarNError(f"{cn.path}: is for {cn.dataset}, but the dataset has classes {classes}")
    clean = cn.arrays["clean_label"]
    positions_of = [np.flatnonzero(clean == c) for c in range(len(cifar_order))]
    class_index = {name: i for i, name in enumerate(cifar_order)}
    rows = np.empty(n, dtype=np.int64)
    for idx, key in enumerate(source_keys):
        m = _FOLDER_KEY.match(key)
        if not m:
            raise CifarNError(f"cannot join {cn.path}: source key {key!r} (idx {idx}) is not <split>/<class>/NNNN.<ext>")
        if m.group("split") != "train":
            raise CifarNError(f"{cn.path}: holds train labels, but sample {key!r} (idx {idx}) is from split {m.group('split')!r}")
        c, num = class_index[m.group("cls")], int(m.group("num"))
        if num >= len(positions_of[c]):
            raise CifarNError(
                f"{cn.path}: {key} (idx {idx}) is image {num} of class {m.group('cls')!r}, but the file has only "
                f"{len(positions_of[c])} images of that class"
            )
        rows[idx] = positions_of[c][num]
    return rows


def join(
    cn: CifarNLabels,
    name: str,
    source_keys: list[str],
    source_index: np.ndarray,
    classes: list[str],
    clean: np.ndarray | None = None,
) -> np.ndarray:
    """The CIFAR-N label set ``name`` (e.g. "cifar10n-worse") as int64 (N,) indexed by idx.

    The file must cover exactly the split's samples; when ``clean`` (idx order) is given, the file's
    clean labels must agree with it sample by sample, which catches a wrong join."""
    if name not in LABEL_SETS:
        raise CifarNError(f"unknown CIFAR-N label set {name!r}; known: {sorted(LABEL_SETS)}")
    want, key = LABEL_SETS[name]
    if want != cn.dataset:
        raise CifarNError(f"{cn.path} is a {cn.dataset} CIFAR-N file; {name} needs the {want} one")
    if key not in cn.arrays:
        raise CifarNError(f"{cn.path}: has no {key!r} array for {name} (found {sorted(cn.arrays)})")
    if len(classes) != NUM_CLASSES[cn.dataset] or (cn.dataset == "cifar10" and set(classes) != set(CIFAR10_CLASSES)):
        raise CifarNError(f"{cn.path} holds {cn.dataset} labels, but the dataset has {len(classes)} other classes "
                          f"({', '.join(classes[:4])}, ...); use the CIFAR-N file of this dataset")
    if len(source_keys) != len(cn):
        raise CifarNError(
            f"{cn.path} has {len(cn)} labels but the split has {len(source_keys)} samples; CIFAR-N labels "
            f"need exactly the samples they were made for (the full CIFAR train split, or the demo .npz for the demo)"
        )
    rows = original_positions(cn, source_keys, source_index, classes)
    if len(np.unique(rows)) != len(rows):
        dup = int(np.flatnonzero(np.bincount(rows) > 1)[0])
        raise CifarNError(f"{cn.path}: two samples join to the same CIFAR-N row {dup}; the source keys are inconsistent")
    if clean is not None:
        # CIFAR-N's clean_label uses CIFAR's class order; map it to the dataset's order by name.
        file_classes = CIFAR10_CLASSES if cn.dataset == "cifar10" else sorted(classes)
        to_ours = np.array([classes.index(c) for c in file_classes], dtype=np.int64)
        mismatch = np.flatnonzero(to_ours[cn.arrays["clean_label"][rows]] != clean)
        if len(mismatch):
            i = int(mismatch[0])
            raise CifarNError(
                f"{cn.path}: clean label of idx {i} ({source_keys[i]}) disagrees with the file "
                f"({len(mismatch)} samples differ); the join is wrong for this dataset"
            )
    labels = cn.arrays[key][rows]
    file_classes = CIFAR10_CLASSES if cn.dataset == "cifar10" else sorted(classes)
    if file_classes != list(classes):
        to_ours = np.array([classes.index(c) for c in file_classes], dtype=np.int64)
        labels = to_ours[labels]
    return labels

"""Raw-format readers (pipeline/make/sources/): image trees from folders and archives, CIFAR pickles."""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from support.demo_data import CIFAR10_CLASSES, tar_tree, write_image_tree
from PIL import Image

from pipeline.make import sources
from pipeline.make.sources import SourceError

# ---------------------------------------------------------------------------------------------
# fixtures: CIFAR pickles in the official layout (bytes keys, as the python-2 era files have)
# ---------------------------------------------------------------------------------------------


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)  # (n, 3*32*32) planes


def write_cifar10_python(root: Path, per_batch: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        labels = [(i + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": _pixels(per_batch, i),
                 b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR10_CLASSES}, protocol=2))
    return folder


def write_cifar100_python(root: Path, n: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    for i, split in enumerate(["train", "test"]):
        fine = [(7 * j + i) % 100 for j in range(n)]
        data = {b"fine_labels": fine, b"coarse_labels": [f % 20 for f in fine], b"data": _pixels(n, 10 + i)}
        (folder / split).write_bytes(pickle.dumps(data, protocol=2))
    meta = {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def _targz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_image_folder_reads_dir_and_targz_alike(tmp_path, packed):
    tree = write_image_tree(tmp_path / "tiny-cifar", {"train": 3, "test": 2})
    path = tar_tree(tree, tmp_path / "tiny.tar.gz", top="some-top") if packed else tree
    source = sources.open_source(path)
    assert source.format == "image-folder"
    assert source.classes == CIFAR10_CLASSES  # CIFAR-10's order, not alphabetical
    assert sorted(source.splits) == ["test", "train"]
    train = source.splits["train"]
    assert len(train.records) == 30
    assert train.keys[:4] == ["train/airplane/0000.jpg", "train/airplane/0001.jpg", "train/airplane/0002.jpg",
                              "train/automobile/0000.jpg"]
    assert list(train.labels[::3]) == list(range(10))
    rec = train.records[5]
    assert rec.ext == "jpg" and rec.read() == (tree / rec.key).read_bytes()


def test_image_folder_other_classes_are_sorted_and_png_is_kept(tmp_path):
    for cls, color in (("zebra", 0), ("apple", 255)):
        folder = tmp_path / "t" / "train" / cls
        folder.mkdir(parents=True)
        Image.new("RGB", (4, 4), (color, 0, 0)).save(folder / "a.png")
    source = sources.open_source(tmp_path / "t", ["train"])
    assert source.classes == ["apple", "zebra"]
    assert [r.ext for r in source.splits["train"].records] == ["png", "png"]


def test_image_folder_missing_split_names_the_folder(tmp_path):
    tree = write_image_tree(tmp_path / "t", {"train": 1})
    with pytest.raises(SourceError, match=r"split folder ./test/ is missing"):
        sources.open_source(tree, ["train", "test"])


def test_image_folder_missing_class_in_one_split_names_it(tmp_path):
    tree = write_image_tree(tmp_path / "t", {"train": 1})
    write_image_tree(tmp_path / "t", {"test": 1}, classes=CIFAR10_CLASSES[:-1])
    with pytest.raises(SourceError, match=r"class folder ./test/truck/ is missing"):
        sources.open_source(tree)


def test_image_folder_empty_class_folder_in_archive_is_an_error(tmp_path):
    tree = write_image_tree(tmp_path / "t", {"train": 1}, classes=["cat", "dog"])
    for f in (tree / "train" / "dog").iterdir():
        f.unlink()
    archive = tar_tree(tree, tmp_path / "t.tar.gz")
    with pytest.raises(SourceError, match=r"t.tar.gz: class folder t/train/dog/ is empty"):
        sources.open_source(archive)


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images found"):
        sources.open_source(tmp_path / "empty")


def test_truncated_archive_is_an_error(tmp_path):
    archive = tar_tree(write_image_tree(tmp_path / "t", {"train": 2}), tmp_path / "t.tar.gz")
    data = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="cut.tar.gz"):
        sources.open_source(tmp_path / "cut.tar.gz", fmt="image-folder")


def test_decode_image_names_a_corrupt_file():
    with pytest.raises(SourceError, match="train/cat/0001.jpg: corrupt"):
        sources.decode_image(b"\xff\xd8\xff\xe0 not really a jpeg", "train/cat/0001.jpg")


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_python_order_keys_and_lossless_png(tmp_path, packed):
    folder = write_cifar10_python(tmp_path / "raw")
    path = _targz(folder, tmp_path / "cifar-10-python.tar.gz") if packed else tmp_path / "raw"
    source = sources.open_source(path)
    assert source.format == "cifar10-python" and source.classes == CIFAR10_CLASSES
    train, test = source.splits["train"], source.splits["test"]
    assert len(train.records) == 15 and len(test.records) == 3
    assert train.keys[:4] == ["data_batch_1:0", "data_batch_1:1", "data_batch_1:2", "data_batch_2:0"]
    assert list(train.labels[:4]) == [0, 1, 2, 1]
    # the PNG decodes to exactly the original pixels (CIFAR stores R, G, B planes per row)
    png = Image.open(io.BytesIO(train.records[4].read()))
    expected = _pixels(3, 1)[1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert png.format == "PNG" and np.array_equal(np.asarray(png), expected)


def test_cifar100_python_keeps_coarse_labels(tmp_path):
    folder = write_cifar100_python(tmp_path / "raw")
    source = sources.open_source(_targz(folder, tmp_path / "cifar-100-python.tar.gz"))
    assert source.format == "cifar100-python"
    assert len(source.classes) == 100 and len(source.coarse_classes) == 20
    train = source.splits["train"]
    assert train.keys[1] == "train:1"
    assert np.array_equal(train.coarse_labels, train.labels % 20)


def test_cifar10_python_missing_batch_names_it(tmp_path):
    folder = write_cifar10_python(tmp_path / "raw")
    (folder / "data_batch_3").unlink()
    with pytest.raises(SourceError, match="cifar-10-batches-py/data_batch_3"):
        sources.open_source(tmp_path / "raw")


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def test_download_offline_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(SourceError, match=r"no network .*download https://\S+cifar-10-python.tar.gz by hand and pass --source"):
        sources.resolve_source("download:cifar10", tmp_path)
    assert not list(tmp_path.iterdir())  # no partial file left


def test_resolve_source_passes_paths_through(tmp_path):
    assert sources.resolve_source(str(tmp_path / "x.tar.gz"), tmp_path) == tmp_path / "x.tar.gz"

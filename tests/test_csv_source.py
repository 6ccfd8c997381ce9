"""Your own images + a CSV of labels (pipeline/make/sources/csv_labels.py): one make_shards command converts
them, the label arrays equal the CSV by key, and each bad input stops with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.demo_data import make_shards_main, write_image_tree

from pipeline.errors import UserError
from pipeline.format.dataset import Dataset
from pipeline.make import sources
from pipeline.make.sources import SourceError

CLASSES = ["cat", "dog", "ship"]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    """header on line 1, rows from line 2."""
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """imgs/{train,test}/{cat,dog,ship}/NNNN.jpg: 3 train and 2 test demo JPEGs per class."""
    return write_image_tree(tmp_path / "imgs", {"train": 3, "test": 2}, classes=CLASSES)


def all_keys(root: Path) -> list[str]:
    """Every image's path under root: train first, each split in file-name order."""
    return sorted((p.relative_to(root).as_posix() for p in root.rglob("*.jpg")), key=lambda k: (k.split("/")[0] != "train", k))


def test_folder_and_csv_convert_with_noisy_and_clean_label_sets_equal_to_the_csv(images, tmp_path):
    keys = all_keys(images)
    truth = {k: k.split("/")[1] for k in keys}
    noisy = {k: CLASSES[(CLASSES.index(c) + 1) % 3] if i % 4 == 0 else c for i, (k, c) in enumerate(truth.items())}
    csv = write_csv(tmp_path / "labels.csv", "path,label,clean_label,split",
                    [f"{k},{noisy[k]},{truth[k]},{k.split('/')[0]}" for k in keys])
    rc = make_shards_main()(["--source", str(images), "--labels", str(csv), "--name", "mine", "--out",
                             str(tmp_path / "data"), "--samples-per-shard", "4", "--no-progress"])
    assert rc == 0
    ds = Dataset(tmp_path / "data" / "mine")
    assert ds.classes == CLASSES  # the sorted set of names
    assert ds.manifest.provenance["source_format"] == "csv"
    for split, n in (("train", 9), ("test", 6)):
        assert ds.num_samples(split) == n
        split_keys = ds.source_keys(split)
        assert sorted(split_keys) == [k for k in keys if k.startswith(split)]
        for name, expected in (("csv-noisy", noisy), ("clean", truth)):
            got = {k: ds.classes[label] for k, label in zip(split_keys, ds.labels(split, name))}
            assert got == {k: expected[k] for k in split_keys}, (split, name)
    flipped = sum(noisy[k] != truth[k] for k in keys if k.startswith("train"))
    assert flipped and ds.split("train").label_sets["csv-noisy"].noise_rate == pytest.approx(flipped / 9, abs=1e-6)


def test_list_of_paths_with_index_labels_and_a_classes_file(images, tmp_path):
    keys = all_keys(images)
    order = ["ship", "cat", "dog"]  # --classes decides what index i means
    (tmp_path / "classes.txt").write_text("\n".join(order) + "\n")
    listed = [str(images / k) for k in keys]  # absolute paths in the list
    (tmp_path / "images.txt").write_text("\n".join(listed) + "\n")
    rows = [f"{p},{order.index(k.split('/')[1])},{k.split('/')[0]}" for p, k in zip(listed, keys)]
    rows[0] = f"{listed[0]},dog,train"  # names and indices mix freely once the classes are given
    csv = write_csv(tmp_path / "labels.csv", "key,label,split", rows)
    source = sources.open_source(tmp_path / "images.txt", labels=csv, classes=tmp_path / "classes.txt")
    assert source.format == "csv" and source.classes == order
    train, test = source.splits["train"], source.splits["test"]
    assert train.label_name == "csv-noisy" and test.label_name == "clean"  # test labels are the evaluation truth
    assert train.keys == listed[:9] and list(train.labels) == [2, 1, 1, 2, 2, 2, 0, 0, 0]
    assert train.records[1].read() == Path(listed[1]).read_bytes()


def test_index_labels_without_a_classes_file_are_classes_0_to_max(images, tmp_path):
    csv = write_csv(tmp_path / "l.csv", "path,label", [f"{k},{i % 5}" for i, k in enumerate(all_keys(images))])
    source = sources.open_source(images, labels=csv)
    assert source.classes == ["0", "1", "2", "3", "4"] and list(source.splits) == ["train"]


@pytest.mark.parametrize("header, edit, message", [
    ("path,label", lambda rows: rows.__setitem__(1, "train/cat/0001.jpg,"), r"l\.csv:3: empty label"),
    ("path,label", lambda rows: rows.append(rows[0]), r"l\.csv:17: train/cat/0000\.jpg is listed twice \(first at line 2\)"),
    ("path,label", lambda rows: rows.__setitem__(2, "train/cat/9999.jpg,cat"),
     r"l\.csv:4: image \S+/imgs/train/cat/9999\.jpg not found"),
    ("path,label", lambda rows: rows.__setitem__(3, "train/dog/0000.jpg,3"),
     r"l\.csv:5: label '3' is an index, other labels are class names; give --classes"),
    ("path,label,clean_lable", None, r"l\.csv:1: .*unknown column\(s\) \['clean_lable'\]"),
    ("path,label", lambda rows: rows.pop(), r"imgs: 1 image\(s\) have no row in \S+l\.csv, e\.g\. \['test/ship/0001\.jpg'\]"),
    ("path,label", lambda rows: rows.__setitem__(0, "train/cat/0000.gif,cat"), r"l\.csv:2: 'train/cat/0000\.gif' is not a"),
])
def test_bad_csv_names_file_and_line(images, tmp_path, header, edit, message):
    keys = all_keys(images)
    rows = [f"{k},{k.split('/')[1]}" + (",x" if header.count(",") == 2 else "") for k in keys]
    if edit:
        edit(rows)
    with pytest.raises(SourceError, match=message):
        sources.open_source(images, labels=write_csv(tmp_path / "l.csv", header, rows))


def test_unknown_class_name_with_a_classes_file(images, tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\nship\n")
    rows = [f"{k},{k.split('/')[1]}" for k in all_keys(images)]
    rows[4] = rows[4].rsplit(",", 1)[0] + ",cow"
    with pytest.raises(SourceError, match=r"l\.csv:6: unknown class 'cow' in column label \(not a name in \S+classes\.txt, "
                       r"nor an index 0\.\.2\)"):
        sources.open_source(images, labels=write_csv(tmp_path / "l.csv", "path,label", rows),
                            classes=tmp_path / "classes.txt")


def test_listed_image_that_is_gone_names_the_csv_line(images, tmp_path):
    keys = all_keys(images)
    (tmp_path / "images.txt").write_text("\n".join(f"imgs/{k}" for k in keys) + "\n")  # relative to the list
    csv = write_csv(tmp_path / "l.csv", "path,label", [f"imgs/{k},{k.split('/')[1]}" for k in keys])
    (images / keys[2]).unlink()
    with pytest.raises(SourceError, match=rf"l\.csv:4: image \S+imgs/{keys[2]} is missing"):
        sources.open_source(tmp_path / "images.txt", labels=csv)


def test_make_shards_prints_the_error_without_a_traceback(images, tmp_path, capsys):
    csv = write_csv(tmp_path / "l.csv", "path,label", ["train/cat/0000.jpg,"])
    rc = make_shards_main()(["--source", str(images), "--labels", str(csv), "--name", "x", "--out", str(tmp_path / "d"),
                             "--no-progress"])
    assert rc == 2 and "l.csv:2: empty label" in capsys.readouterr().err
    assert issubclass(SourceError, UserError) and not (tmp_path / "d" / "x").exists()

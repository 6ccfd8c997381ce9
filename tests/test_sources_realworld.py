"""Real-world noisy datasets in their official layouts (pipeline/make/sources/): read, convert end to end with
tools/make_shards.py, and stop on malformed lines, missing images and unknown classes naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.demo_data import make_shards_main
from support.official_layouts import (
    CLOTHING1M_CLASSES,
    FOOD_CLASSES,
    synsets,
    write_animal10n,
    write_cifar100n_pt,
    write_clothing1m,
    write_food101n,
    write_imagenet_val,
    write_lines,
    write_webvision,
)
from test_sources import write_cifar100_python

from pipeline.format.dataset import Dataset
from pipeline.format.shards import read_shard
from pipeline.make import sources
from pipeline.make.sources import SourceError
from training.run import main as run_main

main = make_shards_main()


def _run(*args) -> int:
    return main([*map(str, args), "--no-progress", "--samples-per-shard", "16"])


def _convert(tmp_path, *args) -> Dataset:
    assert _run(*args, "--name", "d", "--out", tmp_path / "out") == 0
    ds = Dataset(tmp_path / "out" / "d")
    ds.verify()
    return ds


def _labels_by_key(ds: Dataset, split: str, name: str) -> dict[str, int]:
    return dict(zip(ds.source_keys(split), ds.labels(split, name).tolist()))


def _every_idx_once(ds: Dataset, split: str) -> None:
    seen = [idx for shard in ds.shard_paths(split) for idx, _, _ in read_shard(shard)]
    assert seen == list(range(ds.num_samples(split)))


def _expect_error(capsys, tmp_path, *args, match: str) -> None:
    assert _run(*args, "--name", "d", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# Clothing1M
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("annotations", ["", "annotations"])
def test_clothing1m_converts_noisy_and_clean_splits(tmp_path, annotations):
    truth = write_clothing1m(tmp_path / "clothing1M", annotations=annotations)
    ds = _convert(tmp_path, "--source", tmp_path / "clothing1M")
    assert ds.manifest.provenance["source_format"] == "clothing1m"
    assert ds.classes == CLOTHING1M_CLASSES
    assert {s: ds.num_samples(s) for s in ds.manifest.splits} == {"train": 40, "clean_train": 12, "val": 8, "test": 10}
    _every_idx_once(ds, "train")
    assert _labels_by_key(ds, "train", "clothing1m-noisy") == {k: truth["noisy"][k] for k in truth["splits"]["train"]}
    assert set(ds.split("train").label_sets) == {"clothing1m-noisy"}  # no train image has a clean label
    for split in ("clean_train", "val", "test"):
        assert _labels_by_key(ds, split, "clean") == {k: truth["clean"][k] for k in truth["splits"][split]}
        # half of the clean images also have a noisy label: a partial set + its mask
        known = dict(zip(ds.source_keys(split), ds.mask(split, "clothing1m-noisy-known").tolist()))
        assert known == {k: k in truth["noisy"] for k in truth["splits"][split]}
        partial = _labels_by_key(ds, split, "clothing1m-noisy-partial")
        assert all(partial[k] == truth["noisy"][k] for k in truth["splits"][split] if k in truth["noisy"])
        entry = ds.label_set_entry(split, "clothing1m-noisy-partial")
        assert entry.params["known_mask"] == "clothing1m-noisy-known"
        keys = [k for k in truth["splits"][split] if k in truth["noisy"]]
        rate = np.mean([truth["noisy"][k] != truth["clean"][k] for k in keys])
        assert entry.noise_rate == pytest.approx(rate)  # over the known labels only


def test_clothing1m_kv_malformed_line_names_file_and_line(tmp_path, capsys):
    write_clothing1m(tmp_path / "c")
    kv = tmp_path / "c" / "noisy_label_kv.txt"
    lines = kv.read_text().splitlines()
    lines[4] = lines[4] + " extra"
    kv.write_text("\n".join(lines) + "\n")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "c", match=f"{kv}:5: expected '<image path> <label>'")


def test_clothing1m_unknown_class_names_file_and_line(tmp_path, capsys):
    write_clothing1m(tmp_path / "c")
    kv = tmp_path / "c" / "clean_label_kv.txt"
    lines = kv.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 14"
    kv.write_text("\n".join(lines) + "\n")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "c", match=f"{kv}:3: unknown class 14")


def test_clothing1m_missing_image_names_list_and_line(tmp_path, capsys):
    truth = write_clothing1m(tmp_path / "c")
    (tmp_path / "c" / truth["splits"]["val"][3]).unlink()
    _expect_error(capsys, tmp_path, "--source", tmp_path / "c",
                  match=f"{tmp_path / 'c' / 'clean_val_key_list.txt'}:4: image {tmp_path / 'c' / truth['splits']['val'][3]} is missing")


def test_clothing1m_key_without_label_names_list_and_line(tmp_path):
    write_clothing1m(tmp_path / "c")
    write_lines(tmp_path / "c" / "clean_test_key_list.txt", ["images/9/99/nowhere.jpg"])
    with pytest.raises(SourceError, match=r"clean_test_key_list.txt:1: images/9/99/nowhere.jpg has no label in .*clean_label_kv.txt"):
        sources.open_source(tmp_path / "c")


# ---------------------------------------------------------------------------------------------
# WebVision (mini) + ILSVRC-2012 val
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_form", ["val.txt", "LOC_val_solution.csv", "synset folders"])
def test_webvision_mini_keeps_first_50_classes_and_imagenet_val(tmp_path, label_form):
    truth = write_webvision(tmp_path / "webvision", classes=60)
    layout = "synsets" if label_form == "synset folders" else "flat"
    inet = write_imagenet_val(tmp_path / "ilsvrc", classes=55, layout=layout)
    labels_arg = [] if layout == "synsets" else ["--imagenet-val-labels", tmp_path / "ilsvrc" / label_form]
    ds = _convert(tmp_path, "--source", tmp_path / "webvision", "--imagenet-val", inet["folder"], *labels_arg)
    assert ds.classes == synsets()[:50]
    assert {s: ds.num_samples(s) for s in ds.manifest.splits} == {"train": 100, "val": 50, "imagenet_val": 50}
    assert _labels_by_key(ds, "train", "webvision-noisy") == {k: c for k, c in truth["train"] if c < 50}
    assert _labels_by_key(ds, "val", "clean") == {f"val_images_256/{k}": c for k, c in truth["val"] if c < 50}
    by_name = {k.rsplit("/", 1)[-1]: c for k, c in _labels_by_key(ds, "imagenet_val", "clean").items()}
    assert by_name == {n: c for n, c in inet["items"] if c < 50}
    _every_idx_once(ds, "imagenet_val")


def test_webvision_without_imagenet_val_has_train_and_val(tmp_path):
    write_webvision(tmp_path / "w", classes=50)
    source = sources.open_source(tmp_path / "w")
    assert source.format == "webvision" and sorted(source.splits) == ["train", "val"]
    with pytest.raises(SourceError, match="imagenet_val needs --imagenet-val"):
        sources.open_source(tmp_path / "w", ["train", "imagenet_val"])


def test_webvision_label_outside_imagenet_names_file_and_line(tmp_path, capsys):
    write_webvision(tmp_path / "w", classes=50)
    listing = tmp_path / "w" / "info" / "train_filelist_google.txt"
    listing.write_text(listing.read_text() + "google/q0001/img0.jpg 1000\n")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "w", match=f"{listing}:101: unknown class 1000")


def test_webvision_malformed_and_missing_name_file_and_line(tmp_path):
    write_webvision(tmp_path / "w", classes=50)
    listing = tmp_path / "w" / "info" / "val_filelist.txt"
    text = listing.read_text()
    listing.write_text(text + "val999999.jpg\n")
    with pytest.raises(SourceError, match=rf"{listing}:51: expected '<image path> <label>'"):
        sources.open_source(tmp_path / "w")
    listing.write_text(text + "val999999.jpg 3\n")
    with pytest.raises(SourceError, match=rf"{listing}:51: image .*val_images_256/val999999.jpg is missing"):
        sources.open_source(tmp_path / "w")


def test_imagenet_val_flat_folder_needs_a_label_file(tmp_path):
    write_webvision(tmp_path / "w", classes=50)
    inet = write_imagenet_val(tmp_path / "i", classes=50)
    with pytest.raises(SourceError, match="--imagenet-val-labels"):
        sources.open_source(tmp_path / "w", imagenet_val=inet["folder"])
    csv = tmp_path / "i" / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace(synsets()[3], "n99999999", 1))
    with pytest.raises(SourceError, match=r"LOC_val_solution.csv:5: unknown class 'n99999999'"):
        sources.open_source(tmp_path / "w", imagenet_val=inet["folder"], imagenet_val_labels=csv)


# ---------------------------------------------------------------------------------------------
# ANIMAL-10N
# ---------------------------------------------------------------------------------------------


def test_animal10n_labels_from_file_names(tmp_path):
    names = write_animal10n(tmp_path / "animal")
    ds = _convert(tmp_path, "--source", tmp_path / "animal")
    assert ds.manifest.provenance["source_format"] == "animal10n" and ds.num_classes == 10
    assert _labels_by_key(ds, "train", "animal10n-noisy") == {f"training/{n}": int(n.split("_")[0]) for n in names["training"]}
    assert _labels_by_key(ds, "test", "clean") == {f"testing/{n}": int(n.split("_")[0]) for n in names["testing"]}
    _every_idx_once(ds, "train")


@pytest.mark.parametrize("name, needle", [("12_00001.jpg", "unknown class 12"), ("cat_01.jpg", "expected a file name <label>_<id>.jpg")])
def test_animal10n_bad_file_name_is_named(tmp_path, capsys, name, needle):
    write_animal10n(tmp_path / "a")
    (tmp_path / "a" / "testing" / name).write_bytes(b"x")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "a", match=f"{tmp_path / 'a' / 'testing' / name}: {needle}")


# ---------------------------------------------------------------------------------------------
# Food-101N + Food-101 test
# ---------------------------------------------------------------------------------------------


def test_food101n_train_masks_and_food101_test(tmp_path):
    truth = write_food101n(tmp_path / "Food-101N_release", tmp_path / "food-101")
    ds = _convert(tmp_path, "--source", tmp_path / "Food-101N_release", "--food101", tmp_path / "food-101")
    assert ds.classes == FOOD_CLASSES
    assert _labels_by_key(ds, "train", "food101n-noisy") == {k: FOOD_CLASSES.index(k.split("/")[0]) for k in truth["imagelist"]}
    assert _labels_by_key(ds, "test", "clean") == {f"{k}.jpg": FOOD_CLASSES.index(k.split("/")[0]) for k in truth["test"]}
    j = {k: int(k.split("/")[1][:3]) for k in ds.source_keys("train")}
    masks = {name: dict(zip(ds.source_keys("train"), ds.mask("train", name).tolist())) for name in ds.split("train").masks}
    assert masks["verified-train"] == {k: v % 3 == 0 for k, v in j.items()}
    assert masks["verified-train-correct"] == {k: v % 3 == 0 and v % 2 == 0 for k, v in j.items()}
    assert masks["verified-val"] == {k: v % 3 == 1 for k, v in j.items()}


def test_food101n_test_needs_food101(tmp_path, capsys):
    write_food101n(tmp_path / "n", tmp_path / "f")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "n", match="pass --food101 DIR")
    assert _run("--source", tmp_path / "n", "--splits", "train", "--name", "d", "--out", tmp_path / "out") == 0


@pytest.mark.parametrize("where", ["imagelist", "test"])
def test_food101n_unknown_class_names_file_and_line(tmp_path, capsys, where):
    write_food101n(tmp_path / "n", tmp_path / "f")
    path = tmp_path / "n" / "meta" / "imagelist.tsv" if where == "imagelist" else tmp_path / "f" / "meta" / "test.txt"
    lines = path.read_text().splitlines()
    lines[2] = "pizza/" + lines[2].split("/", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "n", "--food101", tmp_path / "f",
                  match=f"{path}:3: unknown class 'pizza'")


def test_food101n_verified_line_malformed_is_named(tmp_path):
    write_food101n(tmp_path / "n", tmp_path / "f")
    tsv = tmp_path / "n" / "meta" / "verified_train.tsv"
    tsv.write_text(tsv.read_text() + "apple_pie/000appa1b2c3.jpg\tyes\n")
    with pytest.raises(SourceError, match=rf"{tsv}:\d+: expected '<class>/<image>.jpg<TAB><0\|1>'"):
        sources.open_source(tmp_path / "n", food101=tmp_path / "f")


# ---------------------------------------------------------------------------------------------
# CIFAR-100 + CIFAR-100N
# ---------------------------------------------------------------------------------------------


def test_cifar100_python_with_cifar100n_noisy(tmp_path):
    write_cifar100_python(tmp_path / "raw", n=40)
    fine = np.array([(7 * j) % 100 for j in range(40)])  # write_cifar100_python's train labels
    noisy = write_cifar100n_pt(tmp_path / "CIFAR-100_human.pt", fine)
    ds = _convert(tmp_path, "--source", tmp_path / "raw", "--cifar-n", tmp_path / "CIFAR-100_human.pt",
                  "--label-set", "cifar100n-noisy")
    got = ds.labels("train", "cifar100n-noisy")
    assert np.array_equal(got, noisy[ds.source_index("train")])
    entry = ds.label_set_entry("train", "cifar100n-noisy")
    assert entry.noise_rate == pytest.approx(np.mean(noisy != fine))
    assert entry.params["array"] == "noisy_label"


def test_format_option_for_another_format_is_an_error(tmp_path, capsys):
    write_animal10n(tmp_path / "a")
    _expect_error(capsys, tmp_path, "--source", tmp_path / "a", "--food101", tmp_path,
                  match="--food101 is for the food101n format, not animal10n")


def _train(tmp_path, *overrides: str) -> list[dict]:
    """One short CPU run (tiny CNN) on the converted fixture tmp_path/out/d; returns its history."""
    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "demo_cpu.yaml"
    assert run_main(["--config", str(config), f"data.root={tmp_path / 'out'}", "data.name=d", "data.batch_size=8",
                     "data.eval_batch_size=16", f"out_dir={tmp_path / 'runs'}", "run_name=r", *overrides]) == 0
    return json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["history"]


@pytest.mark.slow
def test_webvision_fixture_trains_with_both_test_splits(tmp_path):
    """Convert, load (DALI stream, imagenet transforms) and train one epoch; both test splits get top-1/top-5."""
    write_webvision(tmp_path / "webvision", classes=50)
    inet = write_imagenet_val(tmp_path / "ilsvrc", classes=50)
    _convert(tmp_path, "--source", tmp_path / "webvision", "--imagenet-val", inet["folder"],
             "--imagenet-val-labels", tmp_path / "ilsvrc" / "val.txt")
    row, = _train(tmp_path, "data.label_set=webvision-noisy", "data.clean_label_set=null", "data.test_split=val",
                  "data.extra_test_splits=[imagenet_val]", "data.loader=stream", "data.transform=imagenet",
                  "data.image_size=32", "data.batch_size=16", "epochs=1")
    assert row["train_samples"] == 100 and "train_acc_clean" not in row
    for key in ("test_acc", "test_top5", "imagenet_val_acc", "imagenet_val_top5"):
        assert 0.0 <= row[key] <= 1.0


@pytest.mark.slow
def test_clothing1m_fixture_trains_alr_on_class_balanced_subsets(tmp_path):
    """The Clothing1M recipe's shape: stream mode, imagenet transforms, a class-balanced subset per
    epoch (24 of the 40 noisy images), ALR keeping soft labels by idx, val and test evaluated."""
    write_clothing1m(tmp_path / "clothing1M")
    _convert(tmp_path, "--source", tmp_path / "clothing1M")
    history = _train(tmp_path, "data.label_set=clothing1m-noisy", "data.clean_label_set=null",
                     "data.extra_test_splits=[val]", "data.loader=stream", "data.transform=imagenet",
                     "data.image_size=32", "data.epoch_samples=24", "epochs=2", "method.name=alr",
                     "method.params.warmup_epochs=1")
    assert [row["train_samples"] for row in history] == [24, 24]
    assert all(0.0 <= row[key] <= 1.0 for row in history for key in ("test_acc", "test_top5", "val_acc"))


@pytest.mark.slow
def test_animal10n_fixture_trains_in_cache_mode(tmp_path):
    write_animal10n(tmp_path / "animal")
    ds = _convert(tmp_path, "--source", tmp_path / "animal")
    row, = _train(tmp_path, "data.label_set=animal10n-noisy", "data.clean_label_set=null", "data.loader=cache",
                  "data.transform=imagenet", "data.image_size=32", "epochs=1")
    assert row["train_samples"] == ds.num_samples("train") and 0.0 <= row["test_acc"] <= 1.0


@pytest.mark.slow
def test_food101n_fixture_trains_and_tests_on_food101(tmp_path):
    write_food101n(tmp_path / "Food-101N_release", tmp_path / "food-101")
    ds = _convert(tmp_path, "--source", tmp_path / "Food-101N_release", "--food101", tmp_path / "food-101")
    row, = _train(tmp_path, "data.label_set=food101n-noisy", "data.clean_label_set=null", "data.loader=stream",
                  "data.transform=imagenet", "data.image_size=32", "epochs=1")
    assert row["train_samples"] == ds.num_samples("train") and 0.0 <= row["test_top5"] <= 1.0


@pytest.mark.slow
def test_cifar100n_fixture_trains_against_noisy_and_clean_labels(tmp_path):
    write_cifar100_python(tmp_path / "raw", n=40)
    fine = np.array([(7 * j) % 100 for j in range(40)])
    write_cifar100n_pt(tmp_path / "CIFAR-100_human.pt", fine)
    _convert(tmp_path, "--source", tmp_path / "raw", "--cifar-n", tmp_path / "CIFAR-100_human.pt",
             "--label-set", "cifar100n-noisy")
    row, = _train(tmp_path, "data.label_set=cifar100n-noisy", "epochs=1")
    assert row["train_samples"] == 40 and 0.0 <= row["train_acc_clean"] <= 1.0 and "memorised" in row

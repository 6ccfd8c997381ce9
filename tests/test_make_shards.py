"""tools/make_shards.py end to end: round trips, add-label-set, bad input, atomic output."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.datasets import source_tree
from support.demo_data import DEMO_CIFAR_N, make_shards_main, tar_tree, write_image_tree
from test_sources import write_cifar100_python

from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.shards import read_shard, sha256_file
from pipeline.make import convert as convert_mod
from pipeline.make import noise

main = make_shards_main()


def _run(*args: str) -> int:
    return main([*map(str, args), "--no-progress"])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# ---------------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------------


def test_tiny_dataset_round_trip_every_idx_once_and_labels_match_keys(tiny_dataset):
    ds = Dataset(tiny_dataset)
    ds.verify()
    src = source_tree(tiny_dataset)
    for split, n in (("train", 200), ("test", 50)):
        assert ds.num_samples(split) == n
        seen = []
        for shard in ds.shard_paths(split):
            for idx, data, ext in read_shard(shard):
                seen.append(idx)
                key = ds.source_keys(split)[idx]
                assert ext == "jpg" and data == (src / key).read_bytes()
        assert seen == list(range(n))  # each idx exactly once, shards in idx order
        clean = ds.labels(split, "clean")
        from_keys = [ds.classes.index(k.split("/")[1]) for k in ds.source_keys(split)]
        assert list(clean) == from_keys
        assert sorted(ds.source_index(split)) == list(range(n))
    assert all(p.is_file() for p in ds.index_paths("train"))
    entry = ds.label_set_entry("train", "sym-0.40-s0")
    assert entry.kind == "symmetric" and entry.params["rate"] == 0.4
    assert entry.noise_rate == pytest.approx(noise.noise_rate(ds.labels("train"), ds.labels("train", "sym-0.40-s0")))
    assert np.allclose(np.sum(entry.transition_matrix, axis=1), 1.0)
    assert ds.manifest.image_ext == "jpg" and ds.manifest.provenance["seed"] == 0


def test_idx_order_is_seeded(tmp_path):
    tree = write_image_tree(tmp_path / "src", {"train": 3})
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        assert _run("--source", tree, "--name", name, "--out", tmp_path / "out", "--seed", seed) == 0
    keys = {n: Dataset(tmp_path / "out" / n).source_keys("train") for n in "abc"}
    assert keys["a"] == keys["b"] and keys["a"] != keys["c"]


def test_demo_archive_with_cifar10n_npz_and_clean_subset(tmp_path, demo_archive):
    rc = _run("--source", demo_archive, "--name", "cifar10-demo", "--out", tmp_path, "--samples-per-shard", 2000,
              "--label-set", "sym-0.40-s0", "--label-set", "cifar10n-worse", "--cifar-n", DEMO_CIFAR_N,
              "--clean-subset", 105)
    assert rc == 0
    ds = Dataset(tmp_path / "cifar10-demo")
    assert ds.num_samples("train") == 5000 and ds.num_samples("test") == 1000
    demo = np.load(DEMO_CIFAR_N)
    published = noise.noise_rate(demo["clean_label"], demo["worse_label"])
    assert ds.label_set_entry("train", "cifar10n-worse").noise_rate == pytest.approx(published, abs=1e-6)
    mask = ds.mask("train", "clean-subset-105-s0")
    counts = np.bincount(ds.labels("train")[mask], minlength=10)
    assert mask.sum() == 105 and counts.min() == 10 and counts.max() == 11
    assert ds.manifest.provenance["source_sha256"] == sha256_file(demo_archive)


def test_cifar100_pickles_convert_with_coarse_and_asym(tmp_path):
    write_cifar100_python(tmp_path / "raw", n=40)
    assert _run("--source", tmp_path / "raw", "--name", "c100", "--out", tmp_path / "out",
                "--label-set", "asym-1.00-s0", "--label-set", "asym-super-1.00-s0") == 0
    ds = Dataset(tmp_path / "out" / "c100")
    ds.verify()
    assert ds.manifest.image_ext == "png" and ds.num_classes == 100
    clean, coarse = ds.labels("train"), ds.labels("train", "coarse")
    assert np.array_equal(coarse, clean % 20)
    assert ds.label_set_entry("train", "asym-1.00-s0").params["variant"] == "cifar100-blocks5"
    assert np.array_equal(ds.labels("train", "asym-1.00-s0"), 5 * (clean // 5) + (clean + 1) % 5)
    assert ds.label_set_entry("train", "asym-super-1.00-s0").params["variant"] == "cifar100-superclass"
    superclass = ds.labels("train", "asym-super-1.00-s0")
    assert np.all(superclass % 20 == clean % 20) and np.all(superclass != clean)  # stays in the superclass


def test_cifar100_asym_from_before_the_blocks_of_5_is_refused_until_regenerated(tmp_path, capsys):
    write_cifar100_python(tmp_path / "raw", n=40)
    out = tmp_path / "out"
    assert _run("--source", tmp_path / "raw", "--name", "c100", "--out", out, "--label-set", "asym-1.00-s0") == 0
    manifest = json.loads((out / "c100" / "manifest.json").read_text())
    manifest["splits"]["train"]["label_sets"]["asym-1.00-s0"]["params"]["variant"] = "cifar100-superclass"
    (out / "c100" / "manifest.json").write_text(json.dumps(manifest))  # as converted by the old code
    with pytest.raises(DatasetError, match="asym-super-1.00-s0"):
        Dataset(out / "c100").labels("train", "asym-1.00-s0")
    assert _run("--add-label-set", "--name", "c100", "--out", out, "--label-set", "asym-1.00-s0", "--force") == 0
    ds = Dataset(out / "c100")
    clean = ds.labels("train")
    assert np.array_equal(ds.labels("train", "asym-1.00-s0"), 5 * (clean // 5) + (clean + 1) % 5)


def test_idn_label_set_from_convert(tmp_path):
    tree = write_image_tree(tmp_path / "src", {"train": 30})
    assert _run("--source", tree, "--name", "d", "--out", tmp_path / "out", "--label-set", "idn-0.40-s0") == 0
    entry = Dataset(tmp_path / "out" / "d").label_set_entry("train", "idn-0.40-s0")
    assert entry.kind == "instance-dependent" and 0.25 < entry.noise_rate < 0.55


# ---------------------------------------------------------------------------------------------
# add-label-set
# ---------------------------------------------------------------------------------------------


def test_add_label_set_leaves_shards_untouched(tmp_path, tiny_dataset):
    ds_dir = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, ds_dir)
    shards = sorted(ds_dir.glob("*.tar")) + sorted(ds_dir.glob("*.idx"))
    before = {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in shards}
    rc = _run("--add-label-set", "--name", "tiny", "--out", tmp_path,
              "--label-set", "pair-0.20-s1", "--label-set", "idn-0.30-s0", "--clean-subset", 30)
    assert rc == 0
    assert {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in shards} == before
    ds = Dataset(ds_dir)
    ds.verify()
    assert {"clean", "sym-0.40-s0", "pair-0.20-s1", "idn-0.30-s0"} <= set(ds.split("train").label_sets)
    assert ds.mask("train", "clean-subset-30-s0").sum() == 30
    assert ds.manifest.provenance["history"][-1]["added"] == ["pair-0.20-s1", "idn-0.30-s0", "clean-subset-30-s0"]
    assert not [p for p in ds_dir.rglob(".*tmp*")]


def test_add_existing_label_set_needs_force(tmp_path, tiny_dataset, capsys):
    shutil.copytree(tiny_dataset, tmp_path / "tiny")
    manifest_before = (tmp_path / "tiny" / "manifest.json").read_text()
    assert _run("--add-label-set", "--name", "tiny", "--out", tmp_path, "--label-set", "sym-0.40-s0") == 2
    assert "already has ['sym-0.40-s0']; pass --force" in capsys.readouterr().err
    assert (tmp_path / "tiny" / "manifest.json").read_text() == manifest_before
    assert _run("--add-label-set", "--name", "tiny", "--out", tmp_path, "--label-set", "sym-0.40-s0", "--force") == 0


# ---------------------------------------------------------------------------------------------
# bad input: each stops with a message naming the file, and leaves no output
# ---------------------------------------------------------------------------------------------


def _expect_error(capsys, out: Path, *args, match: str) -> None:
    assert _run(*args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert _leftovers(out) == [], "a failed conversion must leave nothing behind"


def test_corrupt_image_is_named(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 2})
    good = (tree / "train" / "dog" / "0001.jpg").read_bytes()
    (tree / "train" / "dog" / "0001.jpg").write_bytes(good[: len(good) // 2])
    archive = tar_tree(tree, tmp_path / "src.tar.gz")
    _expect_error(capsys, tmp_path / "out", "--source", archive, "--name", "x", "--out", tmp_path / "out",
                  match="src.tar.gz:src/train/dog/0001.jpg: corrupt")


def test_empty_class_folder_is_named(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    for f in (tree / "train" / "cat").iterdir():
        f.unlink()
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  match="class folder ./train/cat/ is empty")


def test_missing_class_folder_is_named(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1, "test": 1})
    shutil.rmtree(tree / "test" / "frog")
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  match="class folder ./test/frog/ is missing")


def test_missing_split_is_named(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--splits", "train,test", match="split folder ./test/ is missing")


def test_label_file_out_of_range_names_file_and_index(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    labels = np.arange(10) % 10
    labels[7] = 10
    np.save(tmp_path / "mine.npy", labels)
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--label-file", f"mine={tmp_path / 'mine.npy'}", match="mine.npy: label 10 at index 7 is outside [0, 10)")


def test_label_file_count_mismatch_is_named(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    (tmp_path / "mine.txt").write_text("\n".join(["1"] * 9))
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--label-file", f"mine={tmp_path / 'mine.txt'}", match="mine.txt: has 9 labels but the split has 10")


def test_cifar_n_count_mismatch_names_the_file(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 2})
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--label-set", "cifar10n-worse", "--cifar-n", DEMO_CIFAR_N,
                  match="cifar10n-demo.npz has 5000 labels but the split has 20")


def test_label_file_used_in_source_order(tmp_path):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    np.save(tmp_path / "mine.npy", np.arange(10)[::-1].copy())  # source order: airplane..truck
    assert _run("--source", tree, "--name", "x", "--out", tmp_path / "out", "--label-file", f"mine={tmp_path / 'mine.npy'}") == 0
    ds = Dataset(tmp_path / "out" / "x")
    assert np.array_equal(ds.labels("train", "mine"), 9 - ds.labels("train", "clean"))


def test_unknown_label_set_lists_accepted_forms(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--label-set", "sym-0.4-s0", match="accepted forms: sym-<rate>-s<seed>")


def test_existing_output_needs_force_and_force_replaces(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    out = tmp_path / "out"
    assert _run("--source", tree, "--name", "x", "--out", out) == 0
    first = (out / "x" / "manifest.json").read_text()
    assert _run("--source", tree, "--name", "x", "--out", out, "--seed", "5") == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "x" / "manifest.json").read_text() == first
    assert _run("--source", tree, "--name", "x", "--out", out, "--seed", "5", "--force") == 0
    assert Dataset(out / "x").manifest.provenance["seed"] == 5
    assert _leftovers(out) == ["x"]


# ---------------------------------------------------------------------------------------------
# atomicity and resuming
# ---------------------------------------------------------------------------------------------


def _failing_write(after: int, calls: dict):
    real_write = convert_mod.ShardWriter.write

    def failing_write(self, idx, image, ext):
        calls["n"] += 1
        if calls["n"] == after:
            raise OSError("disk full (simulated)")
        return real_write(self, idx, image, ext)

    return failing_write


def _content(ds_dir: Path) -> dict:
    """What must not depend on how the conversion ran: every shard and array (by sha256), classes, counts."""
    ds = Dataset(ds_dir)
    return {name: (split.num_samples, [(s.tar, s.tar_sha256, s.index_sha256) for s in split.shards],
                   {k: v.sha256 for k, v in split.label_sets.items()}, {k: v.sha256 for k, v in split.masks.items()},
                   split.source_index.sha256, split.source_keys_sha256)
            for name, split in ds.manifest.splits.items()} | {"classes": ds.classes}


def test_failure_mid_conversion_keeps_no_dataset_and_keeps_the_old_one(tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "src", {"train": 3})
    out = tmp_path / "out"
    calls = {"n": 0}
    cfg = convert_mod.ConvertConfig(source=tree, name="x", out=out, samples_per_shard=4, progress=False)
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(17, calls))
        with pytest.raises(OSError, match="disk full"):
            convert_mod.convert(cfg)
    assert _leftovers(out) == [".x.partial"]  # no dataset; only the resumable partial state
    # with --force over an existing dataset, a failure keeps the old one intact
    convert_mod.convert(cfg)
    assert _leftovers(out) == ["x"]
    before = json.loads((out / "x" / "manifest.json").read_text())
    calls["n"] = 0
    forced = convert_mod.ConvertConfig(source=tree, name="x", out=out, samples_per_shard=4, progress=False,
                                       force=True, seed=3)
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(17, calls))
        with pytest.raises(OSError):
            convert_mod.convert(forced)
    assert json.loads((out / "x" / "manifest.json").read_text()) == before
    Dataset(out / "x").verify()


def test_interrupted_conversion_resumes_to_the_same_output(tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "src", {"train": 3, "test": 2})  # test 20 (5 shards of 4; written first), train 30
    common = dict(source=tree, samples_per_shard=4, progress=False, labels=convert_mod.LabelRequests(
        label_sets=["sym-0.40-s0", "idn-0.30-s0"], clean_subset=10))
    convert_mod.convert(convert_mod.ConvertConfig(name="x", out=tmp_path / "whole", workers=2, **common))
    calls = {"n": 0}
    cfg = convert_mod.ConvertConfig(name="x", out=tmp_path / "cut", workers=1, **common)
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(17, calls))
        with pytest.raises(OSError, match="disk full"):
            convert_mod.convert(cfg)
    partial = convert_mod.partial_dir(tmp_path / "cut", "x")
    journal = json.loads((partial / "journal.json").read_text())
    assert len(journal["splits"]["test"]["shards"]) == 4  # the 17th write failed: shards 0..3 are complete
    calls["n"] = 0
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(10**9, calls))
        convert_mod.convert(cfg)
    assert calls["n"] == 20 - 16 + 30  # continued after the 16 samples of the complete shards
    assert _leftovers(tmp_path / "cut") == ["x"]
    assert not (tmp_path / "cut" / "x" / "journal.json").exists() and not (tmp_path / "cut" / "x" / ".lock").exists()
    Dataset(tmp_path / "cut" / "x").verify()
    assert _content(tmp_path / "cut" / "x") == _content(tmp_path / "whole" / "x")


def test_partial_state_of_other_options_is_discarded(tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "src", {"train": 3})
    calls = {"n": 0}
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(17, calls))
        with pytest.raises(OSError):
            convert_mod.convert(convert_mod.ConvertConfig(source=tree, name="x", out=tmp_path / "out",
                                                          samples_per_shard=4, progress=False, seed=1))
    calls["n"] = 0
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", _failing_write(10**9, calls))
        convert_mod.convert(convert_mod.ConvertConfig(source=tree, name="x", out=tmp_path / "out",
                                                      samples_per_shard=4, progress=False, seed=2))
    assert calls["n"] == 30  # another seed: everything rewritten
    assert Dataset(tmp_path / "out" / "x").manifest.provenance["seed"] == 2


def test_input_error_after_complete_shards_discards_the_partial_state(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "src", {"train": 3})
    bad = tree / "train" / "truck" / "0002.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    _expect_error(capsys, tmp_path / "out", "--source", tree, "--name", "x", "--out", tmp_path / "out",
                  "--samples-per-shard", 2, "--workers", 1, match="train/truck/0002.jpg: corrupt")


def test_resize_shorter_side_keeps_aspect_and_small_images(tmp_path):
    from PIL import Image

    src = tmp_path / "src" / "train"
    for cls, size in (("wide", (400, 200)), ("tall", (90, 300)), ("small", (50, 40))):
        (src / cls).mkdir(parents=True)
        Image.new("RGB", size, (200, 30, 30)).save(src / cls / "a.png")
    assert _run("--source", tmp_path / "src", "--name", "r", "--out", tmp_path / "out", "--resize-shorter", 64) == 0
    ds = Dataset(tmp_path / "out" / "r")
    sizes = {}
    for shard in ds.shard_paths("train"):
        for idx, data, ext in read_shard(shard):
            image = Image.open(io.BytesIO(data))
            sizes[ds.source_keys("train")[idx].split("/")[1]] = (image.size, ext, image.format)
    assert sizes["wide"] == ((128, 64), "jpg", "JPEG")
    assert sizes["tall"] == ((64, 213), "jpg", "JPEG")
    assert sizes["small"] == ((50, 40), "png", "PNG")  # never upscaled, bytes kept
    assert ds.manifest.image_ext == "jpg;png" and ds.manifest.provenance["resize_shorter"] == 64


def test_help_explains_the_tool(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--label-set NAME" in text and "--add-label-set" in text and "sym-<rate>-s<seed>" in text


def test_manifest_records_image_sizes_and_file_sizes(tmp_path, tiny_dataset):
    from PIL import Image

    ds = Dataset(tiny_dataset)
    assert ds.split("train").image_size_min == ds.split("train").image_size_max == (32, 32)
    for shard in ds.split("train").shards:
        assert shard.tar_bytes == (tiny_dataset / shard.tar).stat().st_size
        assert shard.index_bytes == (tiny_dataset / shard.index).stat().st_size
    src = tmp_path / "src" / "train"
    for cls, size in (("wide", (400, 200)), ("tall", (90, 300))):
        (src / cls).mkdir(parents=True)
        Image.new("RGB", size).save(src / cls / "a.png")
    assert _run("--source", tmp_path / "src", "--name", "r", "--out", tmp_path / "out", "--resize-shorter", 64) == 0
    split = Dataset(tmp_path / "out" / "r").split("train")
    assert (split.image_size_min, split.image_size_max) == ((64, 64), (128, 213))  # as stored, after resizing

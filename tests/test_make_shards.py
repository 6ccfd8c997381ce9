"""tools/make_shards.py end to end: round trips, add-label-set, bad input, atomic output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_CIFAR_N, make_shards_main, tar_tree, write_image_tree
from test_sources import write_cifar100_python

from pipeline import convert as convert_mod
from pipeline import noise
from pipeline.dataset import Dataset
from pipeline.shards import read_shard, sha256_file

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
    src = tiny_dataset.parent.parent / "tiny-src"
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
                "--label-set", "asym-1.00-s0") == 0
    ds = Dataset(tmp_path / "out" / "c100")
    ds.verify()
    assert ds.manifest.image_ext == "png" and ds.num_classes == 100
    clean, coarse = ds.labels("train"), ds.labels("train", "coarse")
    noisy = ds.labels("train", "asym-1.00-s0")
    assert np.array_equal(coarse, clean % 20)
    assert ds.label_set_entry("train", "asym-1.00-s0").params["variant"] == "cifar100-superclass"
    assert np.all(noisy % 20 == clean % 20)  # stays in the superclass


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
              "--label-set", "pair-0.20-s1", "--label-set", "idn-0.30-s0", "--clean-subset", 20)
    assert rc == 0
    assert {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in shards} == before
    ds = Dataset(ds_dir)
    ds.verify()
    assert {"clean", "sym-0.40-s0", "pair-0.20-s1", "idn-0.30-s0"} <= set(ds.split("train").label_sets)
    assert ds.mask("train", "clean-subset-20-s0").sum() == 20
    assert ds.manifest.provenance["history"][-1]["added"] == ["pair-0.20-s1", "idn-0.30-s0", "clean-subset-20-s0"]
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
# atomicity
# ---------------------------------------------------------------------------------------------


def test_failure_mid_conversion_leaves_no_output_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "src", {"train": 3})
    out = tmp_path / "out"
    calls = {"n": 0}
    real_write = convert_mod.ShardWriter.write

    def failing_write(self, idx, image, ext):
        calls["n"] += 1
        if calls["n"] == 17:
            raise OSError("disk full (simulated)")
        return real_write(self, idx, image, ext)

    cfg = convert_mod.ConvertConfig(source=tree, name="x", out=out, samples_per_shard=4, progress=False)
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", failing_write)
        with pytest.raises(OSError, match="disk full"):
            convert_mod.convert(cfg)
    assert _leftovers(out) == []
    # with --force over an existing dataset, a failure keeps the old one intact
    convert_mod.convert(cfg)
    before = json.loads((out / "x" / "manifest.json").read_text())
    calls["n"] = 0
    forced = convert_mod.ConvertConfig(source=tree, name="x", out=out, samples_per_shard=4, progress=False,
                                       force=True, seed=3)
    with monkeypatch.context() as m:
        m.setattr(convert_mod.ShardWriter, "write", failing_write)
        with pytest.raises(OSError):
            convert_mod.convert(forced)
    assert _leftovers(out) == ["x"]
    assert json.loads((out / "x" / "manifest.json").read_text()) == before
    Dataset(out / "x").verify()


def test_help_explains_the_tool(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--label-set NAME" in text and "--add-label-set" in text and "sym-<rate>-s<seed>" in text

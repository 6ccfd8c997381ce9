"""CIFAR-N loading (no torch) and the join to image-folder source keys (pipeline/make/cifar_n.py)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
from support.demo_data import CIFAR10_CLASSES, DEMO_CIFAR_N

from pipeline.make import cifar_n, noise
from pipeline.make.sources import read_image_folder


@pytest.fixture(scope="module")
def full_train_keys(shared_cifar10):
    """Source keys and labels of all 50,000 train images, read from names only (no pixels)."""
    source = read_image_folder(shared_cifar10 / "cifar10-jpg.tar.gz", ["train"], keys_only=True)
    return source.splits["train"].keys, source.splits["train"].labels, source.classes


def test_load_cifar10_human_without_torch(shared_cifar10):
    cn = cifar_n.load(shared_cifar10 / "CIFAR-10_human.pt")
    assert cn.dataset == "cifar10" and len(cn) == 50_000
    assert set(cn.arrays) >= {"clean_label", "aggre_label", "worse_label", "random_label1"}
    assert cn.arrays["worse_label"].dtype == np.int64


def test_load_cifar100_human_finds_noisy_label(shared_cifar10):
    cn = cifar_n.load(shared_cifar10 / "CIFAR-100_human.pt")
    assert cn.dataset == "cifar100"
    assert noise.noise_rate(cn.arrays["clean_label"], cn.arrays["noisy_label"]) == pytest.approx(0.402, abs=5e-4)


def test_join_full_cifar10_folder_matches_clean_labels_and_published_rates(full_train_keys, shared_cifar10):
    keys, folder_labels, classes = full_train_keys
    assert classes == CIFAR10_CLASSES
    cn = cifar_n.load(shared_cifar10 / "CIFAR-10_human.pt")
    rows = cifar_n.original_positions(cn, keys, np.arange(len(keys)), classes)
    assert np.array_equal(cn.arrays["clean_label"][rows], folder_labels)  # every one of the 50,000
    # a shuffled idx order (as make_shards writes) joins the same way
    perm = np.random.default_rng(0).permutation(len(keys))
    shuffled_keys = [keys[p] for p in perm]
    aggre = cifar_n.join(cn, "cifar10n-aggre", shuffled_keys, perm, classes, folder_labels[perm])
    worse = cifar_n.join(cn, "cifar10n-worse", shuffled_keys, perm, classes, folder_labels[perm])
    assert round(100 * noise.noise_rate(folder_labels[perm], aggre), 2) == 9.01
    assert round(100 * noise.noise_rate(folder_labels[perm], worse), 2) == 40.21


def test_join_rejects_count_mismatch_naming_the_file(full_train_keys, shared_cifar10):
    keys, labels, classes = full_train_keys
    cn = cifar_n.load(shared_cifar10 / "CIFAR-10_human.pt")
    with pytest.raises(cifar_n.CifarNError, match="CIFAR-10_human.pt has 50000 labels but the split has 49999"):
        cifar_n.join(cn, "cifar10n-worse", keys[:-1], np.arange(49_999), classes)


def test_join_detects_wrong_clean_labels(full_train_keys, shared_cifar10):
    keys, labels, classes = full_train_keys
    cn = cifar_n.load(shared_cifar10 / "CIFAR-10_human.pt")
    wrong = labels.copy()
    wrong[123] = (wrong[123] + 1) % 10
    with pytest.raises(cifar_n.CifarNError, match="clean label of idx 123"):
        cifar_n.join(cn, "cifar10n-aggre", keys, np.arange(len(keys)), classes, wrong)


def test_join_pickle_source_uses_source_index():
    clean = np.arange(30) % 10
    cn = cifar_n.CifarNLabels(path=DEMO_CIFAR_N, dataset="cifar10",
                              arrays={"clean_label": clean, "worse_label": (clean + 1) % 10})
    perm = np.random.default_rng(0).permutation(30)
    keys = [f"data_batch_1:{p}" for p in perm]
    out = cifar_n.join(cn, "cifar10n-worse", keys, perm, CIFAR10_CLASSES, clean[perm])
    assert np.array_equal(out, (clean[perm] + 1) % 10)


def test_demo_npz_joins_by_key_and_matches_the_full_file(shared_cifar10):
    demo = cifar_n.load(DEMO_CIFAR_N)
    full = cifar_n.load(shared_cifar10 / "CIFAR-10_human.pt")
    assert len(demo) == 5000 and demo.keys is not None
    rows = cifar_n.original_positions(demo, demo.keys[::-1], np.arange(5000), CIFAR10_CLASSES)
    assert np.array_equal(rows, np.arange(5000)[::-1])
    full_rows = cifar_n.original_positions(full, demo.keys, np.arange(5000), CIFAR10_CLASSES)
    assert np.array_equal(full.arrays["worse_label"][full_rows], demo.arrays["worse_label"])


def test_load_refuses_pickles_with_other_classes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"clean_label": Evil()}))
    with pytest.raises(cifar_n.CifarNError, match="evil.pt.*refusing to load builtins.print"):
        cifar_n.load(path)


def test_load_reads_a_numpy_dict_in_a_torch_style_zip(tmp_path):
    path = tmp_path / "small.pt"
    buf = io.BytesIO()
    pickle.dump({"clean_label": np.arange(4), "noisy_label": np.array([1, 1, 2, 3])}, buf, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("small/data.pkl", buf.getvalue())
        z.writestr("small/version", "3\n")
    cn = cifar_n.load(path)
    assert cn.dataset == "cifar100" and list(cn.arrays["noisy_label"]) == [1, 1, 2, 3]


def test_load_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(cifar_n.CifarNError, match="--cifar-n"):
        cifar_n.load(tmp_path / "nope.pt")

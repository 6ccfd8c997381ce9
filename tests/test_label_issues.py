"""Label-issue export (training/label_issues.py, tools/find_label_issues.py): cleanlab's layouts, the
checkpoint reproduces the run's own predictions, and cross-validated folds hold their samples out."""

import csv
import json

import numpy as np
import pytest

from pipeline.format.dataset import Dataset
from support.demo_data import CIFAR10_CLASSES
from support.tools import load_tool
from test_training import _args
from training.label_issues import fold_masks, store_evidence
from training.run import main as run_main

find_main = load_tool("find_label_issues").main

cleanlab = pytest.importorskip("cleanlab", reason="cleanlab is a test dependency: pip install -e .[dev]")

ALR = ("method.name=alr", "method.params.warmup_epochs=1")


def test_fold_masks_partition_and_stratify():
    labels = np.repeat(np.arange(4), [10, 7, 5, 3])
    masks = fold_masks(labels, 3, seed=0)
    assert (np.sum(masks, axis=0) == 1).all()  # every idx in exactly one fold
    for k in range(4):
        sizes = [int((m & (labels == k)).sum()) for m in masks]
        assert max(sizes) - min(sizes) <= 1
    assert all((a == b).all() for a, b in zip(masks, fold_masks(labels, 3, seed=0)))


def test_store_evidence_reads_any_array_generically():
    arrays = {"soft": np.array([[0.1, 0.9], [0.8, 0.2]]), "wrong_event": np.array([3, 0]),
              "clean_prob": np.array([[0.1, 0.2], [0.3, 0.4]])}
    cols = store_evidence(arrays, num_classes=2, names=["cat", "dog"])
    assert list(cols["soft_argmax"]) == ["dog", "cat"] and list(cols["soft_max"]) == [0.9, 0.8]
    assert list(cols["wrong_event"]) == [3, 0]
    # an (N, C) array with C == K is read as a class distribution: a method's soft target
    assert "clean_prob_argmax" in cols


@pytest.mark.slow
def test_export_at_end_of_run_round_trips_through_cleanlab(tiny_dataset, tmp_path):
    assert run_main(_args(tiny_dataset, tmp_path, *ALR, "export_label_issues=true", "tracking.backend=none")) == 0
    out = tmp_path / "r" / "label_issues"
    probs, labels = np.load(out / "pred_probs.npy"), np.load(out / "labels.npy")
    quality, issues = np.load(out / "label_quality.npy"), np.load(out / "label_issues.npy")
    n = len(np.load(tiny_dataset / "labels" / "train" / "sym-0.40-s0.npy"))
    assert probs.shape == (n, 10) and probs.dtype == np.float32 and issues.dtype == bool
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, np.load(tiny_dataset / "labels" / "train" / "sym-0.40-s0.npy"))
    np.testing.assert_array_equal(quality, probs[np.arange(n), labels])

    # the arrays are what cleanlab takes; with cleanlab installed its confident learning made the flags
    from cleanlab.datalab.datalab import Datalab
    from cleanlab.filter import find_label_issues

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flag_rule"] == "cleanlab" and manifest["pred_probs"].startswith("in-sample")
    np.testing.assert_array_equal(find_label_issues(labels=labels, pred_probs=probs), issues)
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probs, issue_types={"label": {}})
    found = lab.get_issues("label")
    assert len(found) == n and set(found.columns) >= {"is_label_issue", "label_score", "predicted_label"}
    np.testing.assert_allclose(found["label_score"], quality, rtol=1e-5)  # both self-confidence

    rows = list(csv.DictReader(open(out / "label_issues.csv")))
    assert len(rows) == issues.sum() > 0
    scores = [float(r["label_quality"]) for r in rows]
    assert scores == sorted(scores)  # most suspicious first
    first = rows[0]
    assert first["source_key"] == Dataset(tiny_dataset).source_keys("train")[int(first["idx"])]
    assert first["given_label"] == CIFAR10_CLASSES[labels[int(first["idx"])]]
    assert first["soft_target_argmax"] in CIFAR10_CLASSES and 0 < float(first["soft_target_max"]) <= 1
    assert (out / "label_issues.png").stat().st_size > 0

    # the tool rebuilds the run from its checkpoint and predicts exactly what the run predicted
    assert find_main([str(tmp_path / "r"), "--out", str(tmp_path / "again"), "--rule", "argmax"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "again" / "pred_probs.npy"), probs, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "label_issues.npy"), probs.argmax(1) != labels)
    assert find_main([str(tmp_path / "r"), "--epoch", "7"]) == 2


def test_folds_predict_each_sample_with_a_model_that_held_it_out(tiny_dataset, tmp_path):
    assert run_main(_args(tiny_dataset, tmp_path, "epochs=1", "tracking.backend=none")) == 0
    out = tmp_path / "cv"
    assert find_main([str(tmp_path / "r"), "--folds", "2", "--out", str(out)]) == 0
    labels = np.load(out / "labels.npy")
    for f, held_out in enumerate(fold_masks(labels, 2, seed=0)):  # the run's seed
        results = json.loads((out / "folds" / f"fold-{f}" / "results.json").read_text())
        assert results["history"][0]["train_samples"] == len(labels) - int(held_out.sum())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["folds"] == 2 and manifest["pred_probs"].startswith("out-of-sample")
    probs = np.load(out / "pred_probs.npy")
    assert probs.shape == (len(labels), 10) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # every row filled by its fold's model


def test_score_counts_flags_against_the_clean_labels():
    score = load_tool("score_label_issues").score

    clean = np.array([0, 1, 2, 0, 1])
    given = np.array([0, 2, 2, 1, 1])  # idx 1 and 3 are wrong
    flagged = np.array([False, True, True, False, False])  # one hit, one false alarm, one miss
    quality = np.array([0.9, 0.1, 0.2, 0.3, 0.8])
    suggested = np.array([0, 1, 0, 0, 1])
    s = score(flagged, quality, suggested, given != clean, clean)
    assert (s["flagged"], s["precision"], s["recall"], s["suggested_acc"]) == (2, 0.5, 0.5, 1.0)
    # idx 1 (0.1) ranks below every right label, idx 3 (0.3) below two of the three: 5 of 6 pairs
    assert s["auroc"] == pytest.approx(5 / 6)


def test_scoring_tables_in_sample_and_held_out_side_by_side(tiny_dataset, tmp_path):
    score_main = load_tool("score_label_issues").main
    assert run_main(_args(tiny_dataset, tmp_path, "epochs=2", "tracking.backend=none", *ALR)) == 0
    run, md = tmp_path / "r", tmp_path / "RESULTS.md"
    assert score_main([str(run), "--append", str(md)]) == 0
    assert score_main([str(run), "--folds", "2", "--append", str(md)]) == 0
    in_sample, held_out = md.read_text().split("## Label issues")[1:]
    assert "in-sample" in in_sample and "2-fold held-out" in held_out
    assert "| store soft_target |" in in_sample and "store" not in held_out.split("Precision/recall")[0]
    assert "| cleanlab |" in held_out and "fold runs trained on" in held_out
    assert (run / "label_issues-2fold" / "folds" / "fold-1" / "results.json").is_file()
    assert not np.array_equal(np.load(run / "label_issues" / "pred_probs.npy"),
                              np.load(run / "label_issues-2fold" / "pred_probs.npy"))
    assert score_main([str(run), "--folds", "1"]) == 2

"""Metrics: gathered predictions count each sample once; training tallies measure memorisation."""

import numpy as np
import torch
from accelerate import Accelerator

from training.evaluation import PAD, TrainTally, gather_by_idx
from training.methods.common.diagnostics import soft_label_diagnostics


def test_gather_by_idx_drops_padding_and_duplicates():
    acc = Accelerator(cpu=True)
    idx = torch.tensor([5, 2, 5, PAD, 0])
    values = torch.tensor([50, 20, 51, 99, 0])
    out_idx, out_values = gather_by_idx(acc, idx, values)
    assert out_idx.tolist() == [0, 2, 5]
    assert out_values.tolist() == [0, 20, 50]  # the first occurrence of a duplicate wins


def test_train_tally_memorisation():
    acc = Accelerator(cpu=True)
    tally = TrainTally(has_clean=True)
    clean = torch.tensor([0, 1, 2, 3])
    noisy = torch.tensor([0, 2, 0, 3])  # samples 1 and 2 are mislabelled
    pred = torch.tensor([0, 2, 2, 1])  # sample 1 memorised its wrong label, sample 2 predicts the truth
    logits = torch.nn.functional.one_hot(pred, 4).float()
    tally.add(logits, torch.tensor(1.5), noisy, clean)
    out = tally.reduced(acc)
    assert out["train_samples"] == 4
    assert out["train_loss"] == 1.5
    assert out["train_acc_noisy"] == 0.5  # samples 0 and 1
    assert out["train_acc_clean"] == 0.5  # samples 0 and 2
    assert out["memorised"] == 0.5  # 1 of the 2 mislabelled


def test_train_tally_without_clean_labels_reports_no_clean_metrics():
    acc = Accelerator(cpu=True)
    tally = TrainTally(has_clean=False)
    tally.add(torch.eye(3), torch.tensor(0.1), torch.tensor([0, 1, 1]), None)
    out = tally.reduced(acc)
    assert "train_acc_clean" not in out and "memorised" not in out
    assert abs(out["train_acc_noisy"] - 2 / 3) < 1e-9


def test_soft_label_diagnostics_counts_corrections_and_breaks():
    clean = np.array([0, 1, 2, 0])
    noisy = np.array([0, 2, 1, 0])  # samples 1 and 2 mislabelled
    soft = np.eye(3)[[0, 1, 1, 2]]  # argmax: 0 (right kept), 1 (corrected), 1 (not corrected), 2 (broken)
    out = soft_label_diagnostics(soft, noisy, clean)
    assert out == {"soft_label_acc": 0.5, "corrected": 0.5, "broken": 0.5}

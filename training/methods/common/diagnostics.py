"""Per-sample diagnostics methods report when the clean labels are known (never used for training)."""

from __future__ import annotations

import numpy as np
import torch


def soft_label_diagnostics(soft: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """How the argmax of a method's soft labels (N, K) relates to the clean labels (N,): accuracy,
    the fraction of wrong given labels it corrected, and of right given labels it broke."""
    pred = soft.argmax(axis=1)
    wrong = noisy != clean
    return {
        "soft_label_acc": float((pred == clean).mean()),
        "corrected": float((pred[wrong] == clean[wrong]).mean()) if wrong.any() else 0.0,
        "broken": float((pred[~wrong] != clean[~wrong]).mean()) if (~wrong).any() else 0.0,
    }


def soft_label_report(soft: np.ndarray, noisy: torch.Tensor, clean: torch.Tensor | None) -> dict[str, float]:
    """soft_label_diagnostics of a store array (N, K) against the run's labels; {} when the clean labels
    are unknown."""
    if clean is None:
        return {}
    return soft_label_diagnostics(soft, noisy.cpu().numpy(), clean.cpu().numpy())

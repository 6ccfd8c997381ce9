"""Evaluation and training-pass metrics, correct with several processes.

Each process sees its own part of a split; predictions are gathered with their idx, padding is
dropped and duplicates are removed by idx, so every sample counts exactly once."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PAD = -1  # idx value marking padding added to equalise gathered tensors


def gather_by_idx(accelerator, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathers (idx (n,), values (n,)) from all processes; returns them sorted by idx, unique."""
    idx = accelerator.pad_across_processes(idx, dim=0, pad_index=PAD)
    values = accelerator.pad_across_processes(values, dim=0, pad_index=PAD)
    idx, values = accelerator.gather(idx), accelerator.gather(values)
    keep = idx != PAD
    idx, values = idx[keep], values[keep]
    order = torch.argsort(idx, stable=True)
    idx, values = idx[order], values[order]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    return idx[first], values[first]


TOP_K = 5


@torch.no_grad()
def eval_pass(fn, models: dict[str, nn.Module], loader, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(models, batch) -> (B, ...) over one pass of `loader` under autocast, every model in eval mode
    (their modes restored afterwards); returns (idx (n,), values (n, ...)) gathered from all processes,
    sorted by idx, every sample once."""
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    all_idx, all_values = [], []
    try:
        for batch in loader:
            with accelerator.autocast():
                all_values.append(fn(models, batch))
            all_idx.append(batch.idx)
    finally:
        for name, model in models.items():
            model.train(modes[name])
    return gather_by_idx(accelerator, torch.cat(all_idx), torch.cat(all_values))


def predict(forward, models: dict[str, nn.Module], loader, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """forward(models, images) -> logits (B, K) (Method.predict) over the whole split; returns (idx (n,),
    top-k classes (n, k), best first), gathered from all processes; k = min(5, number of classes)."""

    def top(models, batch):
        logits = forward(models, batch.images)  # (B, K)
        return logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices  # (B, k)

    return eval_pass(top, models, loader, accelerator)


def top1_top5(top: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracies from top-k predictions (n, k) and labels (n,)."""
    hits = top == labels[:, None]  # (n, k)
    return float(hits[:, 0].float().mean()), float(hits.any(dim=1).float().mean())


FIELDS = ["samples", "loss_sum", "correct_noisy", "correct_clean", "mislabelled", "memorised"]
LOSS_SUM = FIELDS.index("loss_sum")


class TrainTally:
    """Sums over one epoch's training batches (this process only until `reduced`).

    The sums live in one float64 tensor on the batches' device and `add` only launches device ops, so
    a training step never waits for the device to report a number (no host sync); `reduced` reads
    them once at the end of the epoch. Fields: samples, loss_sum (per-batch loss x batch size),
    correct_noisy (prediction == given label), correct_clean (prediction == clean label),
    mislabelled (given != clean), memorised (mislabelled and predicted as the given label).
    """

    def __init__(self, has_clean: bool):
        self.has_clean = has_clean  # clean labels are known, so clean accuracy and memorisation can be measured
        self.totals: torch.Tensor | None = None  # (len(FIELDS),) float64, on the device of the first batch

    def add(self, logits: torch.Tensor, loss: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor | None) -> None:
        """logits (B, K); loss () the batch mean; noisy, clean (B,) int64 labels (clean None when unknown)."""
        pred = logits.argmax(dim=1)
        hit_noisy = pred == noisy
        n = torch.full((), float(pred.numel()), dtype=torch.float64, device=pred.device)  # a fill, not a copy
        terms = [n, loss.detach().double() * n, hit_noisy.sum()]
        if self.has_clean:
            wrong = noisy != clean
            terms += [(pred == clean).sum(), wrong.sum(), (wrong & hit_noisy).sum()]
        else:
            terms += [torch.zeros((), dtype=torch.int64, device=pred.device)] * 3
        step = torch.stack([t.to(torch.float64) for t in terms])
        self.totals = step if self.totals is None else self.totals + step

    def loss_sum(self) -> torch.Tensor | None:
        """() float64 on the device: non-finite once any batch so far had a non-finite loss."""
        return None if self.totals is None else self.totals[LOSS_SUM]

    def reduced(self, accelerator) -> dict[str, float]:
        totals = self.totals if self.totals is not None else torch.zeros(len(FIELDS), dtype=torch.float64)
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum")
        t = dict(zip(FIELDS, totals.tolist()))
        n = max(t["samples"], 1.0)
        out = {
            "train_samples": int(t["samples"]),
            "train_loss": t["loss_sum"] / n,
            "train_acc_noisy": t["correct_noisy"] / n,
        }
        if self.has_clean:
            out["train_acc_clean"] = t["correct_clean"] / n
            out["memorised"] = t["memorised"] / max(t["mislabelled"], 1.0)
        return out


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (n,) for detecting `positives` (n,) bool: the probability that a
    random positive scores higher than a random negative, ties counting half (Mann-Whitney U / (n+ n-)).
    Rank-based with average ranks for ties; NaN when either class is empty."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))

"""Diagnostic figures methods save beside their metrics (PNG, written atomically).

Uses matplotlib's object API (Figure + savefig) so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from training.outputs import write_atomic


def save_figure(fig: Figure, path: Path) -> None:
    """Render to memory, then replace `path` in one rename: a crash never leaves half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def class_name(names: list[str], k: int) -> str:
    return names[k] if k < len(names) else str(k)


def count_histograms(counts: np.ndarray, labels: np.ndarray, wrong: np.ndarray, num_classes: int,
                     names: list[str], title: str) -> Figure:
    """One panel per (given) class: histograms of a per-sample count for samples whose label is right
    and whose label is wrong, on shared integer bins so the two populations compare directly."""
    cols = math.ceil(math.sqrt(num_classes))
    rows = math.ceil(num_classes / cols)
    fig = Figure(figsize=(2.6 * cols, 2.0 * rows + 0.6), layout="constrained")
    fig.suptitle(title)
    top = int(counts.max()) if counts.size else 0
    bins = np.arange(top + 2) - 0.5 if top < 60 else np.linspace(-0.5, top + 0.5, 61)
    for k in range(num_classes):
        ax = fig.add_subplot(rows, cols, k + 1)
        in_class = labels == k
        ax.hist(counts[in_class & ~wrong], bins=bins, alpha=0.6, color="tab:blue", label="label right")
        ax.hist(counts[in_class & wrong], bins=bins, alpha=0.6, color="tab:red", label="label wrong")
        ax.set_title(class_name(names, k), fontsize=8)
        ax.tick_params(labelsize=6)
        if k == 0:
            ax.legend(fontsize=6)
    return fig


def confusion_heatmap(confusion: np.ndarray, names: list[str], title: str,
                      xlabel: str, ylabel: str) -> Figure:
    """Row-normalised heatmap of a (C, C) count matrix (rows sum to 1 where they have samples)."""
    num_classes = confusion.shape[0]
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=np.float64), where=rows > 0)
    side = min(4.0 + 0.35 * num_classes, 24.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="fraction of the row")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if num_classes <= 20:
        ticks = [class_name(names, k) for k in range(num_classes)]
        ax.set_xticks(range(num_classes), ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(num_classes), ticks, fontsize=7)
        for i in range(num_classes):
            for j in range(num_classes):
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] < 0.5 else "black")
    return fig

"""Tests of the diagnostic figures (training/plots.py): the drawn data, not just that a file appears."""

from __future__ import annotations

import numpy as np
from matplotlib.image import AxesImage
from PIL import Image

from training.plots import confusion_heatmap, count_histograms, save_figure


def test_count_histograms_draw_right_and_wrong_labels_per_class():
    counts = np.array([0, 1, 1, 3, 5, 0, 2, 4, 4, 4])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    wrong = np.array([False, False, False, True, True, False, False, True, True, False])
    fig = count_histograms(counts, labels, wrong, 3, ["cat", "dog"], "t")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["cat", "dog", "2"]  # unnamed classes fall back to k
    for ax, k in zip(axes, range(3)):
        right_bars, wrong_bars = ax.containers
        heights = lambda bars: np.array([b.get_height() for b in bars])  # noqa: E731
        in_class = labels == k
        assert heights(right_bars).sum() == (in_class & ~wrong).sum()
        assert heights(wrong_bars).sum() == (in_class & wrong).sum()
    # integer bins: class 0's wrong labels (counts 3 and 5) sit in the bins of 3 and 5
    assert heights(axes[0].containers[1]).tolist() == [0, 0, 0, 1, 0, 1]


def test_confusion_heatmap_shows_row_shares_and_survives_empty_rows():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig = confusion_heatmap(confusion, ["a", "b", "c"], "t", "x", "y")
    image = next(a for a in fig.get_axes()[0].get_children() if isinstance(a, AxesImage))
    np.testing.assert_allclose(image.get_array(), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_save_figure_writes_a_png_in_one_rename(tmp_path):
    fig = confusion_heatmap(np.eye(2, dtype=np.int64), [], "t", "x", "y")
    path = tmp_path / "sub" / "heat.png"
    save_figure(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert [p.name for p in path.parent.iterdir()] == ["heat.png"]  # no temporary left behind

"""ArraySpec: how a method declares a per-sample array of the sample store."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArraySpec:
    """A per-sample array kept in the sample store, rows indexed by the global idx."""

    name: str
    row_shape: tuple[int, ...]  # () for a scalar per sample, (K,) for a soft label
    dtype: str  # numpy dtype name, e.g. "float32", "int32"
    init: float | str = 0.0  # a constant, or "one_hot_labels" (one-hot of the training labels; needs row_shape (K,))

"""Batch: what every loader yields, the same object in stream and cache mode (DESIGN.md rule 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Batch:
    """One batch on the training device; read fields by name, never unpack by position (STYLE 10)."""

    images: Tensor  # (B, 3, H, W) float32, normalised with the transform's mean/std, on the device
    idx: Tensor  # (B,) int64 global sample index (DESIGN.md rule 1), on the device
    views: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, 3, H, W); "weak"/"strong" later

    def __len__(self) -> int:
        return int(self.idx.shape[0])

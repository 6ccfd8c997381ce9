"""Cross-entropy on the given (noisy) labels: the baseline every method is compared with. State: none."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.load.batch import Batch
from training.methods.base import Method, Run


class CE(Method):
    name = "ce"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(logits.float(), labels)}

"""The clean meta subset (EBOMLC, MLC, L2RW, the surrogate): a second stream beside the noisy one.

make_shards records it as a mask of the training split (`--clean-subset M`); the trainer leaves
those samples out of the noisy stream and hands methods that declare `needs.clean_subset` a
CleanSubset: endlessly cycling augmented batches (split across processes like any loader) and
one-pass evaluation batches (for features), with the subset's clean labels."""

from __future__ import annotations

from typing import Iterator

import torch

from pipeline.load.batch import Batch


class CleanSubset:
    def __init__(self, train_loader, eval_loader, labels: torch.Tensor):
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.labels = labels  # (N,) int64 clean labels on the device; trusted only on the subset's idx
        self.num_samples = train_loader.num_samples  # subset size over all processes
        self._passes = 0  # passes started
        self._position = 0  # batches taken from the current pass
        self._batches: Iterator[Batch] = iter(())

    def _start_pass(self, number: int) -> None:
        self.train_loader.set_epoch(number)
        self._batches = iter(self.train_loader)
        self._position = 0

    def next_batch(self) -> Batch:
        """The next augmented clean batch; starts a new reshuffled pass when one ends (every process
        calls this equally often, so passes stay aligned across processes)."""
        batch = next(self._batches, None)
        if batch is None:
            self._start_pass(self._passes)
            self._passes += 1
            batch = next(self._batches)
        self._position += 1
        return batch

    def eval_batches(self) -> Iterator[Batch]:
        """One pass over this process's part of the subset with evaluation transforms."""
        return iter(self.eval_loader)

    def state_dict(self) -> dict:
        return {"passes": self._passes, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        """Continues the stream where the checkpoint left it (same pass, same position)."""
        self._passes = state["passes"]
        if self._passes == 0:
            self._batches = iter(())
            return
        self._start_pass(self._passes - 1)
        for _ in range(state["position"]):
            next(self._batches)
        self._position = state["position"]

"""Process sync for the sample store: gather each step's (idx, values) from every process.

Every process applies the same gathered updates in the same order, so the replicated tables stay
identical (DESIGN rule 5). The transport is torch.distributed (DESIGN "Scale": no home-made one):
whatever backend `accelerate launch` initialised (NCCL on GPUs, gloo on CPU), on the tensors' own
device. `communicator_for()` picks the right Communicator for the current run.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

PAD_IDX = -1  # idx of padding rows in a gathered batch; the store drops them


@runtime_checkable
class Communicator(Protocol):
    process_index: int
    num_processes: int

    def all_gather_padded(self, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx (B_r,) int64, values (B_r, ...) on this process -> (sum_r max_B,), (sum_r max_B, ...).

        Blocks in process order (process 0's rows first); a process with fewer than max_B rows is
        padded with idx = PAD_IDX and zero values.
        """
        ...

    def barrier(self) -> None:
        ...


class SingleProcess:
    """One process: gathering is the identity and a barrier is a no-op."""

    process_index = 0
    num_processes = 1

    def all_gather_padded(self, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return idx, values

    def barrier(self) -> None:
        return None


class TorchDistributed:
    """torch.distributed all_gather over the default (or a given) process group."""

    def __init__(self, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchDistributed needs an initialised torch.distributed process group; "
                               "start the run with `accelerate launch` (or use SingleProcess for one process)")
        self.group = group
        self.process_index = dist.get_rank(group)
        self.num_processes = dist.get_world_size(group)

    def all_gather_padded(self, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if idx.ndim != 1 or values.shape[0] != idx.shape[0]:
            raise ValueError(f"all_gather_padded wants idx (B,) and values (B, ...); got {tuple(idx.shape)} "
                             f"and {tuple(values.shape)}")
        device = idx.device
        values = values.to(device)
        size = torch.tensor([idx.shape[0]], dtype=torch.int64, device=device)
        sizes = [torch.empty_like(size) for _ in range(self.num_processes)]
        dist.all_gather(sizes, size, group=self.group)
        max_b = int(torch.stack(sizes).max())
        # all_gather needs equal shapes: pad to the largest batch with the sentinel idx.
        padded_idx = torch.full((max_b,), PAD_IDX, dtype=torch.int64, device=device)
        padded_idx[: idx.shape[0]] = idx
        padded_values = torch.zeros((max_b, *values.shape[1:]), dtype=values.dtype, device=device)
        padded_values[: values.shape[0]] = values
        idx_parts = [torch.empty_like(padded_idx) for _ in range(self.num_processes)]
        value_parts = [torch.empty_like(padded_values) for _ in range(self.num_processes)]
        dist.all_gather(idx_parts, padded_idx, group=self.group)
        dist.all_gather(value_parts, padded_values.contiguous(), group=self.group)
        return torch.cat(idx_parts), torch.cat(value_parts)

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def communicator_for(accelerator=None) -> Communicator:
    """TorchDistributed when more than one process runs (torch.distributed initialised), else SingleProcess.

    `accelerator` (an accelerate.Accelerator) is optional: Accelerate initialises torch.distributed
    itself, so its presence only serves as a cross-check of the process count.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        comm = TorchDistributed()
        if accelerator is not None and accelerator.num_processes != comm.num_processes:
            raise RuntimeError(f"accelerator reports {accelerator.num_processes} processes but torch.distributed "
                               f"has {comm.num_processes}; pass the matching process group")
        return comm
    return SingleProcess()

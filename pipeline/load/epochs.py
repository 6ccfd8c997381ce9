"""The epoch plan every loader follows: the per-process split, the epoch's order, the seeds.

Below the loaders (pipeline/load/loader.py and the three modes import it; it imports none of them).

Every loader gives the same number of steps in every process, because a distributed step is a
collective: one process with an extra batch would wait forever for the others. `epoch_plan` is
the one rule:

  * the N samples of an epoch are split into P contiguous parts whose sizes differ by at most 1
    (part r = [floor(r N / P), floor((r + 1) N / P)), the same split DALI's readers use);
  * every process takes steps = ceil(min part size / B) steps;
  * a process whose part would need one more batch merges its surplus into its last batch, so
    each sample still appears exactly once per epoch and no padding sample is ever yielded.

Every random draw of a loader comes from `derive_seed(seed, epoch, purpose, process_index)`, one
stream per :class:`SeedPurpose`: an epoch's draws never depend on the epochs before it, so a resumed
run draws what an uninterrupted one would (DESIGN.md rule 7).
"""

from __future__ import annotations

import math
from enum import IntEnum, unique

import numpy as np
import torch


def part_bounds(n: int, num_parts: int, part: int) -> tuple[int, int]:
    """[start, stop) of part `part` when n items are split into num_parts contiguous near-equal parts."""
    return (part * n) // num_parts, ((part + 1) * n) // num_parts


def steps_per_epoch(n: int, num_parts: int, batch_size: int) -> int:
    """Batches every process takes per epoch: ceil(smallest part / batch_size)."""
    if batch_size < 1 or num_parts < 1:
        raise ValueError(f"batch_size and num_processes must be >= 1, got {batch_size} and {num_parts}")
    return math.ceil((n // num_parts) / batch_size)  # the smallest part has floor(n / P) items


def batch_bounds(part_size: int, steps: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) within one process's part for each of its `steps` batches.

    All batches have batch_size items except the last, which takes whatever is left, possibly a
    little more than batch_size (the surplus of a part one item larger than the smallest).
    """
    if steps == 0:
        return []
    bounds = [(i * batch_size, (i + 1) * batch_size) for i in range(steps - 1)]
    bounds.append(((steps - 1) * batch_size, part_size))
    return bounds


def epoch_plan(n: int, batch_size: int, process_index: int, num_processes: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(part [start, stop) of this process, batch bounds relative to the part start)."""
    start, stop = part_bounds(n, num_processes, process_index)
    steps = steps_per_epoch(n, num_processes, batch_size)
    return (start, stop), batch_bounds(stop - start, steps, batch_size)


@unique
class SeedPurpose(IntEnum):
    """What a derived seed is for; "per process" streams take the process index as derive_seed's own
    argument. Never add the index to a purpose: `1 + process_index` once made process 2's
    augmentation seed the fallback loader's shuffle seed. The values are the integers the loaders
    used before they had names, so the streams that did not collide draw what they drew then.
    """

    ORDER = 0  # the epoch's permutation of the kept idx (shared)
    AUGMENT = 1  # crop and flip of the batched torch ops: cache, fallback, DALI's cifar kind (per process)
    DALI = 2  # the DALI pipeline: its reader's shuffle buffer, the imagenet kind's augmentation (per process)
    SHUFFLE = 3  # the fallback's shuffle buffer over its streamed part (shared: the parts differ)
    STRONG = 4  # the strong view (per process)
    WEAK2 = 5  # the second weak view (per process)
    AUTOAUGMENT = 6  # the autoaugment view (per process)


def derive_seed(seed: int, epoch: int, purpose: SeedPurpose, process_index: int = 0) -> int:
    """A 63-bit seed for one stream, independent across (seed, epoch, purpose, process) and stable
    across runs and machines; process_index is 0 for a stream every process shares.

    Always four words: SeedSequence pads its entropy with zeros, so a shorter call would equal a
    longer one ending in 0 ([s, e, 3] is [s, e, 3, 0]). It also means process 0's seeds are the
    three-word seeds the loaders drew before the process index was an argument.
    """
    words = [int(seed), int(epoch), int(SeedPurpose(purpose)), int(process_index)]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_order(kept_idx: np.ndarray, seed: int, epoch: int, train: bool) -> np.ndarray:
    """The epoch's order of the loaded idx (M,), the same in every process: a permutation seeded by
    (seed, epoch) for training, idx order for evaluation. The loaders that read by position (the
    cache, and the stream modes reading by idx) slice their part of it with epoch_plan."""
    if not train:
        return kept_idx
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, SeedPurpose.ORDER))
    perm = torch.randperm(len(kept_idx), generator=generator)
    return kept_idx[perm.numpy()]


# one purpose per view beyond "weak" (which takes AUGMENT's draws): adding a view changes no other view
VIEW_PURPOSES = {"strong": SeedPurpose.STRONG, "weak2": SeedPurpose.WEAK2, "autoaugment": SeedPurpose.AUTOAUGMENT}


def view_generators(views: tuple[str, ...], device: torch.device, seed: int, epoch: int,
                    process_index: int) -> dict[str, torch.Generator]:
    """One generator per asked-for view beyond "weak", for one epoch of one process."""
    generators = {}
    for name in views:
        if name in VIEW_PURPOSES:
            generators[name] = torch.Generator(device=device)
            generators[name].manual_seed(derive_seed(seed, epoch, VIEW_PURPOSES[name], process_index))
    return generators

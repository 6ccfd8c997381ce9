"""numba kernels of the sample store, each beside the plain-numpy reference the tests compare it with.

Every kernel works on a 2-D table (N, R): the store reshapes a scalar-per-sample array to (N, 1) and
a (K,) or (A, B) row to (N, K) / (N, A*B) views before calling. Arguments are C-contiguous;
`idx` is int64 (B,), `values` has the table's dtype and shape (B, R). The kernels do no bounds
checks (the store validates idx first; an index outside [0, N) here would write out of bounds).

Repeated indices within one call are applied sequentially, in the given order, exactly as the loop
in each reference: for `set_rows` the last occurrence wins, for `ema_rows` the EMA is applied
once per occurrence, for `add_rows` every occurrence adds. The store drops padding sentinels and
duplicates before calling, so in training every idx appears at most once per call.

Why numba and a plain loop: an update touches B (4,096) rows of an N x K table; a compiled loop
reads and writes each touched row once, in place, without the temporaries of numpy fancy
indexing (`t[idx] = a*t[idx] + (1-a)*v` builds three (B, K) arrays) or a torch round trip.
Loops are serial on purpose: sequential order is the defined semantics for repeated idx.
A device-resident store uses the torch twins at the end of this file instead.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

SUPPORTED_DTYPES = ("float32", "float64", "int32", "int64")
FLOAT_DTYPES = ("float32", "float64")


# ---------------------------------------------------------------------------------------------
# gather
@njit(cache=True, nogil=True)
def gather_rows(table, idx):
    """table (N, R), idx (B,) int64 -> (B, R) copy of table[idx] (repeats allowed)."""
    out = np.empty((idx.shape[0], table.shape[1]), dtype=table.dtype)
    for b in range(idx.shape[0]):
        i = idx[b]
        for r in range(table.shape[1]):
            out[b, r] = table[i, r]
    return out


def gather_rows_ref(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.stack([table[i].copy() for i in idx]) if len(idx) else np.empty((0, table.shape[1]), table.dtype)


# ---------------------------------------------------------------------------------------------
# set
@njit(cache=True, nogil=True)
def set_rows(table, idx, values):
    """table[idx[b]] = values[b] for b = 0..B-1 in order (a repeated idx keeps its last row)."""
    for b in range(idx.shape[0]):
        i = idx[b]
        for r in range(table.shape[1]):
            table[i, r] = values[b, r]


def set_rows_ref(table: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    for b, i in enumerate(idx):
        table[i] = values[b]


# ---------------------------------------------------------------------------------------------
# EMA
@njit(cache=True, nogil=True)
def ema_rows(table, idx, values, alpha):
    """t = alpha * t + (1 - alpha) * v per row, in order (a repeated idx is averaged in once per occurrence).

    Float tables only. The arithmetic runs in float64 (alpha is a float64) and rounds once to the
    table's dtype, so a float32 table loses no precision to the blend itself.
    """
    beta = 1.0 - alpha
    for b in range(idx.shape[0]):
        i = idx[b]
        for r in range(table.shape[1]):
            table[i, r] = alpha * np.float64(table[i, r]) + beta * np.float64(values[b, r])


def ema_rows_ref(table: np.ndarray, idx: np.ndarray, values: np.ndarray, alpha: float) -> None:
    for b, i in enumerate(idx):
        blended = alpha * table[i].astype(np.float64) + (1.0 - alpha) * values[b].astype(np.float64)
        table[i] = blended.astype(table.dtype)


# ---------------------------------------------------------------------------------------------
# add (counters)
@njit(cache=True, nogil=True)
def add_rows(table, idx, values):
    """table[idx[b]] += values[b] in order (every occurrence of a repeated idx adds). Integers wrap on overflow."""
    for b in range(idx.shape[0]):
        i = idx[b]
        for r in range(table.shape[1]):
            table[i, r] += values[b, r]


def add_rows_ref(table: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    for b, i in enumerate(idx):
        table[i] += values[b]


# ---------------------------------------------------------------------------------------------
# update selection (sentinels, duplicates, range) used by the store before every update
@njit(cache=True, nogil=True)
def first_occurrences(idx, num_rows, seen):
    """Positions to keep from a gathered idx (B,): not the -1 sentinel, first occurrence of each idx.

    `seen` is a zeroed uint8 scratch of length num_rows; it is zero again on return. Returns
    (keep positions (M,) int64 in the given order, position of the first idx outside [0, num_rows)
    other than -1, or -1 when all are in range). O(B), unlike a sort-based np.unique.
    """
    keep = np.empty(idx.shape[0], dtype=np.int64)
    m = 0
    bad = -1
    for b in range(idx.shape[0]):
        i = idx[b]
        if i == -1:
            continue
        if i < 0 or i >= num_rows:
            bad = b
            break
        if seen[i] == 0:
            seen[i] = 1
            keep[m] = b
            m += 1
    for j in range(m):
        seen[idx[keep[j]]] = 0
    return keep[:m], bad


def first_occurrences_ref(idx: np.ndarray, num_rows: int) -> tuple[np.ndarray, int]:
    out_of_range = np.flatnonzero((idx != -1) & ((idx < 0) | (idx >= num_rows)))
    if len(out_of_range):
        return np.empty(0, np.int64), int(out_of_range[0])
    valid = np.flatnonzero(idx != -1)
    _, first = np.unique(idx[valid], return_index=True)
    return valid[np.sort(first)].astype(np.int64), -1


# ---------------------------------------------------------------------------------------------
# torch twins for device-resident tables (the store keeps them on the training device)
#
# Same arithmetic as the numba kernels, as batched index ops that never wait for the device. They
# assume unique idx: the store first redirects padding, duplicates and out-of-range idx to a
# scratch row N that nothing reads (index_copy_ with a repeated idx keeps an unspecified one of
# its rows, so only the scratch row may repeat).
def gather_rows_torch(table, idx):
    """table (N, R) tensor, idx (B,) int64 on its device -> (B, R) copy of table[idx]."""
    return table.index_select(0, idx)


def set_rows_torch(table, idx, values):
    table.index_copy_(0, idx, values)


def ema_rows_torch(table, idx, values, alpha: float):
    """In float64, rounded once to the table's dtype, as ema_rows: bit-identical results."""
    rows = table.index_select(0, idx).double()
    table.index_copy_(0, idx, (alpha * rows + (1.0 - alpha) * values.double()).to(table.dtype))


def add_rows_torch(table, idx, values):
    table.index_copy_(0, idx, table.index_select(0, idx) + values)


def first_occurrences_torch(idx, num_rows: int):
    """Masks over a gathered idx (B,) tensor: (keep: in range and the first occurrence of its idx, bad: outside
    [0, num_rows) and not the -1 sentinel). Fixed shapes, so no host sync; a stable sort keeps the first."""
    in_range = (idx >= 0) & (idx < num_rows)
    bad = ~in_range & (idx != -1)
    ordered, order = torch.sort(idx, stable=True)
    first_in_order = torch.ones_like(ordered, dtype=torch.bool)
    first_in_order[1:] = ordered[1:] != ordered[:-1]
    first = torch.empty_like(first_in_order).scatter_(0, order, first_in_order)
    return first & in_range, bad

"""Each kernel of state/kernels.py against its plain-numpy reference, on both placements: the numba
kernels of host-resident state (repeated idx included) and their torch twins of device-resident
state (unique idx, as the store passes them; "device" is the CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from state import kernels

N = 257
B = 300  # more rows than N/2 so random idx repeat often

ALL_DTYPES = ["float32", "float64", "int32", "int64"]
ROW_WIDTHS = [1, 7]  # a scalar per sample (N, 1) and a row (N, 7)


def _random(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-1000, 1000, size=shape).astype(dtype)


def _case(dtype, width, seed=0, repeats=True):
    rng = np.random.default_rng(seed)
    table = _random(rng, (N, width), dtype)
    if repeats:
        idx = rng.integers(0, N, size=B).astype(np.int64)
        idx[:20] = idx[20:40]  # guarantee repeats, in an order that matters for set/ema
        assert len(np.unique(idx)) < B
    else:
        idx = rng.permutation(N)[: N // 2].astype(np.int64)
    values = _random(rng, (len(idx), width), dtype)
    return table, idx, values


PLACEMENTS = ["host", "device"]
TORCH_TWINS = {kernels.gather_rows: kernels.gather_rows_torch, kernels.set_rows: kernels.set_rows_torch,
               kernels.ema_rows: kernels.ema_rows_torch, kernels.add_rows: kernels.add_rows_torch}


def _run(placement, kernel, table, *args):
    """Runs the numba kernel (host) or its torch twin on tensors (device); updates `table` in place and
    returns the kernel's result as numpy."""
    if placement == "host":
        return kernel(table, *args)
    tensors = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in (table, *args)]
    out = TORCH_TWINS[kernel](*tensors)
    return None if out is None else out.numpy()


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("width", ROW_WIDTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gather_rows_matches_reference(dtype, width, placement):
    table, idx, _ = _case(dtype, width)  # repeats are fine for a gather on both placements
    got = _run(placement, kernels.gather_rows, table, idx)
    assert got.dtype == table.dtype
    np.testing.assert_array_equal(got, kernels.gather_rows_ref(table, idx))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("width", ROW_WIDTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_set_rows_matches_reference(dtype, width, placement):
    table, idx, values = _case(dtype, width, repeats=placement == "host")
    got, want = table.copy(), table.copy()
    _run(placement, kernels.set_rows, got, idx, values)
    kernels.set_rows_ref(want, idx, values)
    np.testing.assert_array_equal(got, want)


def test_set_rows_last_repeat_wins():
    table, idx, values = _case("float32", 7)
    got = table.copy()
    kernels.set_rows(got, idx, values)
    last = {i: b for b, i in enumerate(idx)}
    i = int(idx[0])
    np.testing.assert_array_equal(got[i], values[last[i]])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("width", ROW_WIDTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_add_rows_matches_reference(dtype, width, placement):
    table, idx, values = _case(dtype, width, repeats=placement == "host")
    got, want = table.copy(), table.copy()
    _run(placement, kernels.add_rows, got, idx, values)
    kernels.add_rows_ref(want, idx, values)
    np.testing.assert_array_equal(got, want)
    # independent check: np.add.at is unbuffered, so repeats accumulate (host: every repeat adds)
    expected = table.copy()
    np.add.at(expected, idx, values)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("width", ROW_WIDTHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ema_rows_matches_reference(dtype, width, placement):
    table, idx, values = _case(dtype, width, repeats=placement == "host")
    got, want = table.copy(), table.copy()
    _run(placement, kernels.ema_rows, got, idx, values, 0.7)
    kernels.ema_rows_ref(want, idx, values, 0.7)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_ema_rows_placements_are_bit_identical():
    table, idx, values = _case("float32", 7, repeats=False)
    host, device = table.copy(), table.copy()
    _run("host", kernels.ema_rows, host, idx, values, 0.9)
    _run("device", kernels.ema_rows, device, idx, values, 0.9)
    np.testing.assert_array_equal(device, host)


def test_ema_rows_repeats_apply_in_order():
    table, idx, values = _case("float32", 7)
    got = table.copy()
    kernels.ema_rows(got, idx, values, 0.7)
    # a repeated idx is blended twice, in order
    i = int(idx[0])
    positions = np.flatnonzero(idx == i)
    assert len(positions) >= 2
    row = table[i].astype(np.float64)
    for b in positions:
        row = 0.7 * row + 0.3 * values[b].astype(np.float64)
    np.testing.assert_allclose(got[i], row.astype(np.float32), rtol=1e-6)


def test_ema_rows_alpha_one_keeps_and_zero_replaces():
    table, idx, values = _case("float32", 7)
    keep = table.copy()
    kernels.ema_rows(keep, idx, values, 1.0)
    np.testing.assert_array_equal(keep, table)
    replace = table.copy()
    kernels.ema_rows(replace, idx, values, 0.0)
    want = table.copy()
    kernels.set_rows_ref(want, idx, values)
    np.testing.assert_array_equal(replace, want)


def test_first_occurrences_matches_reference_and_clears_scratch():
    rng = np.random.default_rng(1)
    idx = rng.integers(-1, 50, size=400).astype(np.int64)  # many repeats and -1 sentinels
    seen = np.zeros(50, dtype=np.uint8)
    keep, bad = kernels.first_occurrences(idx, 50, seen)
    want_keep, want_bad = kernels.first_occurrences_ref(idx, 50)
    assert bad == want_bad == -1
    np.testing.assert_array_equal(keep, want_keep)
    assert -1 not in idx[keep] and len(set(idx[keep].tolist())) == len(keep)
    assert not seen.any(), "the scratch must be zero again for the next call"


def test_first_occurrences_torch_matches_reference_as_masks():
    rng = np.random.default_rng(2)
    idx = rng.integers(-1, 50, size=400).astype(np.int64)
    keep, bad = kernels.first_occurrences_torch(torch.from_numpy(idx), 50)
    np.testing.assert_array_equal(np.flatnonzero(keep.numpy()), kernels.first_occurrences_ref(idx, 50)[0])
    assert not bad.any()
    idx = np.array([3, -1, 3, 60, 2, -5], dtype=np.int64)
    keep, bad = kernels.first_occurrences_torch(torch.from_numpy(idx), 50)
    assert np.flatnonzero(bad.numpy()).tolist() == [3, 5] and kernels.first_occurrences_ref(idx, 50)[1] == 3
    assert np.flatnonzero(keep.numpy()).tolist() == [0, 4], "out-of-range idx are dropped, not kept"


def test_first_occurrences_reports_first_out_of_range_position():
    idx = np.array([3, -1, 3, 60, 2, -5], dtype=np.int64)
    seen = np.zeros(50, dtype=np.uint8)
    keep, bad = kernels.first_occurrences(idx, 50, seen)
    assert bad == 3 == kernels.first_occurrences_ref(idx, 50)[1]
    assert not seen.any()


def test_kernels_leave_other_rows_untouched():
    table, idx, values = _case("float32", 7)
    got = table.copy()
    kernels.ema_rows(got, idx, values, 0.5)
    untouched = np.setdiff1d(np.arange(N), idx)
    np.testing.assert_array_equal(got[untouched], table[untouched])

"""SampleStore: initialisation, update semantics, snapshots (atomic, pruned, one writer per shard).

Behaviour tests run on both placements: host-resident (numpy + numba) and device-resident (torch;
the "device" here is the CPU, the same code paths as on a GPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zarr

from state import persist
from state.persist import plan_layout
from state.reader import StateReader
from state.spec import ArraySpec
from state.store import SampleStore

N, K = 103, 4


def _specs():
    return [ArraySpec("soft", (K,), "float32", "one_hot_labels"),
            ArraySpec("count", (), "int32", 0),
            ArraySpec("weight", (), "float64", 1.0),
            ArraySpec("pair", (2, 3), "int64", 5)]


def _labels():
    return np.arange(N) % K


DEVICES = {"host": None, "device": "cpu"}


@pytest.fixture(params=list(DEVICES))
def placement(request) -> str:
    return request.param


def _store(placement="host", **kw):
    return SampleStore(_specs(), N, labels=_labels(), num_classes=K, device=DEVICES[placement], **kw)


def _numpy(rows):
    return rows.numpy() if isinstance(rows, torch.Tensor) else rows


# ---------------------------------------------------------------------------------------------
# construction and reading
def test_store_init_one_hot_from_labels_and_constants(placement):
    store = SampleStore(_specs(), N, labels=torch.as_tensor(_labels()), num_classes=K, device=DEVICES[placement])
    assert store.placement == placement
    soft = store["soft"]
    assert soft.shape == (N, K) and soft.dtype == np.float32
    np.testing.assert_array_equal(soft.argmax(1), _labels())
    np.testing.assert_array_equal(soft.sum(1), np.ones(N))
    assert store["count"].shape == (N,) and not store["count"].any()
    assert (store["weight"] == 1.0).all() and store["pair"].shape == (N, 2, 3) and (store["pair"] == 5).all()


def test_store_init_rejects_bad_labels_naming_the_sample():
    labels = _labels().copy()
    labels[17] = K
    with pytest.raises(ValueError, match="idx 17"):
        SampleStore(_specs(), N, labels=labels, num_classes=K)
    with pytest.raises(ValueError, match="pass labels="):
        SampleStore(_specs(), N)
    with pytest.raises(ValueError, match="num_classes"):
        SampleStore(_specs(), N, labels=_labels(), num_classes=K + 1)
    with pytest.raises(ValueError, match="not supported"):
        SampleStore([ArraySpec("h", (), "float16", 0.0)], N)


def test_store_item_is_read_only(placement):
    store = _store(placement)
    with pytest.raises(ValueError):
        store["count"][0] = 1


def test_store_gather_accepts_torch_and_numpy_and_checks_range(placement):
    store = _store(placement)
    rows = store.gather("soft", torch.tensor([5, 1, 5]))
    assert isinstance(rows, np.ndarray if placement == "host" else torch.Tensor) and rows.shape == (3, K)
    np.testing.assert_array_equal(_numpy(rows), store["soft"][[5, 1, 5]])
    np.testing.assert_array_equal(_numpy(store.gather("pair", np.array([2]))), store["pair"][[2]])
    with pytest.raises(KeyError, match="no array 'nope'"):
        store.gather("nope", [0])
    with pytest.raises(IndexError, match="outside"):
        store.gather("soft", [N])
        store.check()  # device-resident: the step does not wait, the next check raises


def test_device_store_reports_bad_idx_at_the_next_check_and_drops_them():
    store = _store("device")
    before = store["count"].copy()
    store.add("count", torch.tensor([2, N + 5, -7, 3]), 1)  # -7 is not the padding sentinel -1
    store.add("count", torch.tensor([N]), 1)
    with pytest.raises(IndexError, match=rf"3 idx outside \[0, {N}\).*e\.g\. {N + 5}"):
        store["count"]
    after = store["count"]  # reported once; the good rows were applied, the bad ones dropped
    assert after[2] == before[2] + 1 and after[3] == before[3] + 1 and after.sum() == before.sum() + 2


# ---------------------------------------------------------------------------------------------
# updates: sentinels and duplicates dropped, first occurrence kept
def test_store_updates_drop_sentinels_and_keep_first_duplicate(placement):
    store = _store(placement)
    idx = torch.tensor([3, -1, 3, 8, 8])
    soft = torch.tensor([[0.0, 0.0, 0.0, 1.0], [9, 9, 9, 9], [1.0, 0.0, 0.0, 0.0],
                         [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert store.ema("soft", idx, soft, 0.5) == 2
    np.testing.assert_allclose(store["soft"][3], 0.5 * np.eye(K)[3 % K] + 0.5 * np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(store["soft"][8], 0.5 * np.eye(K)[8 % K] + 0.5 * np.array([0, 1, 0, 0]))
    assert store.add("count", idx, torch.tensor([1, 100, 1, 1, 1], dtype=torch.int32)) == 2
    assert store["count"][3] == 1 and store["count"][8] == 1 and store["count"].sum() == 2
    store.set("weight", np.array([7, 7, -1]), np.array([0.25, 0.5, 9.0]))
    assert store["weight"][7] == 0.25
    store.add("count", [1, 2], 3)  # a scalar for every row
    assert store["count"][1] == 3 and store["count"][2] == 3
    store.set("pair", [4], np.full((1, 2, 3), -2))
    assert (store["pair"][4] == -2).all() and (store["pair"][5] == 5).all()


def test_store_update_accepts_half_precision_and_rejects_bad_input(placement):
    store = _store(placement)
    store.ema("soft", torch.tensor([0]), torch.ones(1, K, dtype=torch.bfloat16), 0.0)
    np.testing.assert_array_equal(store["soft"][0], np.ones(K))
    with pytest.raises(ValueError, match="expected"):
        store.set("soft", [0, 1], np.zeros((2, K + 1)))
    with pytest.raises(TypeError, match="not a float"):
        store.ema("count", [0], [1], 0.5)
    with pytest.raises(IndexError, match="outside"):
        store.add("count", [N + 3], [1])
        store.check()
    with pytest.raises(ValueError, match="alpha"):
        store.ema("soft", [0], np.zeros((1, K)), 1.5)


# ---------------------------------------------------------------------------------------------
# snapshots
def _mutate(store, seed):
    rng = np.random.default_rng(seed)
    idx = rng.choice(N, 40, replace=False)
    store.ema("soft", idx, rng.dirichlet(np.ones(K), 40).astype(np.float32), 0.9)
    store.add("count", idx, rng.integers(0, 3, 40).astype(np.int32))
    store.set("weight", idx, rng.random(40))
    store.set("pair", idx, rng.integers(0, 9, (40, 2, 3)))


def _copy(store):
    return {name: store[name].copy() for name in store.names}


def _assert_equal(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_snapshot_load_round_trip_and_state_dict(tmp_path, placement):
    store = _store(placement)
    _mutate(store, 0)
    saved = _copy(store)
    with pytest.raises(RuntimeError, match="no snapshot yet"):
        store.state_dict()
    store.snapshot(tmp_path / "state.zarr", "epoch-0001")
    state = store.state_dict()
    assert state["tag"] == "epoch-0001"
    _mutate(store, 1)
    store.snapshot(tmp_path / "state.zarr", "epoch-0002")

    fresh = _store(placement)
    assert fresh.load(tmp_path / "state.zarr") == "epoch-0002"  # CURRENT
    _assert_equal(_copy(fresh), _copy(store))
    fresh.load_state_dict(state)  # what accelerator.load_state does: the checkpoint's own version
    _assert_equal(_copy(fresh), saved)
    _assert_equal(StateReader(tmp_path).arrays("epoch-0001"), saved)


def test_load_rejects_a_store_of_another_shape(tmp_path):
    _store().snapshot(tmp_path / "state.zarr", "a")
    other = SampleStore([ArraySpec("soft", (K + 1,), "float32", 0.0)], N)
    with pytest.raises(ValueError, match="declares"):
        other.load(tmp_path / "state.zarr")
    with pytest.raises(FileNotFoundError, match="no complete snapshot 'b'"):
        _store().load(tmp_path / "state.zarr", "b")


def _crash_after_first_array(monkeypatch):
    real = persist._write_blocks

    def write_one_then_die(group_path, arrays, layouts, rank):
        first = dict(list(arrays.items())[:1])
        real(group_path, first, layouts, rank)
        raise OSError("disk full (simulated crash in the middle of a snapshot)")

    monkeypatch.setattr(persist, "_write_blocks", write_one_then_die)


def test_crash_during_snapshot_leaves_previous_version_current(tmp_path, monkeypatch):
    directory = tmp_path / "state.zarr"
    store = _store()
    _mutate(store, 0)
    store.snapshot(directory, "good")
    good = _copy(store)
    _mutate(store, 1)
    with monkeypatch.context() as m:
        _crash_after_first_array(m)
        with pytest.raises(OSError, match="simulated crash"):
            store.snapshot(directory, "half")
    assert (directory / "v-half" / "soft").is_dir(), "the crash must happen after part of the version was written"
    reader = StateReader(directory)
    assert reader.current() == "good"
    assert [v.tag for v in reader.versions()] == ["good"], "a half-written version is listed as complete"
    _assert_equal(reader.arrays(), good)
    with pytest.raises(FileNotFoundError):
        reader.arrays("half")
    # the next snapshot with the same tag replaces the leftover
    store.snapshot(directory, "half")
    assert reader.current() == "half"
    _assert_equal(reader.arrays(), _copy(store))


def test_crash_rewriting_the_current_tag_falls_back_to_an_older_version(tmp_path, monkeypatch):
    directory = tmp_path / "state.zarr"
    store = _store()
    store.snapshot(directory, "a")
    first = _copy(store)
    _mutate(store, 2)
    store.snapshot(directory, "b")
    _mutate(store, 3)
    with monkeypatch.context() as m:
        _crash_after_first_array(m)
        with pytest.raises(OSError):
            store.snapshot(directory, "b")  # e.g. a resumed run re-reaching the same step
    reader = StateReader(directory)
    assert reader.current() == "a"
    _assert_equal(reader.arrays(), first)


def test_snapshot_keeps_only_the_newest_versions(tmp_path):
    directory = tmp_path / "state.zarr"
    store = _store()
    for epoch in range(5):
        _mutate(store, epoch)
        store.snapshot(directory, f"epoch-{epoch:04d}", keep=2)
    assert sorted(p.name for p in directory.glob("v-*")) == ["v-epoch-0003", "v-epoch-0004"]
    assert [v.seq for v in StateReader(directory).versions()] == [4, 5]
    with pytest.raises(ValueError, match="tag"):
        store.snapshot(directory, "../escape")


# ---------------------------------------------------------------------------------------------
# one writer per shard
@pytest.mark.parametrize("num_rows", [7, 1001, 50_000, 1_000_003])
@pytest.mark.parametrize("row_bytes", [4, 40, 4000])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_layout_blocks_are_whole_shards_owned_once(num_rows, row_bytes, processes):
    lay = plan_layout(num_rows, row_bytes, processes)
    assert lay.block_rows % lay.shard_rows == 0 and lay.shard_rows % lay.chunk_rows == 0
    assert lay.shard_rows * row_bytes <= max(persist.MAX_SHARD_BYTES, lay.chunk_rows * row_bytes)
    blocks = [lay.block(r) for r in range(processes)]
    assert blocks[0][0] == 0 and blocks[-1][1] == num_rows
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:])), "blocks must tile [0, N)"
    num_shards = -(-num_rows // lay.shard_rows)
    for s in range(num_shards):
        lo, hi = s * lay.shard_rows, min((s + 1) * lay.shard_rows, num_rows)
        owners = [r for r, (a, b) in enumerate(blocks) if a < hi and lo < b]
        assert len(owners) == 1, f"shard {s} rows [{lo}, {hi}) owned by {owners}"
        a, b = blocks[owners[0]]
        assert a <= lo and hi <= b
    assert sorted(r for rank in range(processes) for r in lay.shard_ranges(rank)) == \
        [(s * lay.shard_rows, min((s + 1) * lay.shard_rows, num_rows)) for s in range(num_shards)]


class _ThreadComm:
    """P "processes" as threads sharing a barrier: exercises write_snapshot's per-rank protocol."""

    def __init__(self, rank, barrier):
        self.process_index, self.num_processes, self._barrier = rank, barrier.parties, barrier

    def barrier(self):
        self._barrier.wait(timeout=60)


@pytest.mark.parametrize("processes", [2, 3])
def test_snapshot_with_several_writers_uses_owner_sized_shards(tmp_path, monkeypatch, processes):
    arrays = {"soft": np.random.default_rng(0).random((1001, K)).astype(np.float32),
              "count": np.arange(1001, dtype=np.int32)}
    written: dict[int, list[tuple[str, int, int]]] = {}
    real = persist._write_blocks

    def recording(group_path, arrs, layouts, rank):
        written[rank] = [(name, lo, hi) for name in arrs for lo, hi in layouts[name].shard_ranges(rank)]
        real(group_path, arrs, layouts, rank)

    monkeypatch.setattr(persist, "_write_blocks", recording)
    barrier = threading.Barrier(processes)
    errors = []

    def run(rank):
        try:
            persist.write_snapshot(tmp_path, "t", arrays, [], comm=_ThreadComm(rank, barrier))
        except Exception as err:  # surfaced below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    group = zarr.open_group(str(tmp_path / "v-t"), mode="r")
    for name, table in arrays.items():
        lay = plan_layout(1001, table.itemsize * int(np.prod(table.shape[1:])), processes)
        assert group[name].shards[0] == lay.shard_rows and lay.block_rows % group[name].shards[0] == 0
        np.testing.assert_array_equal(group[name][...], table)
        ranges = [(lo, hi) for rank in written for n, lo, hi in written[rank] if n == name]
        assert len(ranges) == len(set(ranges)), f"{name}: a shard was written twice"
        for rank, items in written.items():
            a, b = lay.block(rank)
            assert all(a <= lo and hi <= b for n, lo, hi in items if n == name)


# ---------------------------------------------------------------------------------------------
# the two placements give identical results
def test_device_and_host_stores_agree_bit_for_bit_through_updates_and_snapshots(tmp_path):
    host, device = _store("host"), _store("device")
    rng = np.random.default_rng(3)
    for _ in range(5):
        idx = rng.integers(-1, N, 60)  # sentinels and repeats: only first occurrences apply
        soft = rng.dirichlet(np.ones(K), 60).astype(np.float32)
        weight = rng.random(60)
        for store in (host, device):
            store.ema("soft", torch.as_tensor(idx), torch.as_tensor(soft), 0.7)
            store.add("count", idx, np.ones(60, np.int32))
            store.set("weight", idx, weight)
        _assert_equal(_copy(device), _copy(host))
    host.snapshot(tmp_path / "h", "t")
    device.snapshot(tmp_path / "d", "t")
    crossed = {"host<-device": _store("host"), "device<-host": _store("device")}
    crossed["host<-device"].load(tmp_path / "d")
    crossed["device<-host"].load(tmp_path / "h")
    for store in crossed.values():
        _assert_equal(_copy(store), _copy(host))
    idx = torch.tensor([4, 9, 4])
    np.testing.assert_array_equal(_numpy(crossed["device<-host"].gather("soft", idx)), host.gather("soft", idx))


def test_alr_steps_give_the_same_soft_targets_and_losses_on_both_placements():
    from support.methods import make_method, make_run, make_store

    n, k = 40, 5
    labels = torch.arange(n) % k
    results = {}
    for placement in DEVICES:
        method = make_method("alr", labels, num_classes=k, warmup_epochs=0)
        run = make_run(method, store=make_store(method, device=DEVICES[placement]), epoch=1)
        gen = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(4):
            idx = torch.randperm(n, generator=gen)[:16]
            logits = torch.randn(16, k, generator=gen)
            batch = type("Batch", (), {"idx": idx})()
            losses.append(method.loss(logits, labels[idx], batch, run)["loss"])
        results[placement] = (torch.stack(losses), run.store["soft_target"])
    torch.testing.assert_close(results["device"][0], results["host"][0], rtol=0, atol=0)
    np.testing.assert_array_equal(results["device"][1], results["host"][1])

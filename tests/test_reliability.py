"""Bad input and faults (DESIGN rule 8): each stops with a message for people, naming the file, sample or key.

CASES is the table: one row per bad input or fault, with what must appear in its message. Every row
must raise a UserError (no traceback at the entry points) whose message holds the expected text and
no object repr. The tests below the table cover what a row cannot: processes killed or interrupted,
both loader modes, a bug keeping its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support.demo_data import DEMO_CIFAR_N, make_shards_main, write_image_tree
from PIL import Image

from pipeline.errors import UserError, describe_os_error
from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.locks import FolderLock
from pipeline.load.decode import fit
from pipeline.make import convert
from training.config import load_config
from training.methods import build_method

REPO = Path(__file__).resolve().parents[1]
make_shards = make_shards_main()


def _copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset, free to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "data" / dataset.name))


def _config(dataset: Path, out: Path, *extra: str):
    return load_config(REPO / "training/configs/demo_cpu.yaml", [
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=32", "data.eval_batch_size=64", "epochs=1", *extra])


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _convert(tmp_path: Path, tree: Path, *args) -> None:
    convert.convert(convert.ConvertConfig(source=tree, name="x", out=tmp_path / "out", progress=False, workers=1,
                                          labels=convert.LabelRequests(**dict(args))))


# ---------------------------------------------------------------------------------------------
# the table: each case makes one fault and raises
# ---------------------------------------------------------------------------------------------


def corrupt_image(tmp_path, dataset):
    tree = write_image_tree(tmp_path / "src", {"train": 1})
    (tree / "train" / "dog" / "0000.jpg").write_bytes(b"this is not an image")
    _convert(tmp_path, tree)


def cifar_n_label_out_of_range(tmp_path, dataset):
    with np.load(DEMO_CIFAR_N) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["worse_label"][3] = 10
    np.savez(tmp_path / "bad-n.npz", **arrays)
    _convert(tmp_path, write_image_tree(tmp_path / "src", {"train": 1}),
             ("label_sets", ["cifar10n-worse"]), ("cifar_n", tmp_path / "bad-n.npz"))


def label_file_out_of_range(tmp_path, dataset):
    np.save(tmp_path / "mine.npy", np.array([0, 1, 2, 3, -1, 5, 6, 7, 8, 9]))
    _convert(tmp_path, write_image_tree(tmp_path / "src", {"train": 1}),
             ("label_files", {"mine": tmp_path / "mine.npy"}))


def mixed_image_sizes_with_cifar_transform(tmp_path, dataset):
    for cls, size in (("a", (32, 32)), ("b", (40, 30))):
        (tmp_path / "src" / "train" / cls).mkdir(parents=True)
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "src" / "train" / cls / "0.png")
    _convert(tmp_path, tmp_path / "src")
    Dataset(tmp_path / "out" / "x").check_image_size(["train"], 32)


def image_of_other_size_at_decode(tmp_path, dataset):
    fit(torch.zeros(3, 40, 30, dtype=torch.uint8), 32, False, "x-000000.tar: sample idx 7 (.png)")


def label_array_changed_after_conversion(tmp_path, dataset):
    ds = _copy(dataset, tmp_path)
    labels = np.load(ds / "labels/train/sym-0.40-s0.npy")
    labels[0] = (labels[0] + 1) % 10  # still a valid label: only the hash can tell
    np.save(ds / "labels/train/sym-0.40-s0.npy", labels)
    Dataset(ds).labels("train", "sym-0.40-s0")


def mask_changed_after_conversion(tmp_path, dataset):
    ds = _copy(dataset, tmp_path)
    path = ds / "labels/train/masks/clean-subset-20-s0.npy"
    mask = np.load(path)
    np.save(path, ~mask)
    Dataset(ds).mask("train", "clean-subset-20-s0")


def shard_truncated_quick_check(tmp_path, dataset):
    ds = _copy(dataset, tmp_path)
    path = ds / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:-512])
    Dataset(ds).verify(["train"], "quick", shards_only=True)


def shard_changed_same_size_full_check(tmp_path, dataset):
    ds = _copy(dataset, tmp_path)
    _flip_byte(ds / "train-000002.tar", 2000)
    Dataset(ds).verify(["train"], "full", shards_only=True)


def shard_index_missing(tmp_path, dataset):
    ds = _copy(dataset, tmp_path)
    (ds / "test-000000.idx").unlink()
    Dataset(ds).verify(["test"], "quick", shards_only=True)


def config_error_does_not_dump_the_config(tmp_path, dataset):
    load_config(REPO / "training/configs/demo_cpu.yaml", ["optim.schedule=multistep", "optim.milestones=[100]"])


def unknown_method(tmp_path, dataset):
    build_method("nope", {}, None)


def convert_while_another_converts(tmp_path, dataset):
    partial = convert.partial_dir(tmp_path / "out", "x")
    partial.mkdir(parents=True)
    with _holder(partial):
        _convert(tmp_path, write_image_tree(tmp_path / "src", {"train": 1}))


def second_run_with_the_same_run_name(tmp_path, dataset):
    from training.trainer import Trainer

    (tmp_path / "runs" / "r").mkdir(parents=True)
    with _holder(tmp_path / "runs" / "r"):
        Trainer(_config(dataset, tmp_path / "runs"))


def loss_diverges(tmp_path, dataset):
    from training.trainer import Trainer

    Trainer(_config(dataset, tmp_path / "runs", "optim.lr=1e30", "log_every=1")).fit()


def disk_full(tmp_path, dataset):
    raise UserError(describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.partial/a.tar"),
                                      "--out"))


CASES = [
    # (case, text the message must hold)
    (corrupt_image, "train/dog/0000.jpg: corrupt or unreadable image (not in an image format Pillow can identify)"),
    (cifar_n_label_out_of_range, "bad-n.npz: worse_label[3] = 10 is outside [0, 10)"),
    (label_file_out_of_range, "mine.npy: label -1 at index 4 is outside [0, 10)"),
    (mixed_image_sizes_with_cifar_transform, "images of from 32x30 to 40x32 px, but data.transform=cifar needs"),
    (image_of_other_size_at_decode, "sample idx 7 (.png) is 30x40 px but the cifar transform expects 32x32 "
                                    "(data.image_size=32): set data.transform=imagenet"),
    (label_array_changed_after_conversion, "sym-0.40-s0.npy (label set 'sym-0.40-s0' of split 'train') does not "
                                           "match its sha256"),
    (mask_changed_after_conversion, "clean-subset-20-s0.npy (mask 'clean-subset-20-s0' of split 'train') does not "
                                    "match its sha256"),
    (shard_truncated_quick_check, "train-000001.tar has"),
    (shard_changed_same_size_full_check, "train-000002.tar does not match its sha256"),
    (shard_index_missing, "test-000000.idx is missing"),
    (config_error_does_not_dump_the_config, "optim.milestones [100] must be < epochs"),
    (unknown_method, "method.name: unknown method 'nope'"),
    (convert_while_another_converts, "is being written by another make_shards (pid "),
    (second_run_with_the_same_run_name, "is in use by another run (pid "),
    (loss_diverges, "is not finite (latest"),
    (disk_full, "no space left on the device (/data/x.partial/a.tar): free space or choose another --out"),
]


@pytest.mark.parametrize("case, expected", CASES, ids=[case.__name__ for case, _ in CASES])
def test_bad_input_stops_with_a_message_for_people(case, expected, tmp_path, tiny_dataset):
    with pytest.raises(UserError) as info:
        case(tmp_path, tiny_dataset)
    message = str(info.value)
    assert expected in message, message
    assert " at 0x" not in message and "object at" not in message, message
    assert "'root'" not in message, "a config error must not dump the whole config"


# ---------------------------------------------------------------------------------------------
# processes: a lock holder elsewhere, kill -9, Ctrl-C
# ---------------------------------------------------------------------------------------------


class _holder:
    """Another process that holds the lock of `folder` (and forks workers that keep running)."""

    SCRIPT = """
import sys, time
from pathlib import Path
from pipeline.format.locks import FolderLock
from pipeline.make.shard_stream import make_pool
lock = FolderLock(Path(sys.argv[1]), "busy")
pool = make_pool(2)
list(pool.map(abs, range(4)))  # the workers are forked now, holding whatever they inherited
print(" ".join(map(str, pool._processes)), flush=True)
time.sleep(120)
"""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> int:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(self.folder)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        self.workers = [int(p) for p in self.proc.stdout.readline().split()]
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.kill()
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path("/proc").is_dir() else True


def test_lock_is_free_after_kill_9_even_while_workers_run(tmp_path):
    holder = _holder(tmp_path)
    holder.__enter__()
    try:
        assert holder.workers and all(_alive(pid) for pid in holder.workers)
        holder.kill()  # kill -9 of the main process only: its workers are orphans now
        FolderLock(tmp_path, "still held by pid {pid}").release(remove=False)  # not inherited by the workers
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in holder.workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in holder.workers), "workers outlived their parent"
    finally:
        holder.__exit__()


SLOW_CONVERT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a background job inherits SIGINT ignored
import pipeline.make.shard_stream as s
real = s._encode_chunk
def slow(*args):
    time.sleep(1.0)
    return real(*args)
slow.__qualname__ = "_encode_chunk"
slow.__module__ = "pipeline.make.shard_stream"
s._encode_chunk = slow
sys.path.insert(0, "tools")
from make_shards import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_of_make_shards_is_quiet_and_resumable(tmp_path):
    tree = write_image_tree(tmp_path / "src", {"train": 32})  # 320 images: 5 chunks of 64 (shard_stream.CHUNK)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, "--source", str(tree), "--name", "x", "--out",
                             str(tmp_path / "out"), "--workers", "2", "--samples-per-shard", "2", "--no-progress"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    journal = convert.partial_dir(tmp_path / "out", "x") / "journal.json"
    deadline = time.monotonic() + 60
    while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion ended before it could be interrupted (5 chunks of >= 1 s each)"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; run the same command again" in err
    assert make_shards(["--source", str(tree), "--name", "x", "--out", str(tmp_path / "out"), "--no-progress"]) == 0


# ---------------------------------------------------------------------------------------------
# integrity before training, in both loader modes; make_shards --verify
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["cache", "stream"])
@pytest.mark.parametrize("damage, expected", [
    ("labels/train/sym-0.40-s0.npy", "sym-0.40-s0.npy (label set 'sym-0.40-s0' of split 'train') does not match"),
    ("train-000003.tar", "train-000003.tar does not match its sha256"),
])
def test_a_run_refuses_a_dataset_changed_after_conversion(tmp_path, tiny_dataset, loader, damage, expected,
                                                          monkeypatch):
    from training.trainer import Trainer

    ds = _copy(tiny_dataset, tmp_path)
    _flip_byte(ds / damage, 200 if damage.endswith(".npy") else 1000)  # .npy: a data byte after the header
    monkeypatch.setattr(Trainer, "_train_epoch", lambda *a: pytest.fail("trained on a changed dataset"))
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Trainer(_config(ds, tmp_path / "runs", f"data.loader={loader}")).fit()


def test_verify_reports_every_bad_file(tmp_path, tiny_dataset, capsys):
    ds = _copy(tiny_dataset, tmp_path)
    assert make_shards(["--verify", "tiny", "--out", str(ds.parent), "--no-progress"]) == 0
    _flip_byte(ds / "train-000000.tar", 1000)
    (ds / "test-000000.idx").unlink()
    _flip_byte(ds / "labels/train/clean.npy", 300)
    capsys.readouterr()
    assert make_shards(["--verify", "tiny", "--out", str(ds.parent), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "train-000000.tar does not match its sha256" in err
    assert "test-000000.idx is missing" in err
    assert "labels/train/clean.npy does not match its sha256" in err
    assert "3 file(s)" in err


# ---------------------------------------------------------------------------------------------
# entry points: people get a message, bugs keep their traceback
# ---------------------------------------------------------------------------------------------


def test_run_prints_user_errors_and_keeps_the_traceback_of_bugs(tmp_path, tiny_dataset, monkeypatch, capsys):
    from training import run

    args = ["--config", str(REPO / "training/configs/demo_cpu.yaml"), "data.loader=fast"]
    assert run.main(args) == 2
    assert capsys.readouterr().err.startswith("error: invalid config")

    def bug(*_a, **_k):
        raise ValueError("a bug")

    monkeypatch.setattr(run, "load_config", bug)
    with pytest.raises(ValueError, match="a bug"):
        run.main(args)


def test_make_shards_keeps_the_traceback_of_bugs(tmp_path, monkeypatch):
    monkeypatch.setattr(convert.ShardWriter, "write", lambda *a: (_ for _ in ()).throw(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        make_shards(["--source", str(write_image_tree(tmp_path / "src", {"train": 1})), "--name", "x", "--out",
                     str(tmp_path / "out"), "--no-progress", "--workers", "1"])

"""Streaming shard writing for make_shards: parallel verify/resize, bounded memory, resumable.

A split is written in idx order. Records are read, fully decoded (so a corrupt file stops the
conversion by name) and optionally resized by a pool of worker processes, a chunk of records per
task; at most ``window`` chunks are in flight, so memory holds a few hundred images whatever the
dataset size. The main process appends results to the ShardWriter in order.

Resuming: the conversion directory holds ``journal.json``: a fingerprint of everything that decides
the shard bytes (source listing, seed, shard size, resize options) and, per split, the shards
completed so far (with their sha256). The journal is rewritten (atomically) after each completed
shard; a re-run with the same fingerprint checks the listed shards and continues after the last
good one. A different fingerprint discards the partial state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.format.shards import ShardInfo, ShardWriter, sha256_file
from pipeline.make.sources import Record, decode_image
from pipeline.make.sources.base import image_error

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
CHUNK = 64  # records per worker task: large enough to amortise the task overhead, small for latency


# ---------------------------------------------------------------------------------------------
# one image: verify, optionally resize (worker side)
# ---------------------------------------------------------------------------------------------


def encode_image(data: bytes, ext: str, where: str, resize_shorter: int | None,
                 quality: int) -> tuple[bytes, str, tuple[int, int]]:
    """Verifies an image by decoding it; with ``resize_shorter`` an image whose shorter side is longer
    is resized to it (aspect kept, bicubic) and re-encoded as JPEG; smaller ones keep their bytes.
    Returns (bytes, ext, (width, height) as stored)."""
    if resize_shorter is None:
        return data, ext, decode_image(data, where).size
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        short = min(w, h)
        if short <= resize_shorter:
            image.load()
            return data, ext, (w, h)
        scale = resize_shorter / short
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image.draft(None, size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that stays >= size (much faster)
        image.load()
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        resized = image.resize(size, Image.BICUBIC)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise image_error(where, err) from err
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "jpg", size


def _encode_chunk(items: list[tuple[int, Record, str]], resize_shorter: int | None, quality: int):
    """[(idx, record, where)] -> [(idx, bytes, ext, (width, height))] in the same order."""
    return [(idx, *encode_image(rec.read(), rec.ext, where, resize_shorter, quality)) for idx, rec, where in items]


@dataclass
class SplitStats:
    """What a split's images are like: member extensions and the range of (width, height) stored."""

    exts: set[str] = field(default_factory=set)
    size_min: tuple[int, int] | None = None
    size_max: tuple[int, int] | None = None

    def add(self, ext: str, size: tuple[int, int]) -> None:
        self.exts.add(ext)
        self.size_min = size if self.size_min is None else (min(self.size_min[0], size[0]), min(self.size_min[1], size[1]))
        self.size_max = size if self.size_max is None else (max(self.size_max[0], size[0]), max(self.size_max[1], size[1]))

    def to_json(self) -> dict:
        return {"exts": sorted(self.exts), "size_min": self.size_min, "size_max": self.size_max}

    @classmethod
    def from_json(cls, saved: dict) -> "SplitStats":
        size_min, size_max = saved.get("size_min"), saved.get("size_max")
        return cls(set(saved.get("exts", [])), tuple(size_min) if size_min else None,
                   tuple(size_max) if size_max else None)


# ---------------------------------------------------------------------------------------------
# journal
# ---------------------------------------------------------------------------------------------


def fingerprint(parts: dict, splits: dict[str, tuple[list[str], np.ndarray]]) -> str:
    """sha256 over the options that decide shard bytes and every split's (keys, labels) listing."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for name in sorted(splits):
        keys, labels = splits[name]
        h.update(name.encode() + b"\0")
        h.update("\n".join(keys).encode())
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


class Journal:
    """Completed shards per split, persisted in ``<dir>/journal.json`` after every shard."""

    def __init__(self, directory: Path, fp: str):
        self.path = Path(directory) / JOURNAL
        self.fingerprint = fp
        self.splits: dict[str, dict] = {}

    @classmethod
    def load(cls, directory: Path, fp: str) -> "Journal":
        """The journal in `directory` if it matches `fp`, with shards re-checked; else an empty one."""
        journal = cls(directory, fp)
        try:
            saved = json.loads(journal.path.read_text())
        except (OSError, ValueError):
            return journal
        if saved.get("fingerprint") != fp:
            log.warning("%s: partial conversion of a different source or options; starting over", directory)
            return journal
        for split, state in saved.get("splits", {}).items():
            good: list[dict] = []
            for shard in state.get("shards", []):
                tar, index = Path(directory) / shard["tar"], Path(directory) / shard["index"]
                if not (tar.is_file() and index.is_file() and sha256_file(tar) == shard["tar_sha256"]
                        and sha256_file(index) == shard["index_sha256"]):
                    log.warning("%s: shard %s does not match the journal; rewriting from there", directory, tar.name)
                    break
                good.append(shard)
            complete = state.get("complete", False) and len(good) == len(state.get("shards", []))
            journal.splits[split] = {"shards": good, "stats": state.get("stats", {}), "complete": complete}
        return journal

    def done(self, split: str) -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.splits.get(split, {}).get("shards", [])]

    def is_complete(self, split: str) -> bool:
        return self.splits.get(split, {}).get("complete", False)

    def stats(self, split: str) -> SplitStats:
        return SplitStats.from_json(self.splits.get(split, {}).get("stats", {}))

    def record(self, split: str, shards: list[ShardInfo], stats: SplitStats, complete: bool) -> None:
        self.splits[split] = {"shards": [asdict(s) for s in shards], "stats": stats.to_json(), "complete": complete}
        tmp = self.path.with_name(f".{JOURNAL}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "splits": self.splits}))
        os.replace(tmp, self.path)

    def num_done(self) -> int:
        return sum(len(s["shards"]) for s in self.splits.values())


# ---------------------------------------------------------------------------------------------
# one split
# ---------------------------------------------------------------------------------------------


def _init_worker(parent: int) -> None:
    """Ctrl-C is the main process's to handle (it stops the pool; no traceback per worker), and a
    worker exits when its parent is gone (killed with -9, it cannot stop the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def make_pool(workers: int) -> Executor | None:
    """A process pool of `workers` (None: encode in this process)."""
    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(os.getpid(),))


def write_split(
    directory: Path,
    split: str,
    records: Sequence[Record],
    perm: np.ndarray,
    samples_per_shard: int,
    journal: Journal,
    where: Callable[[Record], str],
    pool: Executor | None = None,
    resize_shorter: int | None = None,
    quality: int = 90,
    progress: bool = True,
    desc: str = "",
) -> tuple[list[ShardInfo], SplitStats]:
    """Writes records[perm[idx]] for idx = 0..N-1 into shards, continuing after the journal's completed
    shards; returns (all shards, what the images are like)."""
    n = len(perm)
    if journal.is_complete(split):
        log.info("%s: complete in the journal (%d shards); skipping", split, len(journal.done(split)))
        return journal.done(split), journal.stats(split)
    writer = ShardWriter(directory, split, samples_per_shard)
    writer.shards = journal.done(split)
    stats = journal.stats(split) if writer.shards else SplitStats()
    start = len(writer.shards) * samples_per_shard
    if start:
        log.info("%s: resuming at idx %d (%d shards done)", split, start, len(writer.shards))
    window = 4 * getattr(pool, "_max_workers", 1)
    pending: deque[Future | list] = deque()
    next_idx = start

    def submit() -> None:
        nonlocal next_idx
        stop = min(next_idx + CHUNK, n)
        items = [(idx, records[perm[idx]], "") for idx in range(next_idx, stop)]
        items = [(idx, rec, where(rec)) for idx, rec, _ in items]
        next_idx = stop
        if pool is None:
            pending.append(_encode_chunk(items, resize_shorter, quality))
        else:
            pending.append(pool.submit(_encode_chunk, items, resize_shorter, quality))

    bar = tqdm(total=n, initial=start, desc=desc or split, unit="img", disable=not progress, leave=False)
    try:
        while next_idx < n and len(pending) < window:
            submit()
        while pending:
            head = pending.popleft()
            results = head.result() if isinstance(head, Future) else head
            if next_idx < n:
                submit()
            for idx, data, ext, size in results:
                before = len(writer.shards)
                writer.write(idx, data, ext)
                stats.add(ext, size)
                if len(writer.shards) != before:
                    journal.record(split, writer.shards, stats, complete=False)
            bar.update(len(results))
    finally:
        bar.close()
        for f in pending:
            if isinstance(f, Future):
                f.cancel()
    shards = writer.close()
    journal.record(split, shards, stats, complete=True)
    return shards, stats

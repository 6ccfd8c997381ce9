"""An exclusive lock on a folder, so two processes never write it at once (conversions, runs).

The lock is an flock on ``<folder>/.lock``, which holds the owner's pid for the refusal message.
A forked child (a conversion worker, a data-loader worker) closes its copy at once: flock locks
belong to the open file, so a child that kept the copy would keep the folder locked after its
parent was killed (kill -9 runs no cleanup). Within one process, a new lock of a folder takes over
from an older one (a Trainer built again after a failed one, whose traceback may still hold it).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.errors import UserError

LOCK_FILE = ".lock"
_held: list["FolderLock"] = []


def _close_in_child() -> None:
    for lock in _held:
        lock.file.close()
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderLocked(UserError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """Holds the lock of `folder` until release() or the end of the process.

    `busy` is the refusal message; the text ``{pid}`` in it is replaced by the holder's pid."""

    def __init__(self, folder: Path, busy: str):
        self.path = Path(folder) / LOCK_FILE
        for older in [lock for lock in _held if lock.path.resolve() == self.path.resolve()]:
            older.release(remove=False)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            pid = self.file.read().strip() or "unknown"
            self.file.close()
            raise FolderLocked(busy.replace("{pid}", pid)) from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        _held.append(self)

    def release(self, remove: bool = True) -> None:
        """Unlocks; `remove` also deletes the lock file (when the folder is finished)."""
        if self in _held:
            _held.remove(self)
        if remove:
            self.path.unlink(missing_ok=True)
        self.file.close()

"""The one base class of errors meant for people (DESIGN rule 8), and how entry points print them.

An entry point (training/run.py, tools/make_shards.py) catches :class:`UserError` and prints its
message without a traceback; it also catches OSError (disk full, read-only folder, permissions),
printed by :func:`describe_os_error`. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input or a refused request: the message names the file, sample or key and what to do."""


def describe_os_error(err: OSError, where: str) -> str:
    """One line for an OSError: what failed, on which path, and what to do. `where` names the option
    that chooses the location (e.g. "--out" or "out_dir=...")."""
    path = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device{path}: free space or choose another {where}"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{err.strerror}{path}: choose a writable {where}, or fix the permissions"
    return f"{err.strerror or err}{path}"


class ConfigError(UserError, ValueError):
    """A recipe, override or setting is wrong; the message names the key (e.g. data.epoch_samples)."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss stopped being finite: a setting to change (learning rate, precision), not a bug."""

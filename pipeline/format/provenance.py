"""Which code produced an artefact: the git commit of this checkout and whether it had changes.
Used by the converter (manifest provenance) and the trainer (results.json)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_version(include_untracked: bool = False) -> dict:
    """{"commit": sha or "unknown", "dirty": uncommitted changes (None when git is unavailable)}."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", *(() if include_untracked else ("--untracked-files=no",)))
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}

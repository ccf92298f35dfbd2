"""The working tree outside the places a run may write (see tests/test_working_tree.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_TOP = {".git", ".venv", ".erpsync"}


def allowed(relative: Path) -> bool:
    parts = relative.parts
    return parts[0] in ALLOWED_TOP or parts[0].endswith(".egg-info") or "__pycache__" in parts


def snapshot(root: Path = ROOT) -> dict[str, int]:
    """Every file and directory outside the allowed places -> its modification time (ns; 0 for a directory).

    A directory counts by its presence only: its time changes when Python adds a __pycache__ to it.
    """
    seen: dict[str, int] = {}
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = [d for d in dirs if not allowed((here / d).relative_to(root))]
        for name in [*dirs, *files]:
            path = here / name
            try:
                key = str(path.relative_to(root)) + ("/" if name in dirs else "")
                seen[key] = 0 if name in dirs else path.lstat().st_mtime_ns
            except FileNotFoundError:  # removed meanwhile
                continue
    return seen


def written(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Paths that appeared, and files that changed."""
    return sorted(p for p, mtime in after.items() if before.get(p) != mtime)


# The tree when the test session started (tests/conftest.py); compared at its end.
TREE_AT_START: pytest.StashKey[dict[str, int]] = pytest.StashKey()

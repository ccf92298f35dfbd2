"""Nothing the stack, the tests or the demo run writes lands in the working tree outside `.erpsync/`.

Allowed besides `.erpsync/`: `.venv/`, `*.egg-info/` (made by `make`), `__pycache__/`. Two checks:

- the tools a test run uses (pytest's cache, hypothesis' example database, ruff, mypy) write only
  there: each is run in a subprocess and the tree compared before and after;
- this whole test session wrote nothing else: the tree at its start (``tests/conftest.py`` takes
  the snapshot) is compared with the tree at its end (this test runs last).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tree import ROOT, TREE_AT_START, snapshot, written


def run(*argv: str) -> None:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-2000:])


def test_pytest_hypothesis_ruff_and_mypy_write_only_under_erpsync() -> None:
    bin_dir = Path(sys.executable).parent
    before = snapshot()
    # a hypothesis test (its example database) and pytest itself (its cache, written at the end)
    run(sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/unit/test_canonicalize_properties.py")
    run(str(bin_dir / "ruff"), "check", "erpsync/errors.py")
    run(str(bin_dir / "mypy"), "erpsync/errors.py")
    assert written(before, snapshot()) == []
    for cache in ("pytest", "hypothesis", "ruff", "mypy"):
        assert (ROOT / ".erpsync" / "cache" / cache).is_dir(), cache


@pytest.mark.last
def test_the_test_session_wrote_nothing_outside_erpsync(request: pytest.FixtureRequest) -> None:
    before = request.config.stash.get(TREE_AT_START, None)
    assert before is not None, "tests/conftest.py takes the snapshot at session start"
    assert written(before, snapshot()) == []

"""The code style STYLE.md asks for holds: ruff lint and format, mypy strict on agent and plugins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["agent", "plugins", "tests", "bench"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean() -> None:
    """`ruff check` finds nothing."""
    result = run("ruff", "check", *PATHS)
    assert result.returncode == 0, result.stdout[-3000:]


def test_ruff_format_is_clean() -> None:
    """`ruff format --check` would change nothing."""
    result = run("ruff", "format", "--check", *PATHS)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) reports no error in agent and plugins."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout[-3000:]

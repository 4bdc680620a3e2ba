"""The layout of docs/architecture.md holds: import contracts, module size, and SQL only in the store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Tables of data, allowed to be long: the migrations and the status-code catalogue.
DATA_MODULES = {"agent/store/schema.py", "agent/alerts/catalogue.py"}
MAX_LINES = 300
#: SQL statements as string literals: a quote, then a statement keyword and a space.
SQL = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|BEGIN|ALTER|DROP) """)


def _modules() -> list[Path]:
    return sorted(p for base in ("agent", "plugins") for p in (ROOT / base).rglob("*.py"))


def test_import_contracts_hold() -> None:
    """lint-imports keeps every contract of pyproject.toml (lab, pure alerts, plugin interface, layers)."""
    result = subprocess.run(
        [Path(sys.executable).with_name("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_is_too_long() -> None:
    """Every module stays within MAX_LINES lines, except the tables of data."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if str(p.relative_to(ROOT)) not in DATA_MODULES and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by responsibility (STYLE.md): {long}"


def test_sql_lives_in_the_store_and_the_lab_only() -> None:
    """SQL text appears only under agent/store/ (and agent/lab/, the test tooling)."""
    outside = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _modules()
        if not str(p.relative_to(ROOT)).startswith(("agent/store/", "agent/lab/"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert not outside, f"SQL outside agent/store/: {outside}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The SQL pattern and the size rule catch what they are meant to (so the tests above can fail)."""
    assert SQL.search('conn.execute("SELECT 1")') and SQL.search("x = 'INSERT INTO t VALUES (1)'")
    assert not SQL.search('print("Select one of them")')

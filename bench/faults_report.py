"""Run the fault tests and print the table for docs/reliability.md.

Usage: .venv/bin/python bench/faults_report.py   (about six minutes, both servers; needs root for the tmpfs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/session/test_faults.py"],
            cwd=ROOT, env=os.environ | {"XMPPMON_FAULT_REPORT": str(report)},
        )  # fmt: skip
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print("\n| scenario | events sent | stored | lost | duplicated | integrity | all stored after recovery (s) |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['scenario'].removeprefix('test_')} | {r['sent']} | {r['stored']} | {r['lost']} |"
            f" {r['duplicated']} | {r['integrity']} | {r['recovered_in_s']} |"
        )
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())

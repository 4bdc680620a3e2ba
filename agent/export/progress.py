"""Progress of one export job: saved in its row for ``export status``, drawn with ``rich`` on a terminal.

Rows are counted while the files are written, bytes while they are uploaded. The job row is updated
at most once a second (a short autocommit statement, like every job update); the bar is drawn only
when the caller says stderr is a terminal: a pipe gets nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from agent.store.exports import update_job

SAVE_EVERY = 1.0


class Reporter:
    """Rows written and bytes uploaded by one job; a context manager that draws a bar when ``bar`` is true."""

    def __init__(self, db: Path, busy_timeout_ms: int, job_id: int, rows_total: int | None, bar: bool = False) -> None:
        self.db, self.busy, self.job_id, self.rows_total = db, busy_timeout_ms, job_id, rows_total
        self._saved = 0.0
        self._fields: dict[str, object] = {}
        self._bar: Progress | None = None
        self._rows_task: TaskID | None = None
        self._bytes_task: TaskID | None = None
        if bar:
            self._bar = Progress(
                TextColumn("[bold]export {task.fields[job]}[/] {task.description:<6}"), BarColumn(),
                TextColumn("{task.fields[amount]}"), TimeRemainingColumn(), console=Console(stderr=True),
            )  # fmt: skip
            self._rows_task = self._bar.add_task("rows", total=rows_total, job=job_id, amount="")
        if rows_total is not None:
            update_job(db, busy_timeout_ms, job_id, rows_total=rows_total, rows_done=0)

    def __enter__(self) -> Reporter:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._save(force=True)
        if self._bar is not None:
            self._bar.stop()

    def rows(self, done: int) -> None:
        self._fields["rows_done"] = done
        if self._bar is not None and self._rows_task is not None:
            of = f"/{self.rows_total:,}" if self.rows_total is not None else ""
            self._bar.update(self._rows_task, completed=done, amount=f"{done:,}{of} rows")
        self._save()

    def bytes(self, done: int, total: int) -> None:
        self._fields.update(bytes_done=done, bytes_total=total)
        if self._bar is not None:
            if self._bytes_task is None:
                self._bytes_task = self._bar.add_task("upload", total=total, job=self.job_id, amount="")
            self._bar.update(self._bytes_task, completed=done, amount=f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB")
        self._save()

    def request(self, request_id: str | None, client_request_id: str) -> None:
        """The last request's ids (seed 001), saved with the next progress update."""
        self._fields.update(request_id=request_id, client_request_id=client_request_id)

    def done(self, rows: int, total_bytes: int) -> None:
        self._fields.update(rows_done=rows, bytes_done=total_bytes, bytes_total=total_bytes)
        self._save(force=True)

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._fields and (force or now - self._saved >= SAVE_EVERY):
            update_job(self.db, self.busy, self.job_id, **self._fields)
            self._fields, self._saved = {}, now

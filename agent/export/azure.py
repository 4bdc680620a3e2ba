"""One Azure Storage container through the official client (``azure-storage-blob``), every request instrumented.

Seed 001's practice applied to Azure: each attempt sends its own ``x-ms-client-request-id`` (a
UUID), and the answer's ``x-ms-request-id``, status and ``x-ms-error-code`` are recorded with it
(``export_requests``, the job row, the log). The SDK's own retries are off so that every attempt
is seen: network errors, 408, 429 and 5xx are retried here with full-jitter backoff, the rest
fail at once. Failures become one ExportError line that names the cause and never the SAS token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineResponse
from azure.storage.blob import BlobBlock, ContainerClient, ContentSettings
from loguru import logger

from agent import __version__
from agent.config import AzureSettings
from agent.events import utc_now
from agent.exceptions import ExportError
from agent.export.destinations import Container, scrub
from agent.session.backoff import Backoff

log = logger.bind(component="export")
T = TypeVar("T")
RETRIED = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Attempt:
    """One request sent: what seed 001 says to keep."""

    operation: str
    blob: str | None
    block: int | None
    attempt: int
    client_request_id: str
    started_at: str
    http_status: int | None = None
    request_id: str | None = None
    error_code: str | None = None
    latency_ms: float | None = None

    def ids(self) -> str:
        return f"x-ms-request-id {self.request_id or 'none'}, x-ms-client-request-id {self.client_request_id}"


class Blobs:
    """The container's block blobs: stage, list, commit, put, delete; ``record`` sees every attempt."""

    def __init__(self, container: Container, settings: AzureSettings, record: Callable[[Attempt], None]) -> None:
        self.container, self.settings, self.record = container, settings, record
        self._secret = container.sas.get_secret_value()
        self.client = ContainerClient.from_container_url(
            container.sas_url, retry_total=0, connection_timeout=settings.timeout, read_timeout=settings.timeout,
            user_agent=f"xmppmon/{__version__}",
        )  # fmt: skip

    def close(self) -> None:
        self.client.close()

    def stage(self, blob: str, block: int, block_id: str, data: bytes) -> None:
        client = self.client.get_blob_client(blob)
        self._call(
            "stage_block", blob, block, lambda **kw: client.stage_block(block_id, data, validate_content="md5", **kw)
        )

    def uncommitted(self, blob: str) -> dict[str, int]:
        """The blob's uncommitted blocks, id -> size; none if the blob does not exist yet."""
        client = self.client.get_blob_client(blob)
        _, blocks = self._call("get_block_list", blob, None, lambda **kw: client.get_block_list("uncommitted", **kw),
                               missing_ok=True) or ([], [])  # fmt: skip
        return {block.id: block.size for block in blocks}

    def commit(self, blob: str, block_ids: list[str], content_type: str, metadata: dict[str, str]) -> int:
        """Commit the blob from ``block_ids``; return its size as the service reports it."""
        client = self.client.get_blob_client(blob)
        blocks = [BlobBlock(block_id=b) for b in block_ids]
        settings = ContentSettings(content_type=content_type)

        def commit(**kw: Any) -> Any:
            return client.commit_block_list(blocks, content_settings=settings, metadata=metadata, **kw)

        self._call("commit_block_list", blob, None, commit)
        properties = self._call("get_blob_properties", blob, None, lambda **kw: client.get_blob_properties(**kw))
        return -1 if properties is None else int(properties.size)

    def read(self, blob: str) -> bytes | None:
        """A small blob's content (the manifest), or None if it does not exist."""
        client = self.client.get_blob_client(blob)
        downloader = self._call("download_blob", blob, None, lambda **kw: client.download_blob(**kw), missing_ok=True)
        return None if downloader is None else downloader.readall()

    def put(self, blob: str, data: bytes, content_type: str) -> None:
        """A small blob in one request (the manifest)."""
        client = self.client.get_blob_client(blob)
        settings = ContentSettings(content_type=content_type)
        self._call("upload_blob", blob, None,
                   lambda **kw: client.upload_blob(data, overwrite=True, content_settings=settings, **kw))  # fmt: skip

    def _call(self, operation: str, blob: str | None, block: int | None, send: Callable[..., T],
              missing_ok: bool = False) -> T | None:  # fmt: skip
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        for n in range(1, self.settings.attempts + 1):
            attempt = Attempt(operation, blob, block, n, str(uuid.uuid4()), utc_now())
            started = time.monotonic()

            def seen(response: PipelineResponse[Any, Any], attempt: Attempt = attempt) -> None:
                headers = response.http_response.headers
                attempt.http_status = response.http_response.status_code
                attempt.request_id = headers.get("x-ms-request-id")
                attempt.error_code = headers.get("x-ms-error-code")

            try:
                result = send(client_request_id=attempt.client_request_id, raw_response_hook=seen)
            except HttpResponseError as exc:
                retry = attempt.http_status in RETRIED and n < self.settings.attempts
                self._done(attempt, started, exc, retry)
                if missing_ok and attempt.http_status == 404 and attempt.error_code == "BlobNotFound":
                    return None
                if retry:
                    time.sleep(backoff.next_delay())
                    continue
                raise self._error(attempt, exc) from None
            except AzureError as exc:  # no answer: connection refused, reset, timed out
                attempt.error_code = type(exc).__name__
                self._done(attempt, started, exc, n < self.settings.attempts)
                if n < self.settings.attempts:
                    time.sleep(backoff.next_delay())
                    continue
                first = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self._secret)[:200]
                raise ExportError(
                    f"network error during {operation} of {blob or 'the container'} after {n} attempt(s): {first}"
                    f" ({attempt.ids()})"
                ) from None
            self._done(attempt, started, None, False)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _done(self, attempt: Attempt, started: float, exc: Exception | None, retry: bool) -> None:
        """Record an attempt; log it: a retry as a warning, a commit at info, the rest at debug.

        A final failure is not logged here: the ExportError that follows carries both ids.
        """
        attempt.latency_ms = round((time.monotonic() - started) * 1000, 1)
        self.record(attempt)
        where = f"{attempt.operation} {attempt.blob or ''}{'' if attempt.block is None else f' block {attempt.block}'}"
        bound = log.bind(client_request_id=attempt.client_request_id)
        outcome = attempt.http_status or "no answer", attempt.error_code or "", attempt.request_id
        if retry:
            bound.warning("{} attempt {}: {} {}, retrying (x-ms-request-id {})", where, attempt.attempt, *outcome)
        else:
            quiet = exc is not None or attempt.operation in ("stage_block", "get_block_list", "download_blob")
            bound.log("DEBUG" if quiet else "INFO", "{}: {} {} (x-ms-request-id {})", where, *outcome)

    def _error(self, attempt: Attempt, exc: HttpResponseError) -> ExportError:
        status, code = attempt.http_status, attempt.error_code or str(getattr(exc, "error_code", "") or "")
        c = self.container
        if status == 403 and code in ("AuthenticationFailed", "AuthorizationFailure"):
            expiry = c.expiry()
            why = (f"it expired at {expiry:%Y-%m-%dT%H:%M:%SZ}" if expiry and expiry.timestamp() < time.time()
                   else "it is expired, not yet valid, or its signature does not match")  # fmt: skip
            text = f"Azure Storage refused the SAS token for {c.url} (403 {code}): {why}; create a new one"
        elif status == 403 and code.startswith("Authorization"):
            text = (f"the SAS token for {c.url} does not allow writing blobs (403 {code}): it needs the"
                    " permissions create and write (sp=cw, or rwdlac)")  # fmt: skip
        elif status == 404 and code == "ContainerNotFound":
            text = f"container {c.name} does not exist at {c.url} (404 ContainerNotFound): create it, or fix the URL"
        else:
            first = scrub(str(exc.message or exc).splitlines()[0], self._secret)[:200]
            text = f"Azure Storage answered {status} {code} to {attempt.operation} of {attempt.blob}: {first}"
        return ExportError(f"{text} ({attempt.ids()})")

"""One delivery round of an HTTP sink: batches, stamina retries honouring Retry-After, verdicts.

Per answer (seed 003's semantics): 2xx = every item delivered; 207 = read ``responses`` and retry
only the failed items (a per-item 400 is dead-lettered); 413, or 400 on several items = split the
batch and retry the halves; 400 or 413 on a single item = dead-letter with the reason;
408/429/5xx/transport errors = up to ``attempts`` tries with exponential backoff and jitter, or
``Retry-After`` when the server gives one, then the items stay pending for a later round;
401/403 = the sink is failing until ``failing_retry_seconds`` pass, and the runner raises a
meta-alert. stamina fits: its backoff hook may return the wait, which is how Retry-After is honoured.
"""

from __future__ import annotations

import email.utils
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
import orjson
import stamina
from loguru import logger

from agent.config import AlertmanagerSink, WebhookSink
from agent.sidecar.instrumentation import Exchange, InstrumentedClient
from agent.store.outbox import Attempt, Item
from agent.store.sequencing import Policy

log = logger.bind(component="sidecar")


class Transient(Exception):
    """A failure worth retrying: 408, 429, 5xx or a transport error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Round:
    """The outcome of one call to :meth:`HttpSink.deliver`."""

    attempts: list[Attempt] = field(default_factory=list)
    failing: str | None = None  # set on 401/403: why the sink refuses us
    pause: float = 0.0  # seconds the runner should wait before the next round
    delivered: int = 0
    dead: list[Attempt] = field(default_factory=list)


class HttpSink:
    """Batched delivery to one HTTP endpoint; subclasses say how items are encoded."""

    cfg: WebhookSink | AlertmanagerSink
    #: Which pending notifications a later one of the same alert replaces (agent.store.sequencing).
    order: Policy = "ordered"

    def __init__(self, name: str, cfg: WebhookSink | AlertmanagerSink, http: InstrumentedClient) -> None:
        self.name = name
        self.cfg = cfg
        self.http = http

    # -- what subclasses define ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.cfg.url

    def headers(self) -> dict[str, str]:
        return {}

    def encode(self, item: Item) -> bytes:
        return orjson.dumps(item.message())

    def body(self, parts: list[bytes]) -> bytes:
        return b'{"messages":[' + b",".join(parts) + b"]}"

    @property
    def max_batch(self) -> int:
        return 100

    @property
    def max_bytes(self) -> int:
        return 1_000_000

    # -- the round -----------------------------------------------------------------------------

    def _batches(self, items: list[Item], rnd: Round) -> list[list[tuple[Item, bytes]]]:
        batches: list[list[tuple[Item, bytes]]] = []
        current: list[tuple[Item, bytes]] = []
        size = len(self.body([]))
        for item in items:
            part = self.encode(item)
            if len(part) + len(self.body([])) > self.max_bytes:
                now = time.time()
                self._verdict(rnd, [(item, part)], "dead", now, now, None,
                              f"larger than the {self.max_bytes}-byte body limit")  # fmt: skip
                continue
            if current and (len(current) >= self.max_batch or size + len(part) + 1 > self.max_bytes):
                batches.append(current)
                current, size = [], len(self.body([]))
            current.append((item, part))
            size += len(part) + 1
        if current:
            batches.append(current)
        return batches

    async def deliver(self, items: list[Item]) -> Round:
        """Try to deliver ``items``; every attempt is in the returned round."""
        rnd = Round()
        queue = deque(self._batches(items, rnd))
        tries: dict[int, int] = {}
        while queue:
            batch = queue.popleft()
            exchange = await self._post(batch, rnd)
            if exchange is None:
                break  # the endpoint is down: what is left waits for the next round
            response, ex = exchange
            status, text = response.status_code, response.text[:500]
            if status == 207:
                retry = self._multi_status(batch, response, ex, rnd)
                for item, _part in retry:
                    tries[item.id] = tries.get(item.id, 1) + 1
                retry = [p for p in retry if tries[p[0].id] <= self.cfg.attempts]
                if retry:
                    queue.appendleft(retry)
            elif 200 <= status < 300:
                self._verdict(rnd, batch, "delivered", ex.started_at, ex.finished_at, ex)
            elif status in (400, 413) and len(batch) > 1:
                self._verdict(rnd, batch, "retry", ex.started_at, ex.finished_at, ex,
                              f"HTTP {status}: splitting the batch", later=0.0)  # fmt: skip
                half = len(batch) // 2
                queue.appendleft(batch[half:])
                queue.appendleft(batch[:half])
            elif status in (400, 413):
                self._verdict(rnd, batch, "dead", ex.started_at, ex.finished_at, ex, f"HTTP {status}: {text}")
            elif status in (401, 403):
                rnd.failing = f"HTTP {status} from {self.url}: {text}"
                self._verdict(rnd, batch, "unauthorized", ex.started_at, ex.finished_at, ex, rnd.failing,
                              later=self.cfg.failing_retry_seconds)  # fmt: skip
                rnd.pause = self.cfg.failing_retry_seconds
                break
            else:
                self._verdict(rnd, batch, "failed", ex.started_at, ex.finished_at, ex, f"HTTP {status}: {text}")
                rnd.pause = max(rnd.pause, self.cfg.park_seconds)
        return rnd

    def _multi_status(self, batch: list[tuple[Item, bytes]], response: httpx.Response, ex: Exchange,
                      rnd: Round) -> list[tuple[Item, bytes]]:  # fmt: skip
        try:
            results = orjson.loads(response.content).get("responses")
        except (orjson.JSONDecodeError, AttributeError):
            results = None
        if not isinstance(results, list) or len(results) != len(batch):
            self._verdict(rnd, batch, "retry", ex.started_at, ex.finished_at, ex,
                          "HTTP 207 without one result per message")  # fmt: skip
            return list(batch)
        retry = []
        for pair, result in zip(batch, results, strict=True):
            result = result if isinstance(result, dict) else {}
            if "xactionId" in result:
                self._verdict(rnd, [pair], "delivered", ex.started_at, ex.finished_at, ex)
            elif result.get("statusCode") == 400:
                self._verdict(rnd, [pair], "dead", ex.started_at, ex.finished_at, ex,
                              f"HTTP 207 item 400: {str(result.get('message'))[:500]}")  # fmt: skip
            else:
                self._verdict(rnd, [pair], "retry", ex.started_at, ex.finished_at, ex,
                              f"HTTP 207 item {result.get('statusCode')}: {result.get('message')}")  # fmt: skip
                retry.append(pair)
        return retry

    async def _post(self, batch: list[tuple[Item, bytes]], rnd: Round) -> tuple[httpx.Response, Exchange] | None:
        body = self.body([part for _, part in batch])
        cfg = self.cfg

        def backoff(exc: Exception) -> bool | float:
            if not isinstance(exc, Transient):
                return False
            if exc.retry_after is None:
                return True
            # A longer wait than we are willing to hold a round for: park until then instead.
            return False if exc.retry_after > cfg.max_retry_after else exc.retry_after

        try:
            async for attempt in stamina.retry_context(
                on=backoff, attempts=cfg.attempts, timeout=None, wait_initial=cfg.backoff_initial,
                wait_max=cfg.backoff_max, wait_jitter=cfg.backoff_jitter,
            ):  # fmt: skip
                with attempt:
                    response, ex = await self.http.post(self.url, body, self.headers())
                    if response is None:
                        self._verdict(rnd, batch, "retry", ex.started_at, ex.finished_at, ex, ex.error)
                        raise Transient(ex.error or "transport error")
                    status = response.status_code
                    if status in (408, 429) or status >= 500:
                        wait = retry_after(response)
                        self._verdict(rnd, batch, "retry", ex.started_at, ex.finished_at, ex,
                                      f"HTTP {status}: {response.text[:200]}")  # fmt: skip
                        raise Transient(f"HTTP {status}", wait)
                    return response, ex
        except Transient as exc:
            pause = max(cfg.park_seconds, exc.retry_after or 0.0)
            for a in rnd.attempts[-len(batch) :]:
                a.next_attempt_at = time.time() + pause
            rnd.pause = max(rnd.pause, pause)
            log.warning("sink {}: {} after {} tries; {} notification(s) wait {:.0f} s",
                        self.name, exc, cfg.attempts, len(batch), pause)  # fmt: skip
        return None

    def _verdict(self, rnd: Round, batch: list[tuple[Item, bytes]], status: str, started: float,
                 finished: float, ex: Exchange | None, error: str | None = None,
                 later: float | None = None) -> None:  # fmt: skip
        http = ex.columns() if ex is not None else {}
        for item, _ in batch:
            attempt = Attempt(item, status, started, finished, error, http)
            if later is not None:
                attempt.next_attempt_at = time.time() + later
            rnd.attempts.append(attempt)
            if status == "delivered":
                rnd.delivered += 1
            elif status == "dead":
                rnd.dead.append(attempt)
                log.error("sink {}: notification {} dead-lettered: {}", self.name, item.key, error)

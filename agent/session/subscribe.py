"""Subscribing each configured application after a new session (not after a resumption)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from xml.etree import ElementTree as ET

import orjson
from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from agent.alerts import CONDITION_CODES
from agent.config import MonitorSettings
from agent.session.backoff import Backoff
from agent.store import Store

log = logger.bind(component="session")

#: Refusals of type ``cancel`` that only say the Monitor service is not reachable yet: ejabberd
#: answers ``remote-server-not-found`` while the component is not connected (it tries s2s to its
#: name), where Prosody answers ``remote-server-timeout`` (type ``wait``). Retried like a timeout.
TRANSIENT = frozenset({"remote-server-not-found", "remote-server-timeout"})


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    result: str  # "ok", "timeout" or "condition (code)"
    retry: bool


class Subscriber:
    """Subscribes the apps of ``monitor.apps``; refusals become alerts with their XEP-0086 code."""

    def __init__(self, client: ClientXMPP, store: Store, monitor: MonitorSettings) -> None:
        self.client = client
        self.store = store
        self.monitor = monitor

    async def subscribe_all(self) -> None:
        """Subscribe every app; retry those refused with type ``wait`` or unanswered, with backoff."""
        results: dict[str, str] = {}
        retry = [(app.app, app.key.get_secret_value()) for app in self.monitor.apps]
        backoff = Backoff(initial=1.0, maximum=60.0)
        while retry:
            again = []
            for app, key in retry:
                outcome = await self.subscribe(app, key)
                results[app] = outcome.result
                if outcome.retry:
                    again.append((app, key))
            self.store.set_state("subscriptions", orjson.dumps(results).decode())
            retry = again
            if retry:
                delay = backoff.next_delay()
                log.info("retrying subscription of {} in {:.1f} s", ", ".join(a for a, _ in retry), delay)
                await asyncio.sleep(delay)

    async def subscribe(self, app: str, key: str) -> SubscribeOutcome:
        """Subscribe one application.

        A refusal of type ``wait`` (the service is busy or not there yet), one that says the service
        cannot be reached (:data:`TRANSIENT`) or no answer is worth retrying; other
        ``auth``/``cancel``/``modify`` refusals need an operator and are not retried until the next
        session.
        """
        monitor = self.monitor
        iq = self.client.Iq()
        iq["type"] = "set"
        iq["to"] = monitor.jid
        iq.append(ET.Element(f"{{{monitor.namespace}}}subscribe", {"app": app, "key": key}))
        try:
            await iq.send(timeout=monitor.subscribe_timeout)  # type: ignore[no-untyped-call]
        except IqError as exc:
            error = exc.iq["error"]
            condition, code = error["condition"], error["code"] or "?"
            text = error["text"]
            retry = error["type"] == "wait" or condition in TRANSIENT
            # Error: an operator must act. Warning: the service is busy or not there yet; retried.
            log.bind(app=app).log(
                "WARNING" if retry else "ERROR", "subscription of app {} refused: {} ({}){}{}",
                app, condition, code, f": {text}" if text else "", "; retrying" if retry else "",
            )  # fmt: skip
            self.store.count("subscriptions_refused")
            alert_code = code if code.isdigit() else CONDITION_CODES.get(condition, condition)
            self.store.observe("subscription", alert_code, app=app, detail=f"{condition}: {text}")
            return SubscribeOutcome(f"{condition} ({code})", retry=retry)
        except IqTimeout:
            log.bind(app=app).warning("subscription of app {}: no answer from {}; retrying", app, monitor.jid)
            self.store.observe("subscription", "504", app=app, detail=f"no answer from {monitor.jid}")
            return SubscribeOutcome("timeout", retry=True)
        log.bind(app=app).info("subscribed to app {}", app)
        self.store.observe("subscription", "ok", app=app, ok=True)
        return SubscribeOutcome("ok", retry=False)

"""Forwarding's bad input, against a real single nats-server: each cause is one clear line and nothing is lost.

The records are written by the agent's real store (no XMPP needed here) and forwarded by the
sidecar's real forwarder, in process so that its log lines can be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import RawCredentials
from nats.js.api import StreamConfig

from agent.config import Settings, load_settings
from agent.events import parse_event
from agent.lab.emulator.wire import KINDS, make_payload, utc_ts
from agent.lab.nats import NatsCluster
from agent.lab.nats_auth import Operator
from agent.lab.tls import write_certificates
from agent.sidecar.forward import Forwarder
from agent.store import Store

from ...conftest import db_value, running, wait_until
from .conftest import ACCOUNT, STREAM, assert_exactly_once, caught_up, read_stream

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]


def settings_for(db: Path, urls: list[str], **forward: Any) -> Settings:
    values = {"nats_urls": urls, "account": ACCOUNT, "replicas": 1, "ack_timeout": 2, **forward}
    return load_settings(None, store={"path": str(db)}, forward=values)


async def write_events(db: Path, count: int, big: dict[int, int] | None = None, start: int = 0) -> None:
    """``count`` events of every kind through the agent's store; ``big`` maps an index to a payload size."""
    store = await Store.open(load_settings(None, store={"path": str(db)}).store)
    rng = random.Random(start)
    events = []
    for i in range(start, start + count):
        kind = KINDS[i % len(KINDS)]
        payload = make_payload(kind, rng)
        if big and i in big:
            kind, payload = "activity", make_payload("activity", rng) | {"padding": "x" * big[i]}
        events.append(parse_event({"id": f"e-{i:06d}", "kind": kind, "app": "demo", "ts": utc_ts(time.time())},
                                  orjson.dumps(payload).decode(), 65536))  # fmt: skip
    store.submit_events(events, utc_ts(time.time()))
    await store.barrier()
    await store.close()


@contextlib.asynccontextmanager
async def forwarding(settings: Settings) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(settings)
    stop = asyncio.Event()
    async with running(forwarder.run(stop)):
        try:
            yield forwarder
        finally:
            stop.set()


def lines(logs: list[str], text: str) -> list[str]:
    return [line for line in logs if text in line]


@pytest.fixture
def node(tmp_path: Path) -> NatsCluster:
    return NatsCluster(tmp_path / "nats", size=1)


async def test_wrong_credential_is_one_line_and_records_wait(tmp_path: Path, captured_logs: list[str]) -> None:
    """A wrong token: one line naming the setting, retried quietly, nothing forwarded; the right one forwards everything once."""
    db = tmp_path / "m.db"
    await write_events(db, 300)
    with NatsCluster(tmp_path / "nats", size=1, token="the-right-token") as cluster:
        async with forwarding(settings_for(db, cluster.urls, credentials="a-wrong-token")) as forwarder:
            await wait_until(lambda: forwarder.state == "refused", what="refusal seen")
            await asyncio.sleep(4)  # several retries
        refused = lines(captured_logs, "refused the credentials")
        assert len(refused) == 1, refused
        assert "XMPPMON_FORWARD__CREDENTIALS" in refused[0] and "a-wrong-token" not in "".join(captured_logs)
        assert db_value(db, "SELECT coalesce(max(last_id), 0) FROM forward_cursor") == 0
        assert db_value(db, "SELECT value FROM forward_state WHERE key = 'state'") == "stopped"
        async with forwarding(settings_for(db, cluster.urls, credentials="the-right-token")):
            await wait_until(lambda: caught_up(db), what="forwarded with the right token")
        nc_urls = [u.replace("nats://", "nats://the-right-token@") for u in cluster.urls]
        assert_exactly_once(await read_stream(nc_urls), db)


async def test_creds_file_authenticates_and_a_foreign_one_is_one_line(tmp_path: Path, captured_logs: list[str]) -> None:
    """A server in operator mode: a .creds text (JWT and seed) forwards; one from another operator is refused in one line."""
    db = tmp_path / "m.db"
    await write_events(db, 200)
    operator = Operator.create()
    with NatsCluster(tmp_path / "nats", size=1, extra=operator.config()) as cluster:
        async with forwarding(settings_for(db, cluster.urls, credentials=Operator.create().creds())) as forwarder:
            await wait_until(lambda: forwarder.state == "refused", what="foreign credentials refused")
            await asyncio.sleep(2)
        refused = lines(captured_logs, "refused the credentials")
        assert len(refused) == 1 and "XMPPMON_FORWARD__CREDENTIALS" in refused[0]
        assert not caught_up(db)
        creds = operator.creds()
        async with forwarding(settings_for(db, cluster.urls, credentials=creds)):
            await wait_until(lambda: caught_up(db), what="forwarded with the .creds file")
        nc = await nats.connect(servers=cluster.urls, user_credentials=RawCredentials(creds))
        try:
            assert (await nc.jetstream().stream_info(STREAM)).state.messages == db_value(
                db,
                "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM api_calls)"
                " + (SELECT count(*) FROM state_changes)",
            )
        finally:
            await nc.close()


async def test_conflicting_stream_is_one_line_then_forwarding_resumes(
    tmp_path: Path, node: NatsCluster, captured_logs: list[str]
) -> None:
    """A stream of the same name taking other subjects: one line saying so, records wait; once it is fixed, all arrive once."""
    db = tmp_path / "m.db"
    await write_events(db, 300)
    with node:
        nc = await nats.connect(servers=node.urls)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["other.>"]))
        async with forwarding(settings_for(db, node.urls)) as forwarder:
            await wait_until(lambda: forwarder.state == "refused", what="conflict seen")
            await asyncio.sleep(3)
            conflict = lines(captured_logs, "which do not take")
            assert len(conflict) == 1, conflict
            assert f"stream {STREAM} exists with subjects other.>" in conflict[0]
            assert f"xmppmon.{ACCOUNT}.*.*" in conflict[0] and "XMPPMON_FORWARD__STREAM" in conflict[0]
            assert not caught_up(db) and (await js.stream_info(STREAM)).state.messages == 0
            await js.delete_stream(STREAM)  # the operator's fix
            await wait_until(lambda: caught_up(db), timeout=60, what="forwarded after the fix")
        await nc.close()
        assert_exactly_once(await read_stream(node.urls), db)


async def test_record_over_max_payload_goes_to_dead_letter_and_the_rest_flows(
    tmp_path: Path, captured_logs: list[str]
) -> None:
    """A record over the server's max_payload: one line, a forward_dead row with the reason, every other record once."""
    db = tmp_path / "m.db"
    await write_events(db, 101, big={50: 16_000})
    with NatsCluster(tmp_path / "nats", size=1, max_payload=8192) as cluster:
        async with forwarding(settings_for(db, cluster.urls)):
            await wait_until(lambda: caught_up(db), what="forwarded")
        dead = db_value(db, "SELECT source || ':' || record_id || ' ' || reason FROM forward_dead")
        assert db_value(db, "SELECT count(*) FROM forward_dead") == 1
        big_id = db_value(db, "SELECT id FROM events WHERE event_id = 'e-000050'")
        assert dead.startswith(f"events:{big_id} ") and "over the server's max_payload of 8192 bytes" in dead
        said = lines(captured_logs, "cannot be forwarded")
        assert len(said) == 1 and f"events {big_id}" in said[0] and "forward_dead" in said[0]
        messages = await read_stream(cluster.urls)
        assert_exactly_once(messages, db, dead={f"xmppmon:{ACCOUNT}:events:{big_id}"})
        stored = db_value(db, "SELECT json_extract(message, '$.payload.padding') FROM forward_dead")
        assert len(stored) == 16_000  # the message is kept whole for a later look


async def test_stream_refusing_a_record_dead_letters_it_and_resends_the_rest(
    tmp_path: Path, node: NatsCluster, captured_logs: list[str]
) -> None:
    """The stream's max_msg_size lowered while forwarding: the refused record is dead-lettered, those after it resent once."""
    db = tmp_path / "m.db"
    await write_events(db, 50)
    with node:
        async with forwarding(settings_for(db, node.urls, poll_ms=200)):
            await wait_until(lambda: caught_up(db), what="first records forwarded")
            nc = await nats.connect(servers=node.urls)
            js = nc.jetstream()
            config = (await js.stream_info(STREAM)).config
            config.max_msg_size = 4096
            await js.update_stream(config)
            await nc.close()
            await write_events(db, 50, big={60: 6000}, start=50)
            await wait_until(lambda: caught_up(db), what="the rest forwarded")
        reason = db_value(db, "SELECT reason FROM forward_dead")
        assert "the stream refused it" in reason and "size" in reason
        big_id = db_value(db, "SELECT id FROM events WHERE event_id = 'e-000060'")
        assert_exactly_once(await read_stream(node.urls), db, dead={f"xmppmon:{ACCOUNT}:events:{big_id}"})
        assert len(lines(captured_logs, "too large for the stream")) == 1
        said = lines(captured_logs, "cannot be forwarded")
        assert len(said) == 1 and f"events {big_id}" in said[0] and "the stream refused it" in said[0]


async def test_tls_verified_with_the_ca_file_and_refused_without(tmp_path: Path, captured_logs: list[str]) -> None:
    """TLS to the cluster: trusted with XMPPMON_FORWARD__CA_FILE; without it, one line naming that setting."""
    db = tmp_path / "m.db"
    await write_events(db, 100)
    ca, cert, key = write_certificates(tmp_path / "certs", "nats", ["127.0.0.1", "localhost"])
    with NatsCluster(tmp_path / "nats", size=1, tls=(cert, key)) as cluster:
        assert cluster.urls[0].startswith("tls://")
        async with forwarding(settings_for(db, cluster.urls)) as forwarder:
            await wait_until(lambda: forwarder.state == "refused", what="untrusted certificate seen")
        untrusted = lines(captured_logs, "not trusted")
        assert len(untrusted) == 1 and "XMPPMON_FORWARD__CA_FILE" in untrusted[0]
        assert not caught_up(db)
        async with forwarding(settings_for(db, cluster.urls, ca_file=str(ca))):
            await wait_until(lambda: caught_up(db), what="forwarded over verified TLS")

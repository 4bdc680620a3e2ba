"""The units under a real systemd 252 (PID 1 of a booted Debian 12 container), installed by ``make install``.

Prosody and the emulated Monitor API run on the host's loopback; the agent and the sidecar run in
the container as the units start them: dynamic user, sandbox, credentials, watchdog and all.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from pytest_httpserver import HTTPServer

from .conftest import Host, poll

pytestmark = [pytest.mark.systemd_container, pytest.mark.prosody, pytest.mark.timeout(400)]

AGENT = "xmppmon-agent.service"
SIDECAR = "xmppmon-sidecar.service"
DB = "/var/lib/xmppmon/agent.db"


def start(host: Host, *units: str) -> None:
    result = host.container.run(["systemctl", "start", *units], timeout=120)
    assert result.returncode == 0, result.stderr + host.journal("-u", units[0], "-o", "cat")[-3000:]


def main_uid(host: Host, unit: str) -> int:
    pid = host.show(unit, "MainPID")["MainPID"]
    status = host.container.sh(f"cat /proc/{pid}/status")
    match = re.search(r"^Uid:\s+(\d+)", status, re.M)
    assert match, status
    return int(match.group(1))


def test_type_notify_start_waits_for_the_session_and_shows_status(host: Host) -> None:
    """`systemctl start` returns only once the agent sent READY (session up), and STATUS= shows in `systemctl status`."""
    host.emulator("--rate", "20")
    host.account()
    start(host, AGENT)
    # READY=1 is sent only after the session is up, so the agent's "session started" line must come
    # before systemd's "Started" line (with Type=simple, "Started" comes before Python has even loaded).
    lines = poll(
        lambda: (lambda j: j if "session started as" in j and "Started xmppmon-agent" in j else None)(
            host.journal("-u", AGENT, "-o", "cat")
        ),
        10, "the session and the Started lines in the journal",
    )  # fmt: skip
    assert lines.index("session started as") < lines.index("Started xmppmon-agent"), lines
    props = host.show(AGENT, "Type", "ActiveState", "SubState", "StatusText", "NotifyAccess")
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    status = host.container.run(["systemctl", "status", "--no-pager", AGENT]).stdout
    assert re.search(r'Status: "connected', status), status
    # the periodic STATUS= carries the event rate
    poll(lambda: "events/min" in host.show(AGENT, "StatusText")["StatusText"], 25, "a STATUS= line with events/min")


def test_events_land_in_the_state_directory_as_the_dynamic_user_0640(host: Host) -> None:
    """Events are committed to /var/lib/xmppmon/agent.db, owned by the unit's dynamic user, mode 0640 (UMask=0027)."""
    host.emulator("--rate", "20")
    host.account()
    start(host, AGENT)
    poll(lambda: host.count(DB, "events") > 0, 30, "events in the database")
    uid = main_uid(host, AGENT)
    assert uid != 0
    listing = host.container.sh("stat -L -c '%n %a %u' /var/lib/xmppmon /var/lib/xmppmon/agent.db*")
    modes = {line.split()[0]: (line.split()[1], int(line.split()[2])) for line in listing.splitlines()}
    assert modes["/var/lib/xmppmon"] == ("750", uid), listing
    assert modes[DB] == ("640", uid), listing
    assert all(mode == ("640", uid) for name, mode in modes.items() if name.startswith(DB)), listing
    # StateDirectory= with DynamicUser=: the real directory is under /var/lib/private, reached by a link
    assert host.container.sh("readlink /var/lib/xmppmon").strip() == "private/xmppmon"


def test_sidecar_shares_the_database_and_delivers_to_a_host_webhook(host: Host, httpserver: HTTPServer) -> None:
    """The sidecar runs as the agent's dynamic user, reads its outbox and POSTs the alert of a refused subscription."""
    httpserver.expect_request("/alerts", method="POST").respond_with_json({})
    host.emulator("--rate", "5", "--app", "demo:demo-key", "--app", "blocked:k", "--refuse", "blocked=401")
    host.account(apps=[{"app": "demo", "key": "demo-key"}, {"app": "blocked", "key": "k"}])
    # 127.0.0.1, not httpserver.url_for()'s "localhost": the minimal root file system has no /etc/hosts
    sinks = [{"type": "webhook", "url": f"http://127.0.0.1:{httpserver.port}/alerts", "max_batch": 10}]
    host.put("/etc/xmppmon/credentials/sidecar__sinks", json.dumps(sinks), "0600")
    start(host, AGENT, SIDECAR)
    assert host.show(SIDECAR, "Type")["Type"] == "notify"

    def posted() -> list[dict[str, object]]:
        bodies = [json.loads(request.get_data()) for request, _ in httpserver.log]
        return [m for body in bodies for m in body.get("messages", []) if "blocked" in json.dumps(m)]

    poll(posted, 30, "the refused subscription's alert at the webhook")
    assert main_uid(host, SIDECAR) == main_uid(host, AGENT)
    poll(lambda: host.count(DB, "deliveries") > 0, 15, "the sidecar's delivery rows in the agent's database")
    assert host.show(SIDECAR, "ActiveState")["ActiveState"] == "active"


def test_secrets_come_from_load_credential_only(host: Host) -> None:
    """The password and API key reach the agent only as LoadCredential= files; they never show in the journal."""
    host.emulator("--rate", "5")
    host.account(apps=[{"app": "demo", "key": "demo-key"}])
    password = host.container.sh("cat /etc/xmppmon/credentials/xmpp__password")
    # nothing but the credentials holds the secrets: not the TOML file, the env file or the unit
    elsewhere = host.container.sh("cat /etc/xmppmon/agent.toml /etc/xmppmon/agent.env; systemctl cat xmppmon-agent")
    assert password not in elsewhere and "demo-key" not in elsewhere
    start(host, AGENT)
    poll(lambda: host.count(DB, "events") > 0, 30, "events (the session authenticated with the credential)")
    # The credentials directory is readable by the service and nobody else.
    pid = host.show(AGENT, "MainPID")["MainPID"]
    creds = host.container.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ | sed -n 's/^CREDENTIALS_DIRECTORY=//p'").strip()
    assert creds.startswith("/run/credentials/"), creds
    assert host.container.sh(f"ls {creds}").split() == ["monitor__apps", "xmpp__password"]
    listing = host.container.sh(f"stat -c '%a %u' {creds} {creds}/xmpp__password")
    assert listing.split() == ["500", str(main_uid(host, AGENT)), "400", str(main_uid(host, AGENT))], listing
    journal = host.journal("-u", AGENT, "-o", "cat")
    assert password not in journal and "demo-key" not in journal


def test_a_missing_credential_fails_the_start_once_and_says_so(host: Host) -> None:
    """Without a LoadCredential= file the unit fails at the CREDENTIALS step (243), is not restarted in a loop."""
    host.account()
    host.container.sh("rm /etc/xmppmon/credentials/monitor__apps")
    result = host.container.run(["systemctl", "start", AGENT], timeout=60)
    assert result.returncode != 0
    props = host.show(AGENT, "ActiveState", "ExecMainStatus", "NRestarts")
    assert props["ExecMainStatus"] == "243", props
    journal = host.journal("-u", AGENT, "-o", "cat")
    assert "Failed to set up credentials" in journal, journal
    # RestartPreventExitStatus=243: failed for good, not "activating (auto-restart)" in a loop
    props = host.show(AGENT, "ActiveState", "SubState", "NRestarts")
    assert props == {"ActiveState": "failed", "SubState": "failed", "NRestarts": "0"}, props


def test_watchdog_restarts_a_frozen_agent(host: Host) -> None:
    """With WatchdogSec=3 (a drop-in) an agent frozen by SIGSTOP is killed by systemd and restarted."""
    host.emulator("--rate", "5")
    host.account()
    host.put(
        "/run/systemd/system/xmppmon-agent.service.d/watchdog.conf", "[Service]\nWatchdogSec=3\nRestartSec=1\n", "0644"
    )
    host.container.sh("systemctl daemon-reload")
    start(host, AGENT)
    frozen = host.show(AGENT, "MainPID")["MainPID"]
    time.sleep(4)  # an absence cannot be polled: longer than WatchdogSec, a healthy agent is not killed
    assert host.show(AGENT, "MainPID", "NRestarts") == {"MainPID": frozen, "NRestarts": "0"}
    host.container.sh(f"kill -STOP {frozen}")

    def restarted() -> bool:
        props = host.show(AGENT, "MainPID", "NRestarts", "ActiveState")
        return props["NRestarts"] == "1" and props["MainPID"] not in ("0", frozen) and props["ActiveState"] == "active"

    poll(restarted, 30, "systemd to restart the frozen agent")
    journal = host.journal("-u", AGENT, "-o", "cat")
    assert "Watchdog timeout (limit 3s)!" in journal, journal
    assert f"Killing process {frozen} (xmppmon) with signal SIGABRT" in journal, journal


def test_two_template_instances_keep_two_databases(host: Host) -> None:
    """xmppmon-agent@shop and @games run side by side, each with its account, TOML, credentials and database."""
    host.emulator("--rate", "10")
    jids = {name: host.account(name) for name in ("shop", "games")}
    start(host, "xmppmon-agent@shop.service", "xmppmon-agent@games.service")
    for name in jids:
        poll(lambda name=name: host.count(f"/var/lib/xmppmon/{name}.db", "events") > 0, 30, f"events in {name}.db")
    for name, jid in jids.items():
        unit = f"xmppmon-agent@{name}.service"
        assert host.show(unit, "ActiveState")["ActiveState"] == "active"
        assert f"session started as {jid}/" in host.journal("-u", unit, "-o", "cat")
        other = next(j for n, j in jids.items() if n != name)
        assert other not in host.journal("-u", unit, "-o", "cat")
    # one dynamic user for every instance: the sidecar could read either database
    assert main_uid(host, "xmppmon-agent@shop.service") == main_uid(host, "xmppmon-agent@games.service")
    assert [f for f in host.container.sh("ls /var/lib/xmppmon").split() if f.endswith(".db")] == ["games.db", "shop.db"]


@pytest.mark.parametrize("unit", [AGENT, SIDECAR, "xmppmon-agent@shop.service"])
def test_security_exposure_online_at_most_two(host: Host, unit: str) -> None:
    """`systemd-analyze security`, scored by the running systemd, rates each unit at most 2.0."""
    out = host.container.run(["systemd-analyze", "security", "--no-pager", unit], check=True).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    print(f"{unit}: {match.group(1)}")
    assert float(match.group(1)) <= 2.0, out


def test_stop_is_clean_and_a_restart_loses_and_repeats_nothing(host: Host) -> None:
    """`systemctl stop` ends with the final ack and exit 0; after a restart every event sent is stored exactly once."""
    log = host.logs / "sent.log"
    emulator = host.emulator("--rate", "50", "--count", "300", "--event-log", str(log))
    host.account()
    start(host, AGENT)
    poll(lambda: host.count(DB, "events") + host.count(DB, "api_calls") > 50, 30, "events before the stop")
    stop = host.container.run(["systemctl", "stop", AGENT], timeout=60)
    assert stop.returncode == 0, stop.stderr
    props = host.show(AGENT, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    journal = host.journal("-u", AGENT, "-o", "cat")
    # the final ack went out (the agent says so only after sending it), and it exited by itself:
    # systemd counts death by SIGTERM as success too, but would log "code=killed"
    assert "disconnected cleanly" in journal and "xmppmon stopped" in journal, journal[-3000:]
    assert "Deactivated successfully" in journal and "code=killed" not in journal, journal[-3000:]
    assert "could not commit before shutdown" not in journal
    start(host, AGENT)  # events sent meanwhile wait in Prosody's offline storage and archive
    emulator.wait(60)
    sent = [line.split("\t") for line in log.read_text().splitlines()]
    assert len(sent) == 300
    history = {event_id for event_id, kind, _ in sent if kind in ("activity", "event", "job", "error", "crash", "api")}
    sql = "SELECT event_id FROM events UNION ALL SELECT event_id FROM api_calls"

    def stored() -> list[str]:
        return [row["event_id"] for row in host.query(DB, sql)]

    poll(lambda: len(stored()) >= len(history), 60, f"{len(history)} history events stored")
    rows = stored()
    assert sorted(rows) == sorted(history), "every event sent is stored exactly once"
    # Redeliveries (offline storage and the archive overlap after a restart) are absorbed, not stored.
    counters = {r["name"]: r["value"] for r in host.query(DB, "SELECT name, value FROM counters")}
    print("counters after the restart:", counters)

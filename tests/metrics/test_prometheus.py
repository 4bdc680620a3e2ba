"""A real Prometheus (Debian's) scraping a real agent and sidecar; the alerting rules checked by promtool."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.lab.net import free_loopback_port
from agent.lab.prosody import ProsodyServer

from ..observed import Deployment, deployment, poll_until, require

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "prometheus-rules.yml"


def test_rules_pass_promtool_check() -> None:
    """docs/prometheus-rules.yml is valid for `promtool check rules` and names every alert the docs promise."""
    promtool = require("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout
    text = RULES.read_text()
    for alert in ("AgentDown", "SessionDown", "NoEvents", "QuarantineRate", "WriterBacklog", "SinkNotDelivering"):
        assert f"alert: Xmppmon{alert}" in text


def test_rules_fire_on_the_series_they_are_for() -> None:
    """`promtool test rules`: each alert fires for the unhealthy instance only, with its annotations."""
    promtool = require("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "test", "rules", "prometheus-rules.test.yml"], cwd=Path(__file__).parent,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def observed(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(prosody, tmp_path_factory.mktemp("observed")) as d:
        yield d


@pytest.fixture(scope="module")
def prometheus(observed: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on a free loopback port, scraping the agent and the sidecar every second."""
    binary = require("prometheus", "prometheus")
    home = tmp_path_factory.mktemp("prometheus")
    port = free_loopback_port()
    config = home / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        f"  - job_name: xmppmon-agent\n    static_configs: [{{targets: ['127.0.0.1:{observed.agent_port}']}}]\n"
        f"  - job_name: xmppmon-sidecar\n    static_configs: [{{targets: ['127.0.0.1:{observed.sidecar_port}']}}]\n"
    )
    with (home / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: _get(f"{url}/-/ready") == 200 or proc.poll() is not None, 60, "prometheus ready")
        assert proc.poll() is None, (home / "prometheus.log").read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_prometheus_scrapes_both_and_sees_what_the_database_holds(observed: Deployment, prometheus: str) -> None:
    """`up` is 1 for the agent and the sidecar, and xmppmon_events_committed_total equals the database after a wave."""
    poll_until(
        lambda: by_label(query(prometheus, "up"), "job") == {"xmppmon-agent": 1.0, "xmppmon-sidecar": 1.0},
        60, "up == 1 for both targets",
    )  # fmt: skip
    observed.wave(1500, seed=21)
    held = observed.held()
    assert sum(held.values()) > 500 and all(held.values())  # the rest of the 1,500 are state kinds

    def matches() -> bool:
        seen = by_label(query(prometheus, "xmppmon_events_committed_total"), "kind")
        return all(seen.get(kind) == count for kind, count in held.items())

    poll_until(matches, 30, f"Prometheus to see {held}")
    seen = by_label(query(prometheus, "xmppmon_events_committed_total"), "kind")
    assert {k: seen[k] for k in held} == held
    # The quarantine classes add up to the quarantine table, and the sidecar reports its sinks.
    quarantined = sum(by_label(query(prometheus, "xmppmon_quarantined_total"), "reason").values())
    assert quarantined == observed.sent["malformed_sent"]
    assert by_label(query(prometheus, "xmppmon_session_up"), "job") == {"xmppmon-agent": 1.0}
    poll_until(
        lambda: by_label(query(prometheus, "xmppmon_notifications_delivered_total"), "sink").get("hook", 0) > 0,
        30, "the hook sink's deliveries",
    )  # fmt: skip
    assert set(by_label(query(prometheus, "xmppmon_sink_up"), "sink")) == {"hook", "broken"}
    assert set(by_label(query(prometheus, "xmppmon_notifications_pending"), "sink")) == {"hook", "broken"}
    # The shipped rules load in a real Prometheus and evaluate without error.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    health = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
    assert len(health) == 7 and set(health.values()) <= {"ok", "unknown"}, health

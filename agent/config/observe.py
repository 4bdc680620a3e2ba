"""Settings of what operators look at: the metrics and health listener, and the readiness policy."""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.config.sections import Section


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port), or ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:9465")
    return host, int(port)


def _listen(value: str) -> str:
    value = value.strip()
    if value:
        parse_listen(value)
    return value


class MetricsSettings(Section):
    """The agent's Prometheus endpoint, with ``/healthz`` and ``/readyz`` on the same listener."""

    listen: str = Field(default="", description="HOST:PORT for /metrics, /healthz, /readyz; empty: off")

    @field_validator("listen")
    @classmethod
    def _check(cls, value: str) -> str:
        return _listen(value)


class HealthSettings(Section):
    """When ``/readyz`` (and the readiness it reports) turns red."""

    max_silence: float = Field(
        default=0.0, ge=0, description="seconds without an arriving event before not ready; 0: not checked"
    )


def check_listen(value: str) -> str:
    """The validator of :attr:`MetricsSettings.listen`, for other sections' listeners."""
    return _listen(value)

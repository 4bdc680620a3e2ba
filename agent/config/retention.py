"""Retention: how long history, quarantine and delivered notifications are kept (``XMPPMON_RETENTION__…``)."""

from __future__ import annotations

from pydantic import Field

from agent.config.sections import Section


class RetentionSettings(Section):
    """Days each kind of row is kept; 0 keeps it forever. State tables are current values, never pruned by age."""

    history_days: float = Field(
        default=30,
        ge=0,
        description="events and api_calls by ts, state_changes by received_at; older arrivals are not stored",
    )
    quarantine_days: float = Field(default=30, ge=0, description="quarantined events, by received_at")
    deliveries_days: float = Field(
        default=14, ge=0, description="notifications and their deliveries, once every sink is done with them"
    )
    interval: float = Field(default=300, gt=0, description="seconds between prune passes")

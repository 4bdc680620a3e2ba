"""Alerts: the status-code catalogue (data) and the rules (pure). Knows neither the store nor the session."""

from agent.alerts.catalogue import CATALOGUE, CONDITION_CODES, Status, classify, effective_rules
from agent.alerts.model import Alert, Identity, Observation, Outcome, Transition
from agent.alerts.rules import AlertRules

__all__ = [
    "CATALOGUE",
    "CONDITION_CODES",
    "Alert",
    "AlertRules",
    "Identity",
    "Observation",
    "Outcome",
    "Status",
    "Transition",
    "classify",
    "effective_rules",
]

"""Per sink and alert, in order: which pending notification goes next, and which a later one supersedes.

Two rules hold for every sink:

* **one at a time per alert**: only the oldest pending notification of an alert can be sent, and only
  once its own ``next_attempt_at`` has come (:data:`DUE`). A parked ``firing`` therefore holds back
  the ``resolved`` that followed it, and a round never carries two notifications of one alert (a 207
  or a split batch could otherwise confirm the later one and fail the earlier);
* **replace what the sink allows** (:func:`supersede`, run when new notifications are taken, with the
  sink's :data:`Policy`):

  - ``latest`` (Alertmanager, which keeps only an alert's current state): every pending notification
    of an alert but the newest is superseded, so the newest goes at once, even past a parked one;
  - ``ordered`` (webhook, XMPP: receivers that may keep a history): every transition is sent, in
    order; only a pending ``repeat`` (a reminder that the alert still fires, with a newer count) is
    superseded when a later notification of the same alert is pending.

A superseded notification is final, like ``delivered`` and ``dead``: it is never sent to that sink
(an attempt in flight when it was superseded may still end ``delivered``; one that fails stays
superseded). ``delivery_state.alert_id`` (migration 5) and its indexes make both a few index seeks
per notification, not a scan of the outbox per round.
"""

from __future__ import annotations

from typing import Final, Literal

Policy = Literal["ordered", "latest"]

#: Pending, due, and no older pending notification of the same alert; oldest first.
DUE: Final = (
    "SELECT n.id, n.key, n.transition, n.alert, n.created_at, d.attempts"
    # INDEXED BY: the primary key would also give this order, but through every delivered row kept.
    " FROM delivery_state d INDEXED BY delivery_state_order JOIN notifications n ON n.id = d.notification_id"
    " WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM delivery_state e WHERE e.sink = d.sink AND e.state = 'pending'"
    " AND e.alert_id = d.alert_id AND e.notification_id < d.notification_id)"
    " ORDER BY d.notification_id LIMIT ?"
)

_LATER: Final = (
    "SELECT {what} FROM delivery_state e WHERE e.sink = delivery_state.sink AND e.state = 'pending'"
    " AND e.alert_id = delivery_state.alert_id"
)


def supersede(policy: Policy) -> str:
    """The UPDATE marking what ``policy`` lets a later pending notification replace; params: now, sink.

    The reason names the newest pending notification of the alert, which is never superseded itself.
    """
    newest = _LATER.format(what="max(e.notification_id)")
    later = _LATER.format(what="1") + " AND e.notification_id > delivery_state.notification_id"
    repeat = (
        " AND (SELECT transition FROM notifications WHERE id = delivery_state.notification_id) = 'repeat'"
        if policy == "ordered"
        else ""
    )
    return (
        "UPDATE delivery_state SET state = 'superseded', updated_at = ?,"
        f" reason = 'superseded by notification ' || (SELECT key FROM notifications WHERE id = ({newest}))"
        f" WHERE sink = ? AND state = 'pending' AND EXISTS ({later}){repeat}"
    )

"""Short classes for quarantine reasons: metric labels, ``xmppmon top`` and Datasette group by them.

A reason in the ``quarantine`` table is free text from :mod:`agent.events` (it names the attribute,
the limit, the decoder's message). A label must come from a small fixed set, so each reason maps to
one class by the first of :data:`REASON_CLASSES` whose SQL ``LIKE`` pattern it matches. The same
patterns build the SQL ``CASE`` the store's readers use (:func:`reason_class_sql`), so Python and
SQL always agree.
"""

from __future__ import annotations

import functools
import re
from typing import Final

#: (SQL LIKE pattern, class), first match wins; the texts are those agent/events.py raises.
REASON_CLASSES: Final[tuple[tuple[str, str], ...]] = (
    ("payload is not valid JSON%", "bad_json"),
    ("payload is a JSON %", "not_object"),
    ("payload is larger than %", "too_large"),
    ("payload is empty%", "empty_payload"),
    ("unknown kind %", "unknown_kind"),
    ("attribute ts %", "bad_timestamp"),
    ("attribute %", "bad_attribute"),
    ("% payload %", "bad_payload"),  # "api payload needs …", "tag payload field value must …"
)
#: What a reason matching no pattern is counted as (a plugin's own reason, a future text).
OTHER: Final = "other"
CLASSES: Final = (*dict.fromkeys(c for _, c in REASON_CLASSES), OTHER)


def _regex(pattern: str) -> re.Pattern[str]:
    # SQLite's LIKE: % any run, _ one character, ASCII case-insensitive.
    body = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL)


_COMPILED: Final = tuple((_regex(pattern), name) for pattern, name in REASON_CLASSES)


@functools.lru_cache(maxsize=1024)
def reason_class(reason: str) -> str:
    """The short class of one quarantine reason (cached: a stream repeats a few reasons)."""
    for regex, name in _COMPILED:
        if regex.fullmatch(reason):
            return name
    return OTHER


def reason_class_sql(column: str = "reason") -> str:
    """An SQL expression giving :func:`reason_class` of ``column``."""
    whens = " ".join(f"WHEN {column} LIKE '{pattern}' THEN '{name}'" for pattern, name in REASON_CLASSES)
    return f"CASE {whens} ELSE '{OTHER}' END"

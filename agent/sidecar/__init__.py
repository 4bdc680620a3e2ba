"""The relay (``xmppmon sidecar``): reads the notification outbox and delivers it to the sinks.

::

    runner.py             the process: one loop per sink, the dead man's switch
    instrumentation.py    seed 001's request and response headers on every HTTP request
    http.py               the retry round shared by the HTTP sinks (stamina, Retry-After)
    sinks/webhook.py      batched webhook (seed 003: 207, 413, 400, 429, 401/403)
    sinks/alertmanager.py Prometheus Alertmanager ``POST /api/v2/alerts``
    sinks/xmpp.py         messages to operator JIDs or a room, confirmed by XEP-0198 or XEP-0184

Its bookkeeping in SQL (pending work, attempts, its own alerts) is ``agent.store.outbox``.
"""

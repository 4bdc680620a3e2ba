"""Prometheus metrics and the health endpoints (``/metrics``, ``/healthz``, ``/readyz``).

``registry`` a private registry per process, gauges read from the database at scrape time
``agent``    the agent's metrics, fed by the writer's commit hook and the session's hooks
``sidecar``  the sidecar's metrics per sink
``http``     the listener, in a thread
"""

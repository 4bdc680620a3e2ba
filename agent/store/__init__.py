"""The store: the only place with SQL. One writer (group commit, barriers), the schema, every reader.

``agent.store.writer``     the agent's writer task (:class:`Store`)
``agent.store.connection`` opening files and connections, migrations
``agent.store.schema``     the numbered migrations (data)
``agent.store.rows``       the SQL of each record kind
``agent.store.alerts``     alert state and notifications, in the caller's transaction
``agent.store.outbox``     the sidecar's delivery bookkeeping
``agent.store.exports``    export jobs and the rows they read
``agent.store.readers``    every read-only query (CLI, supervisor, doctor)
"""

from agent.store.batch import Commit
from agent.store.connection import connect_readonly, create_private_file, open_writer
from agent.store.rows import Quarantined
from agent.store.writer import Store

__all__ = ["Commit", "Quarantined", "Store", "connect_readonly", "create_private_file", "open_writer"]

"""The store on SQL (SQLite, the embedded default, and PostgreSQL), one module per port:

  connection.py  connections, transactions, the schema's upgrades, the operator's probes
  tables.py      the schema (SQLModel); migrations/ holds its Alembic history
  store.py       the engine's Store: profiles, aliases, processed messageIds, timers, the batch's commit
  outbox.py      the Outbox (claims, settles, leases) and the Inbox (in-app messages)
  erasure.py     the Erasure
  reads.py       the Reads: state counts, traces, the report's snapshot
  versions.py    the Versions: journey definitions by version, the versions in force
  rows.py        the JSON of trace rows and outbox payloads

`SqlStore` is every port at once, the one class the service opens.
"""

from __future__ import annotations

from journey_engine.ports import LEASE_SECONDS, parse_time, send_from_payload, state_deltas

from .connection import DEFAULT_URL, _alembic, normalise_url
from .erasure import SqlErasure
from .outbox import SqlInbox
from .reads import SqlReads, SqlSnapshot
from .rows import _dumps, _json_default
from .tables import (
    aliases_t,
    bandit_t,
    counts_t,
    enrolled_t,
    erased_t,
    facts_t,
    history_t,
    outbox_t,
    processed_t,
    profiles_t,
    trace_t,
)
from .versions import SqlVersions

__all__ = ["DEFAULT_URL", "LEASE_SECONDS", "SqlSnapshot", "SqlStore", "_alembic", "_dumps", "_json_default",
           "aliases_t", "bandit_t", "counts_t", "enrolled_t", "erased_t", "facts_t", "history_t", "normalise_url",
           "outbox_t", "parse_time", "processed_t", "profiles_t", "send_from_payload", "state_deltas", "trace_t"]


class SqlStore(SqlErasure, SqlInbox, SqlReads, SqlVersions):
    """Store, Outbox, Inbox, Erasure, Reads and Versions (journey_engine/ports.py) on SQLite or PostgreSQL."""

    def twin(self) -> SqlStore:
        """Another store on the same database, with connections of its own: what a forked worker process
        uses (a connection must never be shared across a fork)."""
        return SqlStore(self.url, defaults=self.defaults, upgrade=False, wall=self.wall, schema=self.schema)

"""Where the engine's state lives: `open_store` opens the store a database URL names.

`memory://` is the memory store (journey_engine/memory.py, keeping its trace and outbox): nothing
survives the process, which suits tests and demos; any other URL is a SQL database (sql/).
"""

from __future__ import annotations

from typing import Any

from journey_engine.memory import MemoryStore
from journey_engine.ports import ServiceStore

MEMORY_URL = "memory://"


def open_store(url: str, *, defaults: dict[str, Any] | None = None, schema: str | None = None) -> ServiceStore:
    """The store at `url` (SqlStore's errors: StoreUnavailable, StoreVersionError)."""
    if url == MEMORY_URL:
        return MemoryStore(keep=True)
    from adapters.storage.sql import SqlStore  # SQLAlchemy and the drivers load only for a database

    return SqlStore(url, defaults=defaults, schema=schema)

"""Several engine processes on one database: users are split into partitions, one per process
(`journey serve --workers`, adapters/sources/processes.py; `journey bench --workers`).

One Python process runs the engine on one core (the GIL), and a store's own work (SQLite's pages, the
PostgreSQL server) takes part of that core too. Processes that own disjoint users share a database
without contending for the same rows: each user's events go to one process, in order, and the stores'
compare-and-set settles the rare user two processes touch at once (a timer claimed by one while the
other applies an event, an alias across partitions) by a retry.
"""

from __future__ import annotations

import zlib


def partition(user_id: str, parts: int) -> int:
    """The partition that owns `user_id`: stable across processes, restarts and Python versions
    (CRC-32, not `hash`, which is salted per process)."""
    return zlib.crc32(user_id.encode()) % parts if parts > 1 else 0

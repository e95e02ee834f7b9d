"""What `journey serve` is configured with (flags and environment, read by adapters/cli.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(slots=True)
class Settings:
    write_keys: list[str] = field(default_factory=list)  # empty: writes need no key (development)
    admin_key: str | None = None  # None: admin endpoints are open (development, loopback)
    trigger_window: timedelta = timedelta(hours=24)  # older events update metrics but move no journey
    queue_limit: int = 50_000  # events waiting for the engine before 429
    max_batch_events: int = 2_000  # events per commit
    tick: float = 1.0  # seconds between timer rounds
    outbox_lease: float = 60.0  # JOURNEY_OUTBOX_LEASE_SECONDS: how long a claimed send is kept from other dispatchers
    send_expiry: timedelta | None = timedelta(hours=24)  # JOURNEY_SEND_EXPIRY: how late a send may go (None: never)
    # JOURNEY_KEPT_PROFILES: profiles a bus worker keeps after committing them (the store's `keep_profiles`)
    kept_profiles: int = 100_000

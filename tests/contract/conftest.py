"""What every port's contract test starts from: a store of each kind, and sends and records to commit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journey_engine.compiler import load_workspace
from journey_engine.engine import RenderedMessage, SendMessage
from journey_engine.ports import Batch, ServiceStore

from ..conftest import StoreFactory

COMPILED = load_workspace(Path(__file__).parent.parent / "workspaces" / "basic")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def stores(store_factory: StoreFactory) -> tuple[ServiceStore, ServiceStore]:
    """Two handles on one store, as two workers have: two connections to one database; memory, one object."""
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        store = store_factory()
        return store, store
    defaults = dict(COMPILED.metrics.defaults)
    return store_factory(defaults=defaults), store_factory(defaults=defaults)


@pytest.fixture
def store(stores: tuple[ServiceStore, ServiceStore]) -> ServiceStore:
    """One store of each kind (memory, memory-cold, SQLite, PostgreSQL)."""
    return stores[0]


def send(key: str, user: str = "u1", *, channel: str = "email", minutes: int = 0, message: str = "welcome_email",
         context: dict[str, Any] | None = None) -> SendMessage:
    """A committed send decided `minutes` after T0."""
    return SendMessage(idempotency_key=key, at=T0 + timedelta(minutes=minutes), user=user, journey="onboarding",
                       key=None, state="welcome", message=message, channel=channel, locale=None,
                       context=context or {"traits": {"email": f"{user}@example.com"}})


def commit_sends(store: ServiceStore, *sends: SendMessage) -> None:
    store.commit(Batch(sends=list(sends)))


def render(send: SendMessage) -> RenderedMessage:
    """A renderer that says which send it rendered."""
    return RenderedMessage(subject=None, title=f"title of {send.message}", body=f"body for {send.user}",
                           url=f"https://example.com/{send.idempotency_key}")


def settled(row: dict[str, Any], status: str, at: datetime, *, attempts: int = 1,
            error: str | None = None) -> dict[str, Any]:
    """The settle of a claimed row: its channel answered `status` at `at`."""
    return {"key": row["key"], "token": row["token"], "status": status, "attempts": attempts,
            "last_error": error, "next_attempt_at": at.timestamp()}

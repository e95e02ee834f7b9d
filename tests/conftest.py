"""Shared fixtures: the stores every contract test runs against (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from journey_engine.memory import MemoryStore

POSTGRES_URL = os.environ.get("JOURNEY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_or_skip() -> str:
    """The test PostgreSQL, emptied; skipped on a developer machine without it, never in CI."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        engine.dispose()
    except Exception as exc:  # any reason it cannot be used
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL must be up in CI ({POSTGRES_URL}): {exc}") from exc
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}; start it or set JOURNEY_TEST_POSTGRES_URL")
    return POSTGRES_URL


StoreFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "memory-cold", "sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes a fresh store of each kind; the same database for every call within one test.
    `memory-cold` keeps a single profile live and every other one encoded (`MemoryStore(hot=1)`); both
    memory stores keep the trace and the outbox (`keep=True`), as a service on memory does."""
    made: list[Any] = []
    url = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journey.db'}"
    elif request.param == "postgres":
        url = postgres_or_skip()

    def make(**kwargs: Any) -> Any:
        if url is None:
            store: Any = MemoryStore(hot=1 if request.param == "memory-cold" else None, keep=True)
        else:
            from adapters.storage.sql import SqlStore

            store = SqlStore(url, **kwargs)
        made.append(store)
        return store

    make.kind = request.param.removesuffix("-cold")  # type: ignore[attr-defined]
    yield make
    for store in made:
        store.close()


class Inbox:
    """A real SMTP server's handler (aiosmtpd) that keeps what it received."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # aiosmtpd names it
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a loopback port, and what it received."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

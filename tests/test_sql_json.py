"""The SQL store writes trace bodies and outbox payloads with orjson: every reader (`json.loads`) must get
back what the standard library's `json.dumps` wrote before, whatever a record holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.storage.sql import SqlStore, _dumps, _json_default, send_from_payload
from journey_engine import native
from journey_engine.engine import SendMessage
from journey_engine.ports import Batch

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass
class _Thing:
    a: int


def _old(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


VALUES: list[Any] = [
    {"kind": "transition", "at": "2026-01-05T09:00:00Z", "user": "u1", "from": "a", "to": "b", "n": 3, "x": 1.5},
    {"at": T0, "micro": T0 + timedelta(microseconds=1), "naive": datetime(2026, 1, 5, 9),
     "london": datetime(2026, 1, 5, 9, tzinfo=ZoneInfo("Europe/London")),
     "berlin": datetime(2026, 7, 5, 9, tzinfo=ZoneInfo("Europe/Berlin")),
     "lmt": datetime(1850, 1, 5, 9, tzinfo=ZoneInfo("Europe/Amsterdam")),  # an offset with seconds
     "odd": datetime(2026, 1, 5, 9, tzinfo=timezone(timedelta(seconds=30))), "day": date(2026, 1, 5)},
    {"set": {"b", "a"}, "frozen": frozenset({3, 1}), "decimal": Decimal("2.50"), "tuple": (1, "x", None),
     "nested": {"list": [True, False, None, {"deep": [1.0, -0.0, 1e16, 1e-7]}]}, "thing": _Thing(1)},
    {"unicode": "Grüße 🎉 \u2028 \"quoted\" \\ \n\t", "empty": {}, "none": None},
    {1: "int key", None: "none key", 2.5: "float key", False: "bool key"},  # json turns keys into strings
    {"big": 2**70, "neg": -(2**63)},
    {"surrogate": "\ud800"},
    [1, 2, 3],
]


@pytest.mark.parametrize("value", VALUES)
def test_orjson_reads_back_as_json_wrote_it(value: Any) -> None:
    assert json.loads(_dumps(value)) == json.loads(_old(value))


def test_trace_and_outbox_round_trip_through_the_store(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/j.db")
    record = {"kind": "message_sent", "at": "2026-01-05T09:00:00Z", "user": "u1", "journey": "j",
              "tags": {"x"}, "when": T0, "note": "Grüße"}
    send = SendMessage(idempotency_key="u1:j::1:1:hello", at=T0, user="u1", journey="j", key=None, state="s",
                       message="hello", channel="in_app", locale=None,
                       context={"traits": {"email": "a@b.c", "since": T0}, "metrics": {"n": 2, "r": 1.25}})
    store.commit(Batch(records=[record], sends=[send]))
    assert store.trace("u1") == [json.loads(_old(record))]
    (row,) = store.outbox_of("u1")
    assert json.loads(row["payload"]) == json.loads(_old({n: getattr(send, n) for n in native.fields(SendMessage)}))
    assert send_from_payload(row["payload"]).at == T0
    assert (row["status"], row["attempts"], row["next_attempt_at"], row["token"]) == ("pending", 0, T0.timestamp(),
                                                                                      None)
    store.commit(Batch(sends=[send]))  # the same key again: kept once
    assert len(store.outbox_of("u1")) == 1
    store.close()

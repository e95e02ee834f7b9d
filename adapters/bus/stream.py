"""The event log on NATS JetStream: one stream, P partitions as subjects, one durable pull consumer each.

A user's events go to subject `<prefix>.<partition>`, partition = `journey_engine.ports.partition(user, P)`
(the CRC-32 the multi-process host owns users by), so one partition holds every event of its users in the
order the stream stored them. P is fixed when the stream is created (`JOURNEY_BUS_PARTITIONS`, default 16)
and written into the stream's description: later processes read it from there, whatever they were given,
because a user must never move to another partition. A message holds one partition's events of one request
(`encode_events`: the log's cost is per message, on the server, the publisher and the worker alike), with a
`Nats-Msg-Id` made of their messageIds, so a request retried within the stream's duplicate window is stored
once; the store's messageId dedupe is the exact one.

The NATS client is asyncio; the service runs threads. `Loop` runs the client on a thread of its own and
the rest of the service calls it through concurrent futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

import nats
import nats.errors
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from journey_engine.events import Event, parse_datetime, with_datetimes
from journey_engine.ports import partition

T = TypeVar("T")

DEFAULT_PARTITIONS = 16
DUPLICATE_WINDOW = 120.0  # seconds: JetStream's own default; the store's messageId dedupe is the exact one
ACK_WAIT = 30.0  # seconds before an unacknowledged message is delivered again to the same consumer
MAX_ACK_PENDING = 20_000  # messages a partition's owner may hold unacknowledged: bounds its memory
_DESCRIPTION = "journey-engine event log; partitions="
_ZERO = timedelta(0)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """Where the log is: NATS servers (comma-separated URLs), the stream's name and subject prefix, its
    partitions and replicas (used only when this process creates the stream)."""

    url: str
    stream: str = "JOURNEY"
    prefix: str = "journey.events"
    partitions: int = DEFAULT_PARTITIONS
    replicas: int = 1

    @classmethod
    def from_env(cls, url: str, **overrides: Any) -> BusConfig:
        """`url` with JOURNEY_BUS_STREAM, JOURNEY_BUS_PREFIX, JOURNEY_BUS_PARTITIONS, JOURNEY_BUS_REPLICAS."""
        env = os.environ
        values: dict[str, Any] = {"url": url, "stream": env.get("JOURNEY_BUS_STREAM") or "JOURNEY",
                                  "prefix": env.get("JOURNEY_BUS_PREFIX") or "journey.events",
                                  "partitions": int(env.get("JOURNEY_BUS_PARTITIONS") or DEFAULT_PARTITIONS),
                                  "replicas": int(env.get("JOURNEY_BUS_REPLICAS") or 1)}
        values.update(overrides)
        return cls(**values)

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.url.split(",") if s.strip()]

    def subject(self, part: int) -> str:
        return f"{self.prefix}.{part}"

    def durable(self, part: int) -> str:
        """The prefix of the durable consumers that read partition `part` (see `take_consumer`)."""
        return f"{self.stream}_p{part}"


class Loop:
    """An asyncio loop on a thread of its own: where the NATS client lives."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


async def connect(config: BusConfig, name: str) -> tuple[Client, JetStreamContext]:
    """A client that reconnects for ever (a NATS node may restart; the cluster's others take over)."""
    client = await nats.connect(servers=config.servers, name=name, connect_timeout=2, reconnect_time_wait=0.25,
                                max_reconnect_attempts=-1, allow_reconnect=True)
    return client, client.jetstream(timeout=5)


async def ensure_stream(js: JetStreamContext, config: BusConfig, wait: float = 60.0) -> BusConfig:
    """Create the stream when missing; return the config with the partitions the stream was created with.
    Waits up to `wait` seconds for JetStream to answer (a cluster just started elects its leader first)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = await _stream(js, config)
            break
        except (nats.errors.TimeoutError, ServiceUnavailableError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    described = info.config.description or ""
    if not described.startswith(_DESCRIPTION):
        raise RuntimeError(f"stream {config.stream} was not created by journey-engine (no partition count in its "
                           "description); name another with JOURNEY_BUS_STREAM")
    parts = int(described[len(_DESCRIPTION):])
    return BusConfig(config.url, config.stream, config.prefix, parts, info.config.num_replicas or 1)


async def _stream(js: JetStreamContext, config: BusConfig) -> Any:
    try:
        return await js.stream_info(config.stream)
    except NotFoundError:
        return await js.add_stream(StreamConfig(
            name=config.stream, subjects=[f"{config.prefix}.*"], description=f"{_DESCRIPTION}{config.partitions}",
            num_replicas=config.replicas, duplicate_window=DUPLICATE_WINDOW, storage=StorageType.FILE))


async def take_consumer(client: Client, js: JetStreamContext, config: BusConfig, part: int, token: int) -> str:
    """The durable consumer a new owner (lease `token`) reads the partition with, named after the lease and
    starting where the previous owners' acknowledgements stopped; theirs are deleted once it exists.

    A consumer of its own, not the previous owner's: what the previous owner held unacknowledged would come
    back only after `ACK_WAIT`, and behind newer messages (a user's events out of order). What it had
    committed without acknowledging comes again, and the store's messageId dedupe drops it. An attempt cut
    short (a NATS node away) leaves the older consumers in place, so the next attempt starts from them."""
    mine = f"{config.durable(part)}_t{token}"
    others = []
    for name in await _consumer_names(client, config, part):
        with contextlib.suppress(NotFoundError):  # deleted since by another taker
            others.append(await js.consumer_info(config.stream, name))
    if not any(c.name == mine for c in others):
        start = max((c.ack_floor.stream_seq + 1 if c.ack_floor and c.ack_floor.stream_seq else 1 for c in others),
                    default=1)
        await js.add_consumer(config.stream, ConsumerConfig(
            durable_name=mine, filter_subject=config.subject(part), ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None, ack_wait=ACK_WAIT, max_ack_pending=MAX_ACK_PENDING,
            max_deliver=-1))
    for old in others:
        if old.name != mine:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(config.stream, old.name)
    return mine


async def _consumer_names(client: Client, config: BusConfig, part: int) -> list[str]:
    """The names of the durable consumers of partition `part`, by the JetStream API's list of names. Not
    `consumers_info`: after listing every consumer's info, nats-server 2.9 served every pull consumer of
    the stream far slower for as long as it was read (docs/performance.md)."""
    prefix = f"{config.durable(part)}_t"
    names: list[str] = []
    while True:
        reply = await client.request(f"$JS.API.CONSUMER.NAMES.{config.stream}",
                                     orjson.dumps({"offset": len(names)}), timeout=5)
        body = orjson.loads(reply.data)
        if "error" in body:
            raise RuntimeError(f"JetStream refused the consumer names of {config.stream}: {body['error']}")
        page = body.get("consumers") or []
        names.extend(page)
        if not page or len(names) >= int(body.get("total", 0)):
            return [name for name in names if name.startswith(prefix)]


PULL_EXPIRES = 1.0  # seconds a pull request waits for messages before the server answers it empty
ROOM_WAIT = 0.005  # seconds between looks at a full reader's backlog


async def pull(client: Client, config: BusConfig, consumer: str, batch: int, deliver: Callable[[Any], None],
               alive: Callable[[], bool], room: Callable[[], bool] = lambda: True) -> None:
    """Read a durable pull consumer while `alive()`, handing each message to `deliver` in stream order,
    asking for more only when `room()` (the reader's backlog is bounded, not only by the server's
    `MAX_ACK_PENDING`).

    The JetStream pull protocol itself, not nats-py's `fetch`, which spends a task, a timeout and a uuid on
    every message (more than the engine spends on the event): one subscription on an inbox of its own, one
    pull request for `batch` messages outstanding at a time, asked again once it is served, or answered
    empty, or `PULL_EXPIRES` after it was asked: the server does not always answer a request that expires
    after part of its batch (seen here: a partition stalled until a longer wait ran out)."""
    served = asyncio.Event()
    left = 0

    async def on_message(msg: Any) -> None:
        nonlocal left
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:  # 404 / 408: the request is over; 100: a heartbeat
            if status != "100":
                served.set()
            return
        deliver(msg)
        left -= 1
        if left <= 0:
            served.set()

    inbox = client.new_inbox()
    sub = await client.subscribe(inbox, cb=on_message)
    request = orjson.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)})
    try:
        while alive():
            if not room():
                await asyncio.sleep(ROOM_WAIT)
                continue
            served.clear()
            left = batch
            await client.publish(f"$JS.API.CONSUMER.MSG.NEXT.{config.stream}.{consumer}", request, reply=inbox)
            with contextlib.suppress(TimeoutError):  # expired on the server by now, answered or not
                await asyncio.wait_for(served.wait(), PULL_EXPIRES)
    finally:
        with contextlib.suppress(Exception):  # the connection went first
            await sub.unsubscribe()


async def lag(js: JetStreamContext, config: BusConfig, consumer: str) -> int:
    """Messages of the partition not yet acknowledged by its consumer."""
    info = await js.consumer_info(config.stream, consumer)
    return int((info.num_pending or 0) + (info.num_ack_pending or 0))


# --- the wire format --------------------------------------------------------------------------------

_FIELDS = tuple(f.name for f in fields(Event))


def with_id(event: Event) -> Event:
    """The event with a messageId: one made up for an event that came without (so a redelivery of it is
    recognised like any other)."""
    if event.message_id is not None:
        return event
    values = {name: getattr(event, name) for name in _FIELDS}
    values["message_id"] = f"bus-{uuid.uuid4().hex}"
    return Event(**values)


MESSAGE_BYTES = 256 * 1024  # a message's body at most (one larger event alone): NATS refuses over 1 MiB by default


def encode_events(events: list[Event]) -> list[tuple[bytes, str]]:
    """One partition's events of a request as few messages as fit `MESSAGE_BYTES`, in order, each with its
    `Nats-Msg-Id`: the event's messageId for a message of one, a digest of the messageIds for more (a retried
    request makes the same messages, so JetStream's duplicate window recognises them too). JSON, never
    pickle: anyone who can publish on the subject must not be able to run code in a worker."""
    out: list[tuple[bytes, str]] = []
    bodies: list[bytes] = []
    ids: list[str] = []
    size = 0
    for event in events:
        body = orjson.dumps({"type": event.type, "user": event.user_id, "at": event.timestamp, "name": event.name,
                             "properties": event.properties, "traits": event.traits, "id": event.message_id,
                             "previous": event.previous_id, "backfill": event.backfill})
        if bodies and size + len(body) > MESSAGE_BYTES:
            out.append(_message(bodies, ids))
            bodies, ids, size = [], [], 0
        bodies.append(body)
        ids.append(str(event.message_id))
        size += len(body) + 1
    if bodies:
        out.append(_message(bodies, ids))
    return out


def _message(bodies: list[bytes], ids: list[str]) -> tuple[bytes, str]:
    if len(ids) == 1:
        return b'{"events":[' + bodies[0] + b"]}", ids[0]
    digest = hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()
    return b'{"events":[' + b",".join(bodies) + b"]}", f"batch-{len(ids)}-{digest}"


def encode_erase(user: str) -> bytes:
    return orjson.dumps({"erase": user})


def decode(data: bytes) -> list[Event] | str:
    """A message's events, or the id of a user to erase. A message of one bare event (as written before
    events were grouped per partition) is read too."""
    body = orjson.loads(data)
    if "erase" in body:
        return str(body["erase"])
    return [_event(one) for one in body["events"]] if "events" in body else [_event(body)]


def _event(body: dict[str, Any]) -> Event:
    try:  # the form `encode_events` writes (orjson's ISO 8601 of a UTC time), read by the C parser
        at: datetime | None = datetime.fromisoformat(body["at"])
    except (TypeError, ValueError):
        at = None
    if at is None or at.utcoffset() != _ZERO:
        at = parse_datetime(body["at"])
    if at is None:
        raise ValueError(f"bus message with an unreadable timestamp {body['at']!r}")
    return Event(type=body["type"], user_id=body["user"], timestamp=at, name=body["name"],
                 properties=with_datetimes(body["properties"]), traits=with_datetimes(body["traits"]),
                 message_id=body["id"], previous_id=body["previous"], backfill=body["backfill"])


def grouped(events: list[Event], parts: int) -> dict[int, list[Event]]:
    """The events by partition (see `route`), each partition's in the order given."""
    groups: dict[int, list[Event]] = {}
    for event, part in zip(events, route(events, parts), strict=True):
        groups.setdefault(part, []).append(event)
    return groups


def route(events: list[Event], parts: int) -> list[int]:
    """Each event's partition. An alias goes to its new id's partition, where the two profiles are merged,
    and so do the later events of the request that name the merged id (as `ProcessHost._split`); an event
    of an id merged by an earlier request goes to its old id's partition, whose owner applies it to the
    user it was merged into."""
    merged: dict[str, str] = {}
    for event in events:
        if event.type == "alias" and event.previous_id and event.previous_id != event.user_id:
            merged[event.previous_id] = event.user_id
    out = []
    for event in events:
        user = event.user_id
        for _ in range(len(merged)):  # follow a -> b -> c within the request, never round a loop
            if user not in merged:
                break
            user = merged[user]
        out.append(partition(user, parts))
    return out

"""The Segment-compatible HTTP API (SPEC §6) and the user API, on FastAPI.

Requests are validated here and handed to one engine worker thread, which applies everything that
is waiting as one batch and commits once (group commit); a request is answered `200 {"success": true}`
only after its events are committed. A batch with a bad message keeps the good ones (committed) and
answers 400 naming the bad message's index and field, so the SDKs do not resend the good ones.
Validation is shared with `journey ingest` (adapters/sources/segment.py). 503 means the store is
unavailable or other workers kept winning the race for the same users (retry either way). An event the
engine raises on (a bug, logged) is isolated by halving the request: it is refused by index like a bad
message (`engine_error` in the metrics) and the rest is committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import math
import queue
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote_from_bytes, unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.scheduling.apscheduler import build_scheduler
from adapters.scheduling.dispatcher import Dispatcher
from adapters.sources.dashboard import add_dashboard_routes
from adapters.sources.segment import (
    MAX_BATCH,
    MAX_MESSAGE,
    BadMessage,
    BodyError,
    not_erased,
    parse_json,
    sent_at_problem,
    to_events,
)
from adapters.storage.sql import LEASE_SECONDS, SqlStore
from journey_engine import trace
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine, Outcome
from journey_engine.events import Event
from journey_engine.graph import to_mermaid
from journey_engine.ports import Batch, Channel, ConflictError, StoreUnavailable
from journey_engine.runtime import Runtime

if TYPE_CHECKING:
    from adapters.sources.processes import ProcessWorkers

log = logging.getLogger("journey.serve")
T = TypeVar("T")

SINGLE_CALLS = ("track", "identify", "alias", "page", "screen", "group")


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


class Refused(Exception):
    """A request answered with `{"code", "message"}`: a 4xx, or 503/500 when the events were not committed.

    `events` is how many events it refuses, for the metrics (1 when the body was never read)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 events: int = 1) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.events = events


class Overloaded(Exception):
    pass


class WorkerLost(StoreUnavailable):
    """An engine process stopped while it held these events (`--workers`): some may be committed, so retry."""


class PartlyCommitted(StoreUnavailable):
    """A request spread over engine processes (`--workers`) of which some committed their part and one
    failed: the retry is safe for events with a messageId (deduplicated), as for any retry."""


class EngineWorker:
    """The one thread that runs the engine: batches of events, timer rounds, erasures, in order."""

    def __init__(self, runtime: Runtime, store: SqlStore, settings: Settings, metrics: Metrics,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.runtime, self.store, self.settings, self.metrics, self.clock = runtime, store, settings, metrics, clock
        self.work: queue.Queue[tuple[list[Event] | Callable[[], Any], Future[Any]]] = queue.Queue()
        self.waiting = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the engine thread (again after a stop; a second start while running does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="journey-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, events: list[Event]) -> Future[None]:
        with self._lock:
            if self.waiting + len(events) > self.settings.queue_limit:
                raise Overloaded
            self.waiting += len(events)
        future: Future[None] = Future()
        self.work.put((events, future))
        self.metrics.queue_depth.set(self.waiting)
        return future

    def call(self, job: Callable[[], Any]) -> Future[Any]:
        """Run `job` on the engine thread, between batches (erasure must not race with events)."""
        future: Future[Any] = Future()
        self.work.put((job, future))
        return future

    def timers(self) -> None:
        """Fire what is due (the timer job's turn)."""
        drain_timers(self, self.metrics)

    def enroll(self) -> Future[Any]:
        """New segment-entry journeys take their segment's members (SPEC §3 item 5)."""
        return self.call(lambda: self.runtime.enroll(self.clock()))

    def erase(self, user: str) -> Future[Any]:
        return self.call(lambda: self.store.erase(user, self.clock()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.work.get(timeout=0.05)
            except queue.Empty:
                continue
            items = [first]
            size = len(first[0]) if isinstance(first[0], list) else 0
            while size < self.settings.max_batch_events:
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                size += len(item[0]) if isinstance(item[0], list) else 0
            self._handle(items)

    def _handle(self, items: list[tuple[list[Event] | Callable[[], Any], Future[Any]]]) -> None:
        requests = [(payload, f) for payload, f in items if isinstance(payload, list)]
        if requests and not self._commit(requests) and len(requests) > 1:
            for request in requests:  # one bad request must not fail the others in its group
                self._commit([request])
        for payload, future in items:
            if not isinstance(payload, list):
                try:
                    future.set_result(payload())
                except Exception as exc:
                    future.set_exception(exc)

    def _commit(self, requests: list[tuple[list[Event], Future[Any]]]) -> bool:
        """Apply and commit these requests' events as one batch; settle their futures if it worked.

        A future's result is the positions of its events the engine raised on (see `_halve`)."""
        events = [e for payload, _ in requests for e in payload]
        began = time.perf_counter()
        try:
            kept = not_erased(events, self.store.erased)
            outcome = self.runtime.process([events[i] for i in kept], self.clock())
            failed: list[int] = []
        except (StoreUnavailable, ConflictError) as exc:  # not committed: nobody is told it was accepted
            log.warning("batch of %d events not committed: %s", len(events), exc)
            return self._failed(requests, exc)
        except Exception as exc:
            if len(requests) > 1:
                return False  # the caller retries each request alone, so one cannot fail the others
            log.exception("the engine raised on a request of %d events; isolating the event(s)", len(events))
            try:
                failed = [kept[i] for i, _ in self._halve([events[i] for i in kept], self._apply)]
            except Exception as again:
                return self._failed(requests, again if isinstance(again, StoreUnavailable | ConflictError) else exc)
            outcome = Outcome()
        self.metrics.observe(outcome, len(events) - len(failed), time.perf_counter() - began)
        for _, future in requests:
            future.set_result(failed)
        self._done(len(events))
        return True

    def _apply(self, events: list[Event]) -> Outcome:
        return self.runtime.process(events, self.clock())

    def wake_some(self, rounds: int) -> tuple[Outcome, bool]:
        """A few timer rounds (`Runtime.advance_some`), each isolating the users it fails on."""
        return self.runtime.advance_some(self.clock(), rounds, wake=self._wake)

    def _wake(self, users: list[str], until: datetime) -> Outcome:
        """Wake one round's claimed users; a user the engine or the store fails on (bad data, a bug) is
        isolated by halving, so every other user of the round moves on. The isolated user keeps the
        claim until its lease runs out, then is tried again (a passing fault heals), traced each time."""
        try:
            return self.runtime.wake(users, until)
        except (StoreUnavailable, ConflictError):
            raise
        except Exception:
            log.exception("a timer round of %d users failed; isolating the user(s)", len(users))
        outcome = Outcome()

        def wake(part: list[str]) -> Outcome:
            out = self.runtime.wake(part, until)
            outcome.extend(out)
            return out

        for position, error in self._halve(users, wake):
            self._trace_isolated(users[position], error)
        return outcome

    def _trace_isolated(self, user: str, error: Exception) -> None:
        record = trace.other("user_isolated", self.clock(), user, error=f"{type(error).__name__}: {error}"[:500],
                             retry_in_s=LEASE_SECONDS)
        try:
            self.store.commit(Batch(records=[record]))
        except Exception:  # the user's id itself may be what the store refuses: the log keeps it
            log.exception("could not trace the isolation of user %r", user)

    def _halve(self, items: list[T], apply: Callable[[list[T]], Any]) -> list[tuple[int, Exception]]:
        """`apply` (which commits) every item it can, halving around the ones it raises on (a bug or data
        no store takes: each is logged); return their positions with the error. One bad event or user
        must not hold back the rest of its request or timer round, nor be retried by the SDKs forever."""
        if not items:
            return []
        try:
            apply(items)
            return []
        except (StoreUnavailable, ConflictError):
            raise
        except Exception as exc:
            if len(items) == 1:
                log.exception("isolated %r: it fails even alone", items[0])
                return [(0, exc)]
        middle = len(items) // 2
        return self._halve(items[:middle], apply) + [(middle + i, e) for i, e in self._halve(items[middle:], apply)]

    def _failed(self, requests: list[tuple[list[Event], Future[Any]]], exc: BaseException) -> bool:
        if len(requests) == 1:
            requests[0][1].set_exception(exc)
            self._done(len(requests[0][0]))
        return False

    def _done(self, events: int) -> None:
        with self._lock:
            self.waiting -= events
        self.metrics.queue_depth.set(self.waiting)


def drain_timers(worker: EngineWorker, metrics: Any) -> None:
    """Fire everything due, a few claims per turn of the engine thread: events queued meanwhile go in between."""
    more = True
    while more:
        outcome, more = worker.call(lambda: worker.wake_some(rounds=4)).result()
        metrics.observe(outcome, 0, 0.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("journey_events_accepted", "Events committed", registry=r)
        self.refused = Counter("journey_events_refused", "Events refused by the ingestion routes, by reason (a body "
                               "refused before its messages were read counts as one)", ["reason"], registry=r)
        self.batch_seconds = Histogram("journey_batch_seconds", "Engine batch latency, apply to commit", registry=r)
        self.queue_depth = Gauge("journey_queue_depth", "Events waiting for the engine", registry=r)
        self.sends = Counter("journey_sends", "Send decisions by channel and outcome", ["channel", "outcome"],
                             registry=r)
        self.timers = Counter("journey_timers_fired", "Timer transitions fired", registry=r)
        self.deliveries = Counter("journey_deliveries", "Channel outcomes by status", ["status"], registry=r)
        self.timers_due = Gauge("journey_timers_due", "Users whose wake-up (timer, window, deferred send) is due",
                                registry=r)
        self.timers_lag = Gauge("journey_timers_lag_seconds", "How long the oldest due wake-up has waited: the "
                                "backlog after downtime, drained between requests", registry=r)
        self.outbox_due = Gauge("journey_outbox_due", "Sends due and waiting for their channel", registry=r)

    def observe(self, outcome: Outcome, events: int, seconds: float) -> None:
        self.add(Observed.of(outcome, events, seconds))

    def add(self, seen: Observed) -> None:
        if seen.events:
            self.accepted.inc(seen.events)
            self.batch_seconds.observe(seen.seconds)
        for (channel, result), n in seen.sends.items():
            self.sends.labels(channel, result).inc(n)
        if seen.timers:
            self.timers.inc(seen.timers)


@dataclass(slots=True)
class Observed:
    """What the metrics take from one batch or timer round: small enough to cross from an engine process."""

    events: int
    seconds: float
    sends: dict[tuple[str, str], int]  # (channel, outcome) -> count
    timers: int

    @classmethod
    def of(cls, outcome: Outcome, events: int, seconds: float) -> Observed:
        sends: dict[tuple[str, str], int] = {}
        timers = 0
        for record in outcome.records:
            kind = record["kind"]
            if kind.startswith("message_"):
                key = (record.get("channel", "?"), kind.removeprefix("message_"))
                sends[key] = sends.get(key, 0) + 1
            elif kind == "transition" and record.get("trigger") in ("after", "at"):
                timers += 1
        return cls(events, seconds, sends, timers)


# --- request parsing ------------------------------------------------------------------------------


def _inflate(body: bytes, limit: int) -> bytes:
    """A gzip body inflated within `limit`; concatenated gzip members are valid gzip and are all read."""
    data = b""
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data += inflater.decompress(rest, limit + 1 - len(data))
        except zlib.error:
            raise Refused(400, "invalid_gzip", "body: Content-Encoding is gzip but the body is not gzip") from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise Refused(413, "body_too_large", f"body: inflates past the limit of {limit // 1024} KB")
        if not inflater.eof:
            raise Refused(400, "invalid_gzip", "body: the gzip stream is truncated")
        rest = inflater.unused_data
        if not rest:
            return data
        if not rest.startswith(b"\x1f\x8b"):
            raise Refused(400, "invalid_gzip", f"body: {len(rest)} byte(s) of garbage after the gzip stream")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, within the limits, or Refused naming what is wrong."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/json", "text/plain", ""):
        raise Refused(415, "unsupported_media_type", f"Content-Type: {media} is not accepted; send application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, "body_too_large", f"body: larger than the limit of {limit // 1024} KB")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = _inflate(body, limit)
    try:
        return parse_json(body)
    except BodyError as exc:
        raise Refused(400, exc.code, exc.message) from None


def header_key(request: Request) -> str | None:
    """The write key from an HTTP Basic Authorization header (the username), if there is one."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(header[6:], validate=True).decode("utf-8").split(":", 1)[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def valid_write_key(key: Any, settings: Settings) -> bool:
    if not isinstance(key, str) or not key:
        return False
    given = key.encode("utf-8", "surrogatepass")
    return any(hmac.compare_digest(given, k.encode()) for k in settings.write_keys)


UNAUTHORIZED = ("unauthorized", "Authorization: a valid write key is required (HTTP Basic username or "
                                "`writeKey` in the body)")


def check_admin(request: Request, settings: Settings) -> None:
    if settings.admin_key is None:
        return
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), settings.admin_key.encode()):
        raise Refused(401, "unauthorized", "Authorization: the admin key is required as `Bearer <key>`")


# --- the application ------------------------------------------------------------------------------

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment Spec message; unknown fields are accepted and ignored.",
    "properties": {
        "type": {"type": "string", "enum": list(SINGLE_CALLS)},
        "userId": {"type": ["string", "null"]}, "anonymousId": {"type": ["string", "null"]},
        "event": {"type": "string"}, "previousId": {"type": "string"},
        "properties": {"type": "object"}, "traits": {"type": "object"}, "context": {"type": "object"},
        "timestamp": {"type": "string", "format": "date-time"}, "messageId": {"type": "string"},
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad body or message: `{code, message}` naming the field"},
    401: {"description": "no valid write key"},
    413: {"description": "body over the limit, or more messages than the engine queues at once"},
    415: {"description": "not JSON"}, 429: {"description": "the engine is behind: retry after `Retry-After`"},
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}



def create_app(compiled: CompiledWorkspace, store: SqlStore, settings: Settings | None = None, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC), start_worker: bool = True,
               channels: Mapping[str, Channel] | None = None, scheduler: bool = True,
               workers: int = 1, folder: Path | None = None) -> FastAPI:
    """The app; with `scheduler`, APScheduler jobs fire timers and dispatch the outbox to `channels`.

    `workers` > 1: the engine runs in that many processes, each owning a partition of the users; they
    load the workspace from `folder` and use the wall clock (adapters/sources/processes.py)."""
    settings = settings or Settings()
    metrics = Metrics()
    engine = Engine(compiled, send_expiry=settings.send_expiry)
    worker: EngineWorker | ProcessWorkers
    if workers > 1:
        from adapters.sources.processes import ProcessWorkers

        if folder is None:
            raise ValueError("engine processes load the workspace from its folder: pass `folder`")
        worker = ProcessWorkers(folder, store.url, workers, settings, metrics, store)
    else:
        worker = EngineWorker(Runtime(engine, store, claim=500, live=True), store, settings, metrics, clock)
    dispatcher = Dispatcher(store, engine, channels or {}, clock=clock, feedback=worker.submit,
                            lease=settings.outbox_lease)
    timers = worker.timers

    def dispatch() -> int:
        counts = dispatcher.run_once()
        for status, n in counts.items():
            metrics.deliveries.labels(status).inc(n)
        return sum(counts.values())

    jobs = build_scheduler(timers=timers, dispatch=dispatch, prune=lambda: store.prune(clock()),
                           tick=settings.tick)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_worker:
            worker.start()
            # new segment-entry journeys take their segment's members first (SPEC §3 item 5)
            await asyncio.wrap_future(worker.enroll())
            if scheduler:
                jobs.start()
        yield
        if start_worker:
            if scheduler:
                jobs.stop()
            worker.stop()
        for channel in (channels or {}).values():
            close = getattr(channel, "close", None)  # a channel may keep a connection (see Channel)
            if close is not None:
                close()

    app = FastAPI(title="journey-engine", version="0.1.0", lifespan=lifespan,
                  description="Segment-compatible event API, user API and operations endpoints.")
    app.state.worker, app.state.store, app.state.engine = worker, store, engine
    app.add_middleware(RawUserPaths)
    metrics.timers_due.set_function(lambda: timers_due(store, clock()))
    metrics.timers_lag.set_function(lambda: timers_lag(store, clock()))
    metrics.outbox_due.set_function(lambda: _or_nan(lambda: store.outbox_due(clock())))
    _answer_errors_as_code_and_message(app)
    app.openapi = lambda: _openapi_with_security(app)  # type: ignore[method-assign]

    async def accept(request: Request, call: str | None) -> JSONResponse:
        try:
            return await _accept(request, call)
        except Refused as exc:
            metrics.refused.labels(exc.code).inc(exc.events)
            raise

    async def _accept(request: Request, call: str | None) -> JSONResponse:
        body = await authorized_body(request, MAX_BATCH if call is None else MAX_MESSAGE, settings)
        if not isinstance(body, dict):
            raise Refused(400, "invalid_body", "body: must be a JSON object")
        received = clock()
        sent_at = body.get("sentAt")
        if call is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise Refused(400, "invalid_batch", "batch: must be a list of messages")
            if len(messages) > settings.queue_limit:  # 429 would be retried forever: it can never fit
                raise Refused(413, "batch_too_large", f"batch: {len(messages)} messages, more than the engine "
                                                      f"queues at once ({settings.queue_limit}, JOURNEY_QUEUE_LIMIT); "
                                                      "send smaller batches", events=len(messages))
            problem = sent_at_problem(sent_at)
            if problem is not None:
                raise Refused(400, "invalid_sent_at", problem, events=len(messages))
        else:
            messages = [body]
        events, bad = to_events(messages, received_at=received, sent_at=sent_at,
                                trigger_window=settings.trigger_window, call=call)
        if events:
            failed = await _wait(worker, events)
            if failed:  # the engine raised on these (a bug, logged): refuse them so no SDK resends them forever
                good = [i for i in range(len(messages)) if i not in {b.index for b in bad}]
                bad = sorted([*bad, *(BadMessage(good[p], "message", "engine_error", "the engine could not apply "
                                                 "this message; the failure is logged for us to fix")
                                      for p in failed)], key=lambda b: b.index)
                events = [e for p, e in enumerate(events) if p not in set(failed)]
        for problem in bad:
            metrics.refused.labels(problem.reason).inc()
        if bad:
            first = bad[0]
            where = f"batch[{first.index}].{first.field}" if call is None else first.field
            more = f" ({len(bad) - 1} more bad message(s))" if len(bad) > 1 else ""
            kept = f"; the other {len(events)} message(s) were accepted" if events else ""
            return JSONResponse({"code": "invalid_message", "message": f"{where}: {first.message}{more}{kept}"},
                                status_code=400)
        return JSONResponse({"success": True})

    @app.post("/v1/batch", summary="Segment batch", openapi_extra=_body({"type": "object", "properties": {
        "batch": {"type": "array", "items": MESSAGE_SCHEMA}, "sentAt": {"type": "string"},
        "writeKey": {"type": "string"}}, "required": ["batch"]}), responses=RESPONSES)
    async def batch(request: Request) -> JSONResponse:
        return await accept(request, None)

    def single(call: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            return await accept(request, call)

        endpoint.__name__ = f"v1_{call}"
        return endpoint

    for call in SINGLE_CALLS:
        app.add_api_route(f"/v1/{call}", single(call), methods=["POST"], summary=f"Segment {call}",
                          openapi_extra=_body(MESSAGE_SCHEMA), responses=RESPONSES)

    @app.get("/v1/users/{user_id}")
    async def get_user(user_id: str, request: Request) -> JSONResponse:
        check_admin(request, settings)
        user = path_id(user_id)
        view = user_view(store, engine, user, clock())
        if view is None:
            raise Refused(404, "not_found", f"user `{user}`: no such user")
        return JSONResponse(view)

    @app.delete("/v1/users/{user_id}")
    async def delete_user(user_id: str, request: Request) -> JSONResponse:
        check_admin(request, settings)
        user = path_id(user_id)
        erased = storable(user) and await _await(worker.erase(user))
        return JSONResponse({"success": True, "erased": erased})

    @app.get("/v1/users/{user_id}/inbox")
    async def inbox(user_id: str, request: Request) -> JSONResponse:
        check_admin(request, settings)
        user = path_id(user_id)
        return JSONResponse({"messages": store.inbox(user, engine) if storable(user) else []})

    @app.post("/v1/users/{user_id}/inbox/{key}/read")
    async def read(user_id: str, key: str, request: Request) -> JSONResponse:
        check_admin(request, settings)
        user, key = path_id(user_id), path_id(key, "message id")
        if not (storable(user) and storable(key) and store.mark_read(user, key)):
            raise Refused(404, "not_found", f"inbox message `{key}` of `{user}`: no such message")
        return JSONResponse({"success": True})

    @app.get("/v1/journeys")
    async def journeys(request: Request) -> JSONResponse:
        check_admin(request, settings)
        counts = store.state_counts()
        return JSONResponse({"journeys": [_journey_summary(compiled, n, counts.get(n, {}))
                                          for n in compiled.journeys]})

    @app.get("/v1/journeys/{name}")
    async def journey(name: str, request: Request) -> JSONResponse:
        check_admin(request, settings)
        if name not in compiled.journeys:
            raise Refused(404, "not_found", f"journey `{name}`: no such journey")
        j = compiled.workspace.journeys[name]
        summary = _journey_summary(compiled, name, store.state_counts().get(name, {}))
        return JSONResponse({**summary, "definition": j.model_dump(mode="json", by_alias=True, exclude_none=True),
                             "graph": {"mermaid": to_mermaid(j)}})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        down = await _store_down(store)
        if down is not None:  # {code, message} as every error, plus what is down for monitors
            return JSONResponse({"ok": False, "code": "unavailable", "message": f"store: {down}",
                                 "down": {"store": down}, "queue": worker.waiting}, status_code=503)
        return JSONResponse({"ok": True, "queue": worker.waiting})

    add_dashboard_routes(app, store, compiled, authorize=lambda request: check_admin(request, settings))

    return app


async def authorized_body(request: Request, limit: int, settings: Settings) -> Any:
    """The parsed body of a write; a Basic key is checked before the body is read, a body key after.

    Without any key, a body that cannot be read is answered 401, not with what is wrong in it."""
    if not settings.write_keys:
        return await read_json(request, limit)
    key = header_key(request)
    if key is not None:
        if not valid_write_key(key, settings):
            raise Refused(401, *UNAUTHORIZED)
        return await read_json(request, limit)
    try:
        body = await read_json(request, limit)
    except Refused:
        raise Refused(401, *UNAUTHORIZED) from None
    if not isinstance(body, dict) or not valid_write_key(body.get("writeKey"), settings):
        raise Refused(401, *UNAUTHORIZED)
    return body


async def _wait(worker: EngineWorker | ProcessWorkers, events: list[Event]) -> list[int]:
    """Wait for the events' commit; return the positions of any the engine could not apply."""
    try:
        future = worker.submit(events)
    except Overloaded:
        raise Refused(429, "overloaded", "the engine is behind; retry after a second",
                      headers={"Retry-After": "1"}, events=len(events)) from None
    try:
        failed: list[int] = await _await(future)
        return failed
    except PartlyCommitted as exc:
        raise Refused(503, "partly_committed", f"some of these events were committed and others not ({exc}); "
                                               "retry: the committed ones are recognised by messageId",
                      headers={"Retry-After": "2"}, events=len(events)) from None
    except WorkerLost:
        raise Refused(503, "worker_lost", "an engine process stopped while applying these events; retry (the "
                                          "ones already committed are recognised by messageId)",
                      headers={"Retry-After": "2"}, events=len(events)) from None
    except StoreUnavailable:
        raise Refused(503, "unavailable", "the store is unavailable, nothing was committed; retry",
                      headers={"Retry-After": "2"}, events=len(events)) from None
    except ConflictError:  # other workers kept winning the race for these users: contention, it passes
        raise Refused(503, "contention", "other workers kept changing these users, nothing was committed; retry",
                      headers={"Retry-After": "1"}, events=len(events)) from None
    except Exception:  # logged by the worker: a bug, not the client's fault, and not transient
        raise Refused(500, "internal_error", "the engine failed on this request and nothing of it was committed; "
                                             "this is a bug and has been logged", events=len(events)) from None


HEALTH_SECONDS = 3.0  # /healthz answers within this even when the store hangs


async def _store_down(store: SqlStore) -> str | None:
    """Why the store cannot take a write now (see `SqlStore.unwritable`), or None."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(store.unwritable), HEALTH_SECONDS)
    except TimeoutError:
        return f"no answer to a write within {HEALTH_SECONDS:g} s"


class RawUserPaths:
    """Routes the user API on the path as sent, still percent-encoded: Starlette routes on the decoded
    path, where the id `a/b` (sent as `a%2Fb`) would be two segments. Any string is a user id (SPEC §6):
    each segment is decoded once, by `path_id`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw is not None and raw.startswith(b"/v1/users/"):
            scope = {**scope, "path": quote_from_bytes(raw, safe="/%!$&'()*+,;=:@~")}  # non-ASCII bytes escaped
        await self.app(scope, receive, send)


def path_id(segment: str, what: str = "user id") -> str:
    """A percent-encoded path segment of the user API, decoded (see `RawUserPaths`)."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise Refused(400, "invalid_path", f"{what}: {segment!r:.80} is not percent-encoded UTF-8") from None


def storable(text: str) -> bool:
    """Whether a store can hold this id: events naming a NUL character are refused, so no user has one
    (and PostgreSQL would raise on the lookup)."""
    return "\x00" not in text


def timers_lag(store: SqlStore, now: datetime) -> float:
    """Seconds the oldest due wake-up has waited (0 when none is due, NaN while the store is down)."""
    def lag() -> float:
        _, earliest = store.overdue(now)
        return 0.0 if earliest is None else max(0.0, (now - earliest).total_seconds())
    return _or_nan(lag)


def _or_nan(read: Callable[[], float]) -> float:
    try:
        return float(read())
    except StoreUnavailable:
        return math.nan


def timers_due(store: SqlStore, now: datetime) -> float:
    """Users whose wake-up is due, for the gauge (NaN while the store is down)."""
    try:
        return float(store.due_count(now))
    except StoreUnavailable:
        return math.nan


def _answer_errors_as_code_and_message(app: FastAPI) -> None:
    """Every error answer is `{code, message}`, FastAPI's own 404/405/422 included."""

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        text = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"code": code, "message": text}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return JSONResponse({"code": "invalid_request", "message": f"{where}: {first.get('msg', 'invalid')}"},
                            status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"code": "unavailable", "message": str(exc)}, status_code=503,
                            headers={"Retry-After": "2"})


ADMIN_PREFIXES = ("/v1/users", "/v1/journeys", "/dashboard/")


def _openapi_with_security(app: FastAPI) -> dict[str, Any]:
    """The generated document plus its security: HTTP Basic (write key) on writes, Bearer (admin) on reads."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "writeKey": {"type": "http", "scheme": "basic", "description": "the write key as the username"},
            "adminKey": {"type": "http", "scheme": "bearer", "description": "the admin key"}}
        for path, operations in schema["paths"].items():
            scheme = ("writeKey" if path.removeprefix("/v1/") in ("batch", *SINGLE_CALLS)
                      else "adminKey" if path.startswith(ADMIN_PREFIXES) else None)
            for operation in operations.values() if scheme else ():
                operation["security"] = [{scheme: []}]
                operation.setdefault("responses", {}).setdefault("401", {"description": "no valid key"})
        app.openapi_schema = schema
    return app.openapi_schema


async def _await(future: Future[Any]) -> Any:
    import asyncio

    return await asyncio.wrap_future(future)


def _journey_summary(compiled: CompiledWorkspace, name: str, counts: dict[str, int]) -> dict[str, Any]:
    j = compiled.workspace.journeys[name]
    return {"name": name, "description": j.description, "version": compiled.journeys[name].version,
            "states": {s: counts.get(s, 0) for s in j.states}, "active": sum(counts.values())}


def jsonable(value: Any) -> Any:
    """`value` with datetimes as ISO-8601 strings at any depth, and floats JSON can carry."""
    if isinstance(value, datetime):
        return trace.iso(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # stored before NaN and Infinity were refused
    return value


def user_view(store: SqlStore, engine: Engine, user_id: str, now: datetime) -> dict[str, Any] | None:
    """What GET /v1/users/{id} and `journey user --json` show: where the user is, and why (metrics as of
    `now`: windows slid to it)."""
    if not storable(user_id) or store.erased([user_id]):  # an erased id stays erased, whatever names it since
        return None
    resolved = store.aliases([user_id]).get(user_id, user_id)
    profile = store.load([resolved]).get(resolved)
    if profile is None:
        return None
    records = store.trace(resolved, limit=200)

    iso = jsonable

    instances = []
    for inst in profile.instances.values():
        why = next((r for r in reversed(records) if r.get("journey") == inst.journey
                    and r.get("key") == (inst.key or None) and r["kind"] in ("transition", "journey_entered")), None)
        instances.append({"journey": inst.journey, "key": inst.key or None, "state": inst.state,
                          "since": iso(inst.state_entered_at), "entered_at": iso(inst.entered_at),
                          "holdout": inst.holdout,
                          "timers": [{"due": iso(at), "transition": i} for at, i in inst.timers],
                          "why": why})
    return {
        "user_id": resolved,
        "traits": {k: iso(v) for k, v in profile.traits.items()},
        "metrics": {k: iso(v) for k, v in engine.cw.metrics.current(profile, now).items()},
        "segments": sorted(profile.segments),
        "journeys": instances,
        "subscriptions": profile.subscriptions,
        "last_messages": [{k: r[k] for k in ("key", "message", "channel", "journey", "status")}
                          | {"at": iso(datetime.fromtimestamp(r["at"], UTC))}
                          for r in store.outbox_of(resolved)[-20:]],
        "decisions": [r for r in records if r["kind"].startswith("message_") or r["kind"] in
                      ("transition", "journey_entered", "journey_exited", "goal_reached")][-30:],
        "next_wake": iso(profile.wake),
    }

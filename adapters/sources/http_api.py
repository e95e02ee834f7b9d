"""The Segment-compatible HTTP API (SPEC §6) and the user API, on FastAPI: the HTTP front of the service.

Requests are validated here (adapters/sources/segment.py, shared with `journey ingest`) and handed to the
service's engine host (adapters/service/host.py), which applies everything that is waiting as one batch
and commits once (group commit); a request is answered `200 {"success": true}` only after its events are
committed. A batch with a bad message keeps the good ones (committed) and answers 400 naming the bad
message's index and field, so the SDKs do not resend the good ones. 503 means the store is unavailable
or other workers kept winning the race for the same users (retry either way). An event the engine raises
on (a bug, logged) is isolated by halving the request: it is refused by index like a bad message
(`engine_error` in the metrics) and the rest is committed. Admin routes (users, journeys, dashboard)
take the admin key through one dependency (`require_admin`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote_from_bytes, unquote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.service.host import EngineHost, Overloaded, PartlyCommitted, WorkerLost
from adapters.service.metrics import Metrics
from adapters.service.service import Service
from adapters.service.settings import Settings
from adapters.service.views import storable, user_view
from adapters.sources.segment import (
    MAX_BATCH,
    MAX_MESSAGE,
    BadMessage,
    BodyError,
    parse_json,
    sent_at_problem,
    to_events,
)
from adapters.web.dashboard import add_dashboard_routes
from journey_engine.compiler import CompiledWorkspace
from journey_engine.events import Event
from journey_engine.graph import to_mermaid
from journey_engine.ports import Channel, ConflictError, Reads, ServiceStore, StoreUnavailable

SINGLE_CALLS = ("track", "identify", "alias", "page", "screen", "group")


class Refused(Exception):
    """A request answered with `{"code", "message"}`: a 4xx, or 503/500 when the events were not committed.

    `events` is how many events it refuses, for the metrics (1 when the body was never read)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 events: int = 1) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.events = events


def create_app(compiled: CompiledWorkspace, store: ServiceStore, settings: Settings | None = None, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC), start_worker: bool = True,
               channels: Mapping[str, Channel] | None = None, scheduler: bool = True,
               workers: int = 1, folder: Path | None = None, host: EngineHost | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    """The app in front of a `Service` (adapters/service/service.py: the engine host, the dispatcher, the
    scheduled jobs); `start_worker` False leaves the host stopped (tests drive it). `host`: another engine
    host (the bus: `serve --bus`, `journey worker`), with the `metrics` it reports to."""
    service = Service(compiled, store, settings, clock=clock, channels=channels, scheduler=scheduler,
                      workers=workers, folder=folder, host=host, metrics=metrics)
    app = FastAPI(title="journey-engine", version="0.1.0", lifespan=lambda _: service.running(start_worker),
                  description="Segment-compatible event API, user API and operations endpoints.")
    app.state.service = service
    app.state.worker, app.state.store, app.state.engine = service.host, store, service.engine
    app.add_middleware(RawUserPaths)
    _answer_errors_as_code_and_message(app)
    app.openapi = lambda: _openapi_with_security(app)  # type: ignore[method-assign]
    app.include_router(router)
    add_dashboard_routes(app, store, compiled, authorize=lambda request: check_admin(request, service.settings))
    return app


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


# --- the routes -----------------------------------------------------------------------------------


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def require_admin(request: Request) -> None:
    """The dependency of every admin route: the admin key as `Bearer <key>` (when one is configured)."""
    check_admin(request, _service(request).settings)


Served = Annotated[Service, Depends(_service)]
router = APIRouter()
ADMIN = [Depends(require_admin)]


async def accept(request: Request, call: str | None) -> JSONResponse:
    """A Segment write (`call` None: /v1/batch), answered once its events are committed."""
    service = _service(request)
    try:
        return await _accept(service, request, call)
    except Refused as exc:
        service.metrics.refused.labels(exc.code).inc(exc.events)
        raise


async def _accept(service: Service, request: Request, call: str | None) -> JSONResponse:
    settings, metrics = service.settings, service.metrics
    body = await authorized_body(request, MAX_BATCH if call is None else MAX_MESSAGE, settings)
    if not isinstance(body, dict):
        raise Refused(400, "invalid_body", "body: must be a JSON object")
    received = service.clock()
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
        failed = await _wait(service.host, events)
        if failed:  # the engine raised on these (a bug, logged): refuse them so no SDK resends them forever
            good = [i for i in range(len(messages)) if i not in {b.index for b in bad}]
            bad = sorted([*bad, *(BadMessage(good[p], "message", "engine_error", "the engine could not apply "
                                             "this message; the failure is logged for us to fix")
                                  for p in failed)], key=lambda b: b.index)
            events = [e for p, e in enumerate(events) if p not in set(failed)]
    for refused in bad:
        metrics.refused.labels(refused.reason).inc()
    if bad:
        first = bad[0]
        where = f"batch[{first.index}].{first.field}" if call is None else first.field
        more = f" ({len(bad) - 1} more bad message(s))" if len(bad) > 1 else ""
        kept = f"; the other {len(events)} message(s) were accepted" if events else ""
        return JSONResponse({"code": "invalid_message", "message": f"{where}: {first.message}{more}{kept}"},
                            status_code=400)
    return JSONResponse({"success": True})


@router.post("/v1/batch", summary="Segment batch", openapi_extra=_body({"type": "object", "properties": {
    "batch": {"type": "array", "items": MESSAGE_SCHEMA}, "sentAt": {"type": "string"},
    "writeKey": {"type": "string"}}, "required": ["batch"]}), responses=RESPONSES)
async def batch(request: Request) -> JSONResponse:
    return await accept(request, None)


def _single(call: str) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        return await accept(request, call)

    endpoint.__name__ = f"v1_{call}"
    return endpoint


for _call in SINGLE_CALLS:
    router.add_api_route(f"/v1/{_call}", _single(_call), methods=["POST"], summary=f"Segment {_call}",
                         openapi_extra=_body(MESSAGE_SCHEMA), responses=RESPONSES)


@router.get("/v1/users/{user_id}", dependencies=ADMIN)
async def get_user(user_id: str, service: Served) -> JSONResponse:
    user = path_id(user_id)
    view = user_view(service.store, service.engine, user, service.clock())
    if view is None:
        raise Refused(404, "not_found", f"user `{user}`: no such user")
    return JSONResponse(view)


@router.delete("/v1/users/{user_id}", dependencies=ADMIN)
async def delete_user(user_id: str, service: Served) -> JSONResponse:
    user = path_id(user_id)
    erased = storable(user) and await _await(service.host.erase(user))
    return JSONResponse({"success": True, "erased": erased})


@router.get("/v1/users/{user_id}/inbox", dependencies=ADMIN)
async def inbox(user_id: str, service: Served) -> JSONResponse:
    user = path_id(user_id)
    return JSONResponse({"messages": service.store.inbox(user, service.engine.render) if storable(user) else []})


@router.post("/v1/users/{user_id}/inbox/{key}/read", dependencies=ADMIN)
async def read(user_id: str, key: str, service: Served) -> JSONResponse:
    user, key = path_id(user_id), path_id(key, "message id")
    if not (storable(user) and storable(key) and service.store.mark_read(user, key)):
        raise Refused(404, "not_found", f"inbox message `{key}` of `{user}`: no such message")
    return JSONResponse({"success": True})


@router.get("/v1/journeys", dependencies=ADMIN)
async def journeys(service: Served) -> JSONResponse:
    compiled = service.compiled
    counts = service.store.state_counts()
    return JSONResponse({"journeys": [_journey_summary(compiled, n, counts.get(n, {}))
                                      for n in compiled.journeys]})


@router.get("/v1/journeys/{name}", dependencies=ADMIN)
async def journey(name: str, service: Served) -> JSONResponse:
    compiled = service.compiled
    if name not in compiled.journeys:
        raise Refused(404, "not_found", f"journey `{name}`: no such journey")
    j = compiled.workspace.journeys[name]
    summary = _journey_summary(compiled, name, service.store.state_counts().get(name, {}))
    return JSONResponse({**summary, "definition": j.model_dump(mode="json", by_alias=True, exclude_none=True),
                         "graph": {"mermaid": to_mermaid(j)}})


@router.get("/metrics")
async def prometheus(service: Served) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz(service: Served) -> JSONResponse:
    down = {"store": await _store_down(service.store), "bus": await _bus_down(service.host)}
    if any(down.values()):  # {code, message} as every error, plus what is down for monitors
        message = "; ".join(f"{what}: {why}" for what, why in down.items() if why)
        return JSONResponse({"ok": False, "code": "unavailable", "message": message,
                             "down": {k: v for k, v in down.items() if v}, "queue": service.host.waiting},
                            status_code=503)
    return JSONResponse({"ok": True, "queue": service.host.waiting})


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


async def _wait(host: EngineHost, events: list[Event]) -> list[int]:
    """Wait for the events' commit; return the positions of any the engine could not apply."""
    try:
        future = host.submit(events)
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


async def _store_down(store: Reads) -> str | None:
    """Why the store cannot take a write now (see `Reads.unwritable`), or None."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(store.unwritable), HEALTH_SECONDS)
    except TimeoutError:
        return f"no answer to a write within {HEALTH_SECONDS:g} s"


async def _bus_down(host: EngineHost) -> str | None:
    """Why the bus cannot take events (`serve --bus`: the host has a `down`), or None."""
    down = getattr(host, "down", None)
    return None if down is None else await asyncio.to_thread(down)  # type: ignore[no-any-return]


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


def _journey_summary(compiled: CompiledWorkspace, name: str, counts: dict[str, int]) -> dict[str, Any]:
    j = compiled.workspace.journeys[name]
    return {"name": name, "description": j.description, "version": compiled.journeys[name].version,
            "states": {s: counts.get(s, 0) for s in j.states}, "active": sum(counts.values())}


async def _await(future: Future[Any]) -> Any:
    return await asyncio.wrap_future(future)

"""Schemathesis over the OpenAPI document: whatever the input, the API never answers 5xx.

Keys are configured as in production and each request carries the right one for its route (HTTP Basic
write key, Bearer admin key), so generated bodies reach validation and the engine instead of stopping at
401. Three phases: the coverage phase (schema edge cases, valid and invalid), positive fuzzing, and
negative fuzzing (bodies that break the schema). A few requests also go without a key.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from adapters.service.settings import Settings
from adapters.sources.http_api import create_app
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
KEY, ADMIN = "fuzz-write-key", "fuzz-admin-key"
AUTH = {"writeKey": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode(), "adminKey": f"Bearer {ADMIN}"}
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


def send(client: TestClient, case: schemathesis.Case, failures: list[str], *, keyed: bool = True) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if isinstance(v, str)}
    security = case.operation.definition.raw.get("security") or [{}]
    scheme = next(iter(security[0]), None)
    if keyed and scheme is not None:
        headers["Authorization"] = AUTH[scheme]
    body: Any = None if type(case.body).__name__ == "NotSet" else case.body
    try:
        content = json.dumps(body).encode() if body is not None else None
    except (TypeError, ValueError):
        return  # not representable as JSON text: nothing a client could send as application/json
    headers.setdefault("Content-Type", "application/json")
    response = client.request(case.method, case.formatted_path, headers=headers, params=case.query,
                              content=content)
    if response.status_code >= 500:
        failures.append(f"{case.method} {case.formatted_path} {body!r:.200}: {response.status_code} "
                        f"{response.text[:200]}")
    elif response.status_code >= 400:
        assert {"code", "message"} <= set(response.json()), response.text


def test_no_input_produces_a_server_error(tmp_path: Path) -> None:
    """Coverage, positive and negative cases for every operation get 2xx or 4xx, never 5xx."""
    store = SqlStore(f"sqlite:///{tmp_path / 'fuzz.db'}", defaults=dict(COMPILED.metrics.defaults))
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], admin_key=ADMIN),
                     clock=lambda: datetime(2026, 1, 5, tzinfo=UTC), scheduler=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = 0
    with TestClient(app, raise_server_exceptions=False) as client:  # the engine worker runs throughout
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            config = schema.config.generation_for(operation=operation)
            modes = list(EXAMPLES)
            for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config):
                send(client, case, failures)
            for mode, examples in EXAMPLES.items():

                @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                          database=None)
                @given(operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    send(client, case, failures)

                try:
                    check()
                except Unsatisfiable:  # nothing in this operation can be made invalid (GET /metrics)
                    assert mode is GenerationMode.NEGATIVE

            @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(operation.as_strategy())
            def without_a_key(case: schemathesis.Case) -> None:
                send(client, case, failures, keyed=False)

            without_a_key()
    store.close()
    assert operations >= 10
    assert failures == []


def test_the_schema_declares_its_security() -> None:
    """Writes declare HTTP Basic (the write key), admin routes Bearer (the admin key)."""
    store = SqlStore("sqlite://", defaults=dict(COMPILED.metrics.defaults))
    document = create_app(COMPILED, store, start_worker=False).openapi()
    store.close()
    schemes = document["components"]["securitySchemes"]
    assert schemes["writeKey"] == {**schemes["writeKey"], "type": "http", "scheme": "basic"}
    assert schemes["adminKey"] == {**schemes["adminKey"], "type": "http", "scheme": "bearer"}
    assert document["paths"]["/v1/batch"]["post"]["security"] == [{"writeKey": []}]
    assert document["paths"]["/v1/users/{user_id}"]["get"]["security"] == [{"adminKey": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]

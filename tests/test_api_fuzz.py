"""Schemathesis over the OpenAPI document: whatever the input, the API never answers 5xx."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from adapters.sources.http_api import Settings, create_app
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")


def test_no_input_produces_a_server_error(tmp_path: Path) -> None:
    """Generated requests to every operation get 2xx or 4xx, never 5xx."""
    store = SqlStore(f"sqlite:///{tmp_path / 'fuzz.db'}", defaults=dict(COMPILED.metrics.defaults))
    app = create_app(COMPILED, store, Settings(), clock=lambda: datetime(2026, 1, 5, tzinfo=UTC))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = 0
    with TestClient(app) as client:  # one client: the engine worker runs for the whole test
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                body = None if type(case.body).__name__ == "NotSet" else case.body
                response = client.request(case.method, case.formatted_path, headers=case.headers,
                                          params=case.query, json=body)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                    f"{response.text[:200]}")

            check()
    store.close()
    assert operations >= 10
    assert failures == []

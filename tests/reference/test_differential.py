"""The engine against the reference model on random workspaces and streams: through the Harness, then
through each store. A failure prints the shrunk example as a ready-to-run scenario with its workspace.

JOURNEY_SOAK_SECONDS=N runs each test for about N seconds instead of its default example budget.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as hevent

from journey_engine.compiler import load_workspace
from journey_engine.memory import MemoryStore
from journey_engine.ports import Store

from .differential import compare, scenario_text, write_example
from .pending import pending
from .strategies import streams, workspaces, write_workspace

PENDING = pending()
SOAK = float(os.environ.get("JOURNEY_SOAK_SECONDS", "0"))
# ~200 examples in all by default: most through the Harness, fewer through each store
BUDGET = {"harness": 110, "memory-cold": 40, "sqlite": 35, "postgres": 15}
SEEN: Counter[str] = Counter()  # examples compared and not compared, for the soak's summary


def _settings(kind: str) -> Callable[[Any], Any]:
    if SOAK:
        return settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    return settings(max_examples=BUDGET[kind], deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True, database=None)


def _store(kind: str, folder: Path, defaults: dict[str, Any]) -> Callable[[], Store] | None:
    if kind == "harness":
        return None
    if kind == "memory-cold":
        return lambda: MemoryStore(hot=1)
    from adapters.storage.sql import SqlStore

    if kind == "sqlite":
        return lambda: SqlStore(f"sqlite:///{folder / 'journey.db'}", defaults=defaults)
    from tests.conftest import postgres_or_skip

    return lambda: SqlStore(postgres_or_skip(), defaults=defaults)  # emptied for every example


def _check(kind: str, files: dict[str, str], stream: tuple[datetime, list[dict[str, Any]]]) -> None:
    start, steps = stream
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compiled = load_workspace(write_workspace(files, folder / "workspace"))
        store = _store(kind, folder, dict(compiled.metrics.defaults))
        problems, touched = compare(compiled, start, steps, store, ignore=PENDING)
        if touched:
            hevent(f"not compared: pending {sorted(touched)}")
            SEEN[f"{kind} not compared"] += 1
            return
        hevent("compared")
        SEEN[f"{kind} compared"] += 1
        if problems:
            keep = Path(tempfile.mkdtemp(prefix="journey-differential-"))
            path = write_example(keep, files, start, steps)
            files_text = "\n".join(f"--- workspace/{n}\n{t}" for n, t in files.items())
            note(f"scenario {path}:\n{scenario_text(files, start, steps)}\n{files_text}")
            raise AssertionError(f"engine and reference disagree ({kind}); ready-to-run scenario: {path}\n"
                                 + "\n".join(problems))


def _test(kind: str) -> Callable[..., None]:
    @_settings(kind)
    @given(files=workspaces(PENDING), stream=streams(PENDING))
    def run(files: dict[str, str], stream: tuple[datetime, list[dict[str, Any]]]) -> None:
        _check(kind, files, stream)

    def soak() -> None:
        """Rounds of fresh random examples until JOURNEY_SOAK_SECONDS have passed (split over the stores)."""
        began = time.monotonic()
        deadline = began + SOAK * BUDGET[kind] / sum(BUDGET.values())
        while time.monotonic() < deadline:
            run()  # a round of examples; the running count is printed after each, so a stop still tells
            print(f"soak {kind}: {SEEN[kind + ' compared']} examples compared, {SEEN[kind + ' not compared']} not, "
                  f"in {time.monotonic() - began:.0f} s", file=sys.__stderr__, flush=True)
    return soak if SOAK else run


test_harness_agrees_with_the_reference = _test("harness")
test_memory_store_with_a_tiny_hot_set_agrees_with_the_reference = _test("memory-cold")
test_sqlite_store_agrees_with_the_reference = _test("sqlite")


@pytest.mark.skipif(not os.environ.get("JOURNEY_TEST_POSTGRES_URL") and not os.environ.get("CI"),
                    reason="PostgreSQL: set JOURNEY_TEST_POSTGRES_URL")
def test_postgres_store_agrees_with_the_reference() -> None:
    _test("postgres")()

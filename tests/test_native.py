"""The compiled core (journey_engine/native.py) is used only when its build matches the sources."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from journey_engine import native
from journey_engine.engine import SendMessage
from journey_engine.profile import Instance


def _built(root: Path, fingerprint: dict[str, str]) -> Path:
    (root / "journey_engine").mkdir(parents=True)
    (root / native.MANIFEST).write_text(json.dumps(fingerprint))
    return root


@pytest.fixture()
def clean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("JOURNEY_NATIVE", raising=False)


@pytest.mark.usefixtures("clean_path")
def test_a_build_of_these_sources_goes_first_on_the_package_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = _built(tmp_path, native._fingerprint())
    monkeypatch.setenv("JOURNEY_NATIVE_DIR", str(root))
    path = ["/the/sources"]
    assert native.use(path) is True
    assert path == [str(root / "journey_engine"), "/the/sources"]
    assert str(root) in sys.path


@pytest.mark.usefixtures("clean_path")
@pytest.mark.parametrize("change", ["source", "python", "missing", "damaged", "disabled"])
def test_a_stale_missing_or_refused_build_leaves_python_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                change: str) -> None:
    fingerprint = native._fingerprint()
    if change == "source":
        fingerprint["engine/journeys"] = "0" * 64  # engine/journeys.py edited since the build
    elif change == "python":
        fingerprint["python"] = "cpython-399"
    root = _built(tmp_path, fingerprint)
    if change == "missing":
        (root / native.MANIFEST).unlink()  # a build that failed before writing its manifest
    elif change == "damaged":
        (root / native.MANIFEST).write_text("{")
    elif change == "disabled":
        monkeypatch.setenv("JOURNEY_NATIVE", "0")
    monkeypatch.setenv("JOURNEY_NATIVE_DIR", str(root))
    path = ["/the/sources"]
    assert native.use(path) is False
    assert path == ["/the/sources"]
    assert str(root) not in sys.path


def test_fields_lists_a_plain_data_class_compiled_or_not() -> None:
    assert set(native.fields(Instance)) == {"data", "entered_at", "holdout", "journey", "key", "run", "sent", "state",
                                            "state_entered_at", "timers", "version", "visit"}
    assert set(native.fields(SendMessage)) == {"idempotency_key", "at", "user", "journey", "key", "state", "message",
                                               "channel", "locale", "context"}


def test_the_core_runs_compiled_exactly_when_a_fresh_build_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` builds first and runs the suite compiled, then again with JOURNEY_NATIVE=0 as Python. In CI
    a build that failed (make only prints a note) must not pass the first run off as the compiled one."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert native.active() == native.use([])
    if os.environ.get("CI") and os.environ.get("JOURNEY_NATIVE") != "0":
        assert native.active(), f"CI: the compiled core is not in use; `make native` says why ({native.directory()})"

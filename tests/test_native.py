"""The compiled core (journey_engine/native.py) is used only when its build matches the sources."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

from journey_engine import native
from journey_engine.engine import SendMessage
from journey_engine.profile import Instance


def _manifest() -> dict[str, object]:
    """A build's manifest for two of these sources as they are now (tools/build_native.py writes all of them)."""
    return {"python": sys.implementation.cache_tag, "library": "journey_native__mypyc.so",
            "sources": {m: native.stamp(native.PACKAGE / f"{m}.py") for m in ("engine/journeys", "rules")}}


def _built(root: Path, manifest: dict[str, object]) -> Path:
    (root / "journey_engine").mkdir(parents=True)
    (root / native.MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.fixture()
def clean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.delenv("JOURNEY_NATIVE", raising=False)


@pytest.mark.usefixtures("clean_path")
def test_a_build_of_these_sources_goes_first_on_the_package_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A matching build goes first on the package's path; sys.path is left as it was."""
    root = _built(tmp_path, _manifest())
    monkeypatch.setenv("JOURNEY_NATIVE_DIR", str(root))
    sys.modules[native.LIBRARY] = types.ModuleType(native.LIBRARY)  # as if loaded already: the .so is not there
    before = list(sys.path)
    path = ["/the/sources"]
    assert native.use(path) is True
    assert path == [str(root / "journey_engine"), "/the/sources"]
    assert sys.path == before


@pytest.mark.usefixtures("clean_path")
@pytest.mark.parametrize("change", ["source", "python", "missing", "damaged", "disabled", "empty"])
def test_a_stale_missing_or_refused_build_leaves_python_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                change: str) -> None:
    """A build of other sources, another Python, none, a damaged one, or JOURNEY_NATIVE=0: the package stays Python."""
    manifest = _manifest()
    sources = manifest["sources"]
    assert isinstance(sources, dict)
    if change == "source":
        size, mtime = sources["engine/journeys"]
        sources["engine/journeys"] = [size, mtime - 1]  # engine/journeys.py saved again since the build
    elif change == "python":
        manifest["python"] = "cpython-399"
    elif change == "empty":
        manifest["sources"] = {}
    root = _built(tmp_path, manifest)
    if change == "missing":
        (root / native.MANIFEST).unlink()  # a build that failed before writing its manifest
    elif change == "damaged":
        (root / native.MANIFEST).write_text("{")
    elif change == "disabled":
        monkeypatch.setenv("JOURNEY_NATIVE", "0")
    monkeypatch.setenv("JOURNEY_NATIVE_DIR", str(root))
    before = list(sys.path)
    path = ["/the/sources"]
    assert native.use(path) is False
    assert path == ["/the/sources"]
    assert sys.path == before


def test_the_builds_manifest_matches_the_sources_it_names() -> None:
    """tools/build_native.py stamps every compiled module, each of them a source of the package that matches."""
    spec = importlib.util.spec_from_file_location("build_native", native.PACKAGE.parent / "tools" / "build_native.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    manifest = tool.manifest()
    assert set(manifest["sources"]) == set(tool.MODULES)
    assert {"engine/__init__", "engine/journeys", "rules"} <= set(tool.MODULES)
    assert native.matches(manifest)
    assert manifest["library"].startswith(native.LIBRARY + ".")


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

"""SVG through Graphviz's `dot`: the DOT text goes in on stdin, a clear error without Graphviz."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from adapters.graphviz import GraphvizNotFoundError, to_svg
from journey_engine.graph import to_dot
from journey_engine.model import Journey

JOURNEY = Journey.model_validate(
    {
        "name": 'say "hi"',
        "file": "j.yaml",
        "entry": {"on": "Signed Up"},
        "exit": [{"on": "Account Deleted"}],
        "initial": "welcome",
        "states": {
            "welcome": {"send": "welcome_email", "transitions": [{"after": "2d", "to": 'done "now" \\ <b>'}]},
            'done "now" \\ <b>': {"final": True},
        },
    }
)


def fake_dot(folder: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put an executable `dot` first on PATH, ahead of any real one."""
    path = folder / "dot"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_without_graphviz_the_error_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no `dot` on PATH, `to_svg` raises an error naming Graphviz and the other formats."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizNotFoundError, match=r"install Graphviz.*--format mermaid"):
        to_svg(JOURNEY)


def test_dot_reads_the_journey_on_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dot -Tsvg` is run with the journey's DOT text as input and its output is returned."""
    fake_dot(tmp_path, 'test "$1" = "-Tsvg" || exit 9\ncat\n', monkeypatch)
    assert to_svg(JOURNEY) == to_dot(JOURNEY)


def test_a_failing_dot_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When `dot` fails, the error names the journey and carries dot's message."""
    fake_dot(tmp_path, 'echo "syntax error in line 3" >&2\nexit 1\n', monkeypatch)
    with pytest.raises(RuntimeError, match=r'journey `say "hi"`: syntax error in line 3'):
        to_svg(JOURNEY)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_real_graphviz_draws_escaped_names() -> None:
    """The real `dot` accepts the output, quotes and backslashes in names included."""
    svg = to_svg(JOURNEY)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "done &quot;now&quot; \\ &lt;b&gt;" in svg

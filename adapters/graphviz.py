"""Journeys as SVG through Graphviz's `dot` program, for `journey graph --format svg`.

An adapter because it runs a subprocess; the DOT text itself comes from `journey_engine.graph`.
"""

from __future__ import annotations

import shutil
import subprocess

from journey_engine.graph import to_dot
from journey_engine.model import Journey

_TIMEOUT_S = 30  # a journey is small; a hung `dot` should not hang the CLI or the dashboard


class GraphvizNotFoundError(RuntimeError):
    """Graphviz's `dot` is not installed or not on PATH."""

    def __init__(self) -> None:
        super().__init__(
            "Graphviz's `dot` is not on PATH: install Graphviz (apt install graphviz, brew install "
            "graphviz) or use --format mermaid or --format dot"
        )


def to_svg(journey: Journey) -> str:
    """The journey drawn by `dot -Tsvg`; raises `GraphvizNotFoundError` without Graphviz."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError
    result = subprocess.run(
        [dot, "-Tsvg"], input=to_dot(journey), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`dot -Tsvg` failed on journey `{journey.name}`: {result.stderr.strip()}")
    return result.stdout

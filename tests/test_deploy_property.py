"""Any edit of a live workspace keeps the engine running (issue 18): random users run into a random
workspace, another random workspace (states renamed, removed, added; journeys gone or new; messages
changed) is deployed over them, pinned or moved, and the users go on. Nothing raises; a refused plan
leaves the running versions in place; every live instance is on a version the engine can run."""

from __future__ import annotations

import contextlib
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey_engine.compiler import load_workspace
from journey_engine.deployment import PlanRefused
from journey_engine.events import event_from_segment
from journey_engine.memory import MemoryStore
from journey_engine.testing import Harness

from .reference.differential import raw_event
from .reference.pending import pending
from .reference.strategies import streams, workspaces, write_workspace

PENDING = pending()


def _moving(files: dict[str, str], draw: Any) -> dict[str, str]:
    """The journeys of an edited workspace, each pinned or moving, some with `moves:` of a state to another."""
    out = {}
    for name, text in files.items():
        doc = yaml.safe_load(text)
        if "journey" in doc and draw(st.booleans()):
            doc["on_change"] = "move"
            states = sorted(doc["states"])
            if draw(st.booleans()):
                doc["moves"] = {draw(st.sampled_from(["s0", "s1", "s2", "gone"])): draw(st.sampled_from(states))}
        out[name] = yaml.safe_dump(doc, sort_keys=False)
    return out


def _play(h: Harness, steps: list[dict[str, Any]]) -> None:
    for step in steps:
        raw = raw_event(step)
        if raw is None:
            h.wait(step["wait"])
        else:
            h.send(event_from_segment(raw, default_time=h.clock.now))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(before=workspaces(PENDING), after=workspaces(PENDING), stream=streams(PENDING), data=st.data())
def test_any_edit_of_a_live_workspace_keeps_the_engine_running(before: dict[str, str], after: dict[str, str],
                                                               stream: tuple[datetime, list[dict[str, Any]]],
                                                               data: st.DataObject) -> None:
    """Deploy a random workspace over users of another, mid-stream: no error, and the users go on."""
    start, steps = stream
    half = len(steps) // 2
    with tempfile.TemporaryDirectory() as tmp:
        v1 = load_workspace(write_workspace(before, Path(tmp) / "v1"))
        v2 = load_workspace(write_workspace(_moving(after, data.draw), Path(tmp) / "v2"))
        h = Harness(v1, start=start, seed=7, store=MemoryStore(keep=True))
        _play(h, steps[:half])
        with contextlib.suppress(PlanRefused):  # refused: the running versions stay, the users go on on them
            h.deploy(v2)
        _play(h, steps[half:])
        h.wait("40d")
        for _, profile in h.store.items():  # type: ignore[attr-defined]
            for inst in profile.instances.values():
                assert h.engine._version_of(inst) is not None, (inst.journey, inst.version, inst.state)

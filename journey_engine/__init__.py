"""journey-engine: journeys as YAML state machines, one instance per user, driven by events and time.

The public surface: load a workspace, run it with an `Engine` (or a `Harness` in tests), and read the
trace. Everything not re-exported here is internal.
"""

from . import native

native.use(__path__)  # the compiled hot modules when they are built and match these sources (native.py)

from .compiler import CompiledWorkspace, load_workspace
from .engine import Engine, Outcome, RenderedMessage, SendMessage
from .errors import (
    InvalidEventError,
    JourneyError,
    Problem,
    ScenarioError,
    UnknownJourneyError,
    WorkspaceError,
)
from .events import Event, event_from_segment
from .memory import MemoryStore
from .profile import Instance, Profile
from .runtime import Runtime
from .simulation import load_scenario, run_scenario
from .testing import Harness, RecordingChannel, VirtualClock

__all__ = [
    "CompiledWorkspace",
    "Engine",
    "Event",
    "Harness",
    "Instance",
    "InvalidEventError",
    "JourneyError",
    "MemoryStore",
    "Outcome",
    "Problem",
    "Profile",
    "RecordingChannel",
    "RenderedMessage",
    "Runtime",
    "ScenarioError",
    "SendMessage",
    "UnknownJourneyError",
    "VirtualClock",
    "WorkspaceError",
    "event_from_segment",
    "load_scenario",
    "load_workspace",
    "run_scenario",
]

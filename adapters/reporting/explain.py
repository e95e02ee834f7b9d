"""Words for `journey user`: the transition that moved a user named by its rule, segment, event or timer,
and a pending timer named by what it waits for and where it leads, instead of `trigger=rule` and an index."""

from __future__ import annotations

from typing import Any

from journey_engine.compiler import CompiledWorkspace
from journey_engine.graph import format_duration
from journey_engine.model import AttributeTime, Transition


def transition_text(t: Transition) -> str:
    """What a transition waits for, as the journey file writes it: `if: "rule"`, `after 2d`, ..."""
    if t.on is not None:
        return f"on {t.on}" + (f' if "{t.if_}"' if t.if_ else "")
    if t.segment is not None:
        return f"entering segment {t.segment}" + (f' if "{t.if_}"' if t.if_ else "")
    if t.after is not None:
        return f"after {format_duration(t.after)}"
    if isinstance(t.at, AttributeTime):
        return f"at {t.at.attribute}{_offset(t.at)}"
    if t.at is not None:
        return f"at {t.at} (the user's time)"
    if t.if_ is not None:
        return f'rule "{t.if_}"'
    return "at once (a `to:`-only transition)"


def _offset(at: AttributeTime) -> str:
    seconds = at.offset.total_seconds()
    if not seconds:
        return ""
    sign = "-" if seconds < 0 else "+"
    return f" {sign}{format_duration(abs(at.offset))}"


def explain_move(compiled: CompiledWorkspace, record: dict[str, Any]) -> str | None:
    """The transition a `transition` record took, in words ("rule \"...\" → activated"); None when the
    journey or state is no longer in the files or the record is not a transition."""
    if record.get("kind") != "transition":
        return None
    cj = compiled.journeys.get(record.get("journey") or "")
    state = cj.journey.states.get(record.get("from") or "") if cj is not None else None
    if state is None:
        return None
    trigger, to = str(record.get("trigger") or ""), record.get("to")
    if trigger == "split":
        return f"split → {to}"
    kinds = {"rule": ("if", "segment", "always"), "after": ("after",), "at": ("at",)}
    wanted = kinds.get(trigger, ("on",))
    for t in state.transitions:
        if t.to == to and t.kind in wanted and (trigger in kinds or f"event:{t.on}" == trigger):
            return f"{transition_text(t)} → {to}"
    return None


def explain_timer(compiled: CompiledWorkspace, journey: str, state: str, index: int) -> str:
    """A pending timer of a user's state: what it waits for and the state it leads to."""
    cj = compiled.journeys.get(journey)
    spec = cj.journey.states.get(state) if cj is not None else None
    if spec is None or not 0 <= index < len(spec.transitions):
        return f"transition {index}"
    t = spec.transitions[index]
    return f"{transition_text(t)} → {t.to}"

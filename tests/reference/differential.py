"""Run one workspace and stream through the engine (a Harness on some store) and the reference, and
say how they differ: trace as a multiset per user and minute, sends, final profiles.

Random draws (`choose: random`, random splits) and the holdout draw are the engine's to make (the
SPEC fixes only that they are uniform / deterministic by id): the reference takes the engine's choice
and checks it is one of the options.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from journey_engine.compiler import CompiledWorkspace
from journey_engine.events import event_from_segment, parse_datetime
from journey_engine.model import parse_duration
from journey_engine.ports import Store
from journey_engine.testing import Harness

from .interpreter import SPEC_KINDS, Reference

_FIELDS = {
    "segment_entered": ("segment",), "segment_left": ("segment",),
    "journey_entered": ("journey", "key", "state", "version"),
    "transition": ("journey", "key", "from", "to", "trigger"),
    "message_sent": ("journey", "key", "state", "message", "channel"),
    "message_deferred": ("journey", "key", "state", "message", "channel", "until", "reason"),
    "message_suppressed": ("journey", "key", "state", "message", "channel", "reason"),
    "goal_reached": ("journey", "key"), "journey_exited": ("journey", "key", "reason"),
    "rule_error": (), "unknown_subscription": ("subscription",),
}


def minute(text: str) -> str:
    """The minute an instant falls in, rounded up: the SPEC lets time-driven changes be a minute late."""
    at = parse_datetime(text)
    assert at is not None
    up = at.replace(second=0, microsecond=0)
    if up != at:
        up += timedelta(minutes=1)
    return up.strftime("%Y-%m-%dT%H:%MZ")


def raw_event(step: dict[str, Any]) -> dict[str, Any] | None:
    """A scenario step as the Segment message a source would receive."""
    if "track" in step:
        raw = {"type": "track", "userId": step["track"], "event": step["event"],
               "properties": step.get("properties") or {}}
    elif "identify" in step:
        raw = {"type": "identify", "userId": step["identify"], "traits": step.get("traits") or {}}
    elif "alias" in step:
        raw = {"type": "alias", "userId": step["alias"], "previousId": step["previous_id"]}
    else:
        return None
    if "timestamp" in step:
        raw["timestamp"] = step["timestamp"]
    if "message_id" in step:
        raw["messageId"] = step["message_id"]
    return raw


def run_engine(compiled: CompiledWorkspace, start: datetime, steps: list[dict[str, Any]],
               store: Store | None = None) -> Harness:
    h = Harness(compiled, start=start, seed=7, store=store)
    for step in steps:
        raw = raw_event(step)
        if raw is None:
            h.wait(step["wait"])
        else:
            h.send(event_from_segment(raw, default_time=h.clock.now))
    return h


def run_reference(compiled: CompiledWorkspace, start: datetime, steps: list[dict[str, Any]],
                  engine_trace: list[dict[str, Any]]) -> tuple[Reference, datetime]:
    picks: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    held: set[tuple[str, str]] = set()
    arrived: dict[tuple[Any, ...], tuple[str, str]] = {}  # the run's last arrival: (state, at)
    for r in engine_trace:
        run = (r["user"], r.get("journey"), r.get("key"))
        if r["kind"] in ("journey_entered", "transition"):
            arrived[run] = (r["state"] if r["kind"] == "journey_entered" else r["to"], r["at"])
        if r["kind"] == "transition" and r["trigger"] == "split":
            picks[(r["user"], r["journey"], r["key"], r["from"], minute(r["at"]), "split")].append(r["to"])
        elif (r["kind"].startswith("message_") and r.get("reason") not in ("ineligible", "left_journey", "left_state")
              and arrived.get(run) == (r["state"], r["at"])):  # a choice made on arrival, not a held send going
            picks[(r["user"], r["journey"], r["key"], r["state"], minute(r["at"]), "choose")].append(r["message"])
        elif r["kind"] == "journey_entered" and r.get("holdout"):
            held.add((r["journey"], r["user"]))

    def pick(user: str, journey: str, key: str | None, state: str, at: datetime, purpose: str,
             options: list[str]) -> str:
        """The engine's next pick for this state at this minute: the n-th arrival takes the n-th pick. Both
        sides' instants are read as the minute they fall in: the engine may act seconds into a minute (a rule
        over `$now` turns true just after an instant), the reference on the minute."""
        made = picks.get((user, journey, key, state, minute(_iso(at)), purpose), [])
        for i, choice in enumerate(made):
            if choice in options:
                del made[i]
                return choice
        return options[0]

    ref = Reference(compiled.workspace, pick=pick, held_out=lambda journey, user: (journey, user) in held)
    clock = start
    for step in steps:
        raw = raw_event(step)
        if raw is None:
            clock += parse_duration(step["wait"])
            ref.advance(clock)
        else:
            ref.event(event_from_segment(raw, default_time=clock), clock)
    ref.advance(clock)
    return ref, clock


def _iso(at: datetime) -> str:
    from journey_engine.clock import iso
    return iso(at)


def _norm_trace(records: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        kind = r["kind"]
        if kind not in SPEC_KINDS or kind == "rule_error":  # compared as a set: see _rule_errors
            continue
        values = tuple(minute(r[f]) if f == "until" else r.get(f) for f in _FIELDS[kind])
        out[(r["user"], minute(r["at"]), kind, *values)] += 1
    return out


def _rule_errors(records: list[dict[str, Any]], field: str, aliases: dict[str, str]) -> set[tuple[str, str]]:
    """Which rules failed for which users (an id merged by an alias counted as the user it joined). How often
    a failing rule is traced depends on how often it is evaluated, which the SPEC leaves to the engine (it
    re-runs a rule only when its inputs change); that each failing rule is traced is the contract
    (README, reading 12)."""
    return {(aliases.get(r["user"], r["user"]), r[field]) for r in records if r["kind"] == "rule_error"}


def _norm_sends(sends: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((s["user"], minute(s["at"]), s["journey"], s["key"], s["message"], s["channel"]) for s in sends)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        return float(value) if not math.isnan(float(value)) else "nan"
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


def compare(compiled: CompiledWorkspace, start: datetime, steps: list[dict[str, Any]],
            store: Callable[[], Store] | None = None,
            ignore: frozenset[str] = frozenset()) -> tuple[list[str], set[str]]:
    """The differences between the engine and the reference (empty: they agree), and what the reference
    touched that is pending (then the caller does not hold the engine to this example)."""
    opened = store() if store else None
    try:
        return _compare(compiled, start, steps, opened, ignore)
    finally:
        close = getattr(opened, "close", None)
        if close is not None:
            close()  # a SQL store's connections, before the next example opens its own


def _compare(compiled: CompiledWorkspace, start: datetime, steps: list[dict[str, Any]], opened: Store | None,
             ignore: frozenset[str]) -> tuple[list[str], set[str]]:
    h = run_engine(compiled, start, steps, opened)
    ref, end = run_reference(compiled, start, steps, h.trace)
    touched = ref.touched & ignore
    if touched:
        return [], touched
    problems = []
    engine_trace, ref_trace = _norm_trace(h.trace), _norm_trace(ref.trace)
    if engine_trace != ref_trace:
        only_engine = sorted((engine_trace - ref_trace).elements())
        only_ref = sorted((ref_trace - engine_trace).elements())
        problems.append("trace differs:\n  engine only: " + "\n    ".join(map(str, only_engine[:12]))
                        + "\n  reference only: " + "\n    ".join(map(str, only_ref[:12])))
    failed = _rule_errors(h.trace, "text", ref.aliases), _rule_errors(ref.trace, "rule", ref.aliases)
    if failed[0] != failed[1]:
        problems.append(f"rule errors differ: engine {sorted(failed[0])}, reference {sorted(failed[1])}")
    engine_sends = [{"user": s.user, "at": _iso(s.at), "journey": s.journey, "key": s.key, "message": s.message,
                     "channel": s.channel} for s in h.channel.sent]
    if _norm_sends(engine_sends) != _norm_sends(ref.sends):
        a, b = _norm_sends(engine_sends), _norm_sends(ref.sends)
        problems.append(f"sends differ: engine only {sorted((a - b).elements())[:8]}, "
                        f"reference only {sorted((b - a).elements())[:8]}")
    for uid in sorted(ref.users):
        mine = ref.profile(uid, end)
        profile = h.runtime.profile(uid)
        if profile is None or mine is None:
            problems.append(f"user {uid}: engine has {'no' if profile is None else 'a'} profile")
            continue
        theirs = {"traits": dict(profile.traits), "metrics": h.metrics(uid), "segments": set(profile.segments),
                  "instances": {(j, k or None): i.state for (j, k), i in profile.instances.items()}}
        for part in ("traits", "segments", "instances"):
            if theirs[part] != mine[part]:
                problems.append(f"user {uid} {part}: engine {theirs[part]!r}, reference {mine[part]!r}")
        metrics = {k: _plain(v) for k, v in theirs["metrics"].items()}
        if metrics != {k: _plain(v) for k, v in mine["metrics"].items()}:
            problems.append(f"user {uid} metrics: engine {theirs['metrics']!r}, reference {mine['metrics']!r}")
    for uid in sorted({str(s.get(k)) for s in steps for k in ("track", "identify", "alias") if k in s}):
        if uid not in ref.users and uid not in ref.aliases and h.runtime.profile(uid) is not None:
            problems.append(f"user {uid}: the engine has a profile the reference has not")
    return problems, set()


def scenario_text(files: dict[str, str], start: datetime, steps: list[dict[str, Any]]) -> str:
    """The example as a SPEC §5 scenario (workspace files alongside, in ./workspace)."""
    doc = {"scenario": "differential: engine vs reference", "workspace": "workspace",
           "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "seed": 7, "steps": steps}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def write_example(folder: Path, files: dict[str, str], start: datetime, steps: list[dict[str, Any]]) -> Path:
    (folder / "workspace").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / "workspace" / name).write_text(text, encoding="utf-8")
    path = folder / "scenario.yaml"
    path.write_text(scenario_text(files, start, steps), encoding="utf-8")
    return path

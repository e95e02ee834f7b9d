"""Cross-checks: every shortcut the engine takes for speed or memory gives what the plain way gives."""

from __future__ import annotations

import bisect
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bench import events_stream
from journey_engine import codec, native
from journey_engine.compiler import CompiledWorkspace, compile_workspace, load_workspace
from journey_engine.engine import Engine
from journey_engine.memory import MemoryStore
from journey_engine.metrics import _bisect_right, _insort
from journey_engine.profile import Deferred, Instance, Profile
from journey_engine.rules import RuleCompiler
from journey_engine.runtime import Runtime
from journey_engine.testing import Harness

ROOT = Path(__file__).parent.parent
WORKSPACES = [ROOT / "journeys", Path(__file__).parent / "workspaces" / "basic",
              Path(__file__).parent / "workspaces" / "e2e"]

CLOCK_WORKSPACE = {
    "common.yaml": """
version: 1
metrics:
  uses_1d: {count: Used, within: 1d}
  last_used_at: {last_seen: Used}
  orders: {count: Ordered}
segments:
  fresh: "traits.signed_up_at != null and $now - traits.signed_up_at < t'P2D'"
  quiet: "metrics.last_used_at != null and $now - metrics.last_used_at > t'PT6H'"
  due_soon: "traits.due_at != null and traits.due_at - t'PT3H' <= $now"
  busy: "metrics.uses_1d >= 2"
  waiting: {rule: "metrics.orders == 0 and traits.signed_up_at != null", for: 1d}
  afternoon: "$now.hour >= 12"
  quiet_and_fresh: "'quiet' in segments and 'fresh' in segments"
""",
    "nudge.yaml": """
version: 1
journey: nudge
entry:
  segment: quiet
  reentry: {after: 1d}
exit:
  - segment: busy
initial: waiting
states:
  waiting:
    transitions:
      - segment: due_soon
        to: done
      - after: 5h
        to: done
  done:
    final: true
""",
    "greet.yaml": """
version: 1
journey: greet
entry:
  if: "'fresh' in segments or 'waiting' in segments"
  reentry: {after: 8h}
goal:
  if: "'afternoon' in segments"
initial: hello
states:
  hello:
    transitions:
      - after: 3h
        to: bye
  bye:
    final: true
""",
}


def _plain(compiled: CompiledWorkspace) -> CompiledWorkspace:
    """The same workspace with every time-driven segment re-run at every wake-up, as before the shortcut
    (compiled again from its model: a SegmentBook of its own to change, which works compiled or not)."""
    plain = compile_workspace(compiled.workspace)
    plain.segments.segments = [dataclasses.replace(s, clocked=False) for s in plain.segments.segments]
    return plain


@pytest.fixture(scope="module")
def clock_workspace(tmp_path_factory: pytest.TempPathFactory) -> CompiledWorkspace:
    root = tmp_path_factory.mktemp("clock")
    for name, text in CLOCK_WORKSPACE.items():
        (root / name).write_text(text)
    return load_workspace(root)


@pytest.fixture(scope="module")
def plain_clock_workspace(clock_workspace: CompiledWorkspace) -> CompiledWorkspace:
    return _plain(clock_workspace)


def _replay(compiled: CompiledWorkspace, users: int, events: int) -> tuple[list[dict[str, Any]], list[Any]]:
    store = MemoryStore()
    records: list[dict[str, Any]] = []
    runtime = Runtime(Engine(compiled, seed=3), store, sink=lambda out: records.extend(out.records))
    last = None
    for event in events_stream(users, events, seed=5):
        runtime.advance(event.timestamp)
        runtime.process([event])
        last = event.timestamp
    assert last is not None
    runtime.advance(last + timedelta(days=40))
    return records, sorted((u, sorted(p.segments)) for u, p in store.profiles.items())


def test_segments_a_wake_up_skips_are_those_that_would_not_have_changed() -> None:
    """On the example workspace, skipping anchored segments whose anchors are not due changes no record."""
    compiled = load_workspace(ROOT / "journeys")
    fast = _replay(compiled, users=200, events=4000)
    plain = _replay(_plain(compiled), users=200, events=4000)
    assert len(fast[0]) > 2000
    assert fast == plain


steps = st.lists(st.one_of(
    st.tuples(st.just("identify"), st.sampled_from(["u1", "u2"]), st.integers(-80, 10), st.integers(-5, 40)),
    st.tuples(st.just("track"), st.sampled_from(["u1", "u2"]), st.sampled_from(["Used", "Ordered"])),
    st.tuples(st.just("wait"), st.sampled_from(["10m", "1h", "3h", "6h", "13h", "1d", "2d", "3d"])),
), min_size=1, max_size=40)


def _play(compiled: CompiledWorkspace, script: list[tuple[Any, ...]]) -> Harness:
    h = Harness(compiled, start="2026-03-27T10:00:00Z", seed=1)
    for step in script:
        if step[0] == "identify":
            now = h.clock.now
            h.identify(step[1], signed_up_at=now + timedelta(hours=step[2]), due_at=now + timedelta(hours=step[3]))
        elif step[0] == "track":
            h.track(step[1], step[2])
        else:
            h.wait(step[1])
    h.wait("5d")
    return h


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_random_streams_trace_the_same_with_and_without_the_segment_shortcut(
        clock_workspace: CompiledWorkspace, plain_clock_workspace: CompiledWorkspace,
        script: list[tuple[Any, ...]]) -> None:
    """`>`/`>=`/`<=` anchors, `for:`, windows, an unanchored `$now.hour` and segment-of-segment rules agree."""
    fast = _play(clock_workspace, script)
    plain = _play(plain_clock_workspace, script)
    assert fast.trace == plain.trace
    assert [fast.segments(u) for u in ("u1", "u2")] == [plain.segments(u) for u in ("u1", "u2")]


@pytest.mark.parametrize("text, anchored", [
    ("$now - traits.x > t'P1D'", True),
    ("traits.x + t'P1D' < $now and metrics.n > 1", True),
    ("[$now - traits.x > t'P1D'][0]", True),
    ("traits.a == 1", True),
    ("$now.hour > 3", False),
    ("$today > traits.x", False),
    ("$now > traits.x and $now.weekday == 1", False),
], ids=["minus", "plus", "in-array", "no-clock", "attribute", "today", "mixed"])
def test_a_rule_is_anchored_only_when_every_clock_read_is_an_anchor(text: str, anchored: bool) -> None:
    """A rule that reads `$now` outside an anchored comparison must be re-run at every wake-up."""
    from journey_engine.model import Metric

    compiler = RuleCompiler({"n": Metric.model_validate({"count": "E"})}, set())
    assert compiler.compile(text).anchored is anchored


@pytest.mark.parametrize("root", WORKSPACES, ids=lambda p: p.name)
def test_every_move_is_the_move_the_journey_machine_makes(root: Path) -> None:
    """The `transitions` machine takes every transition and split path to the target the journey file names."""
    compiled = load_workspace(root)
    engine = Engine(compiled)
    for cj in compiled.journeys.values():
        for state, spec in cj.journey.states.items():
            for t in engine._plan[cj.name].states[state].checks + tuple(
                    cj.transitions[state][i] for i, _ in engine._plan[cj.name].states[state].timers):
                inst = Instance(journey=cj.name, version="1", key="", state=state,
                                entered_at=datetime(2026, 1, 1, tzinfo=UTC), data={}, holdout=False)
                assert cj.machine.move(inst, state, t.index) == t.to
            for index, path in enumerate(spec.split.paths if spec.split else ()):
                inst.state = state
                assert cj.machine.move(inst, state, index, split=True) == path.to


def test_a_flat_window_keeps_the_order_bisect_insort_keeps() -> None:
    """Flat (epoch, value) windows insert and cut exactly like bisect on a list of pairs, NaN and ties too."""
    rng = random.Random(7)
    for _ in range(300):
        pairs: list[tuple[float, float]] = []
        flat: tuple[float, ...] = ()
        for _ in range(rng.randrange(1, 25)):
            pair = (float(rng.randrange(10)), rng.choice([1.0, 2.5, -1.0, float("nan"), float("inf")]))
            bisect.insort(pairs, pair)
            flat = _insort(flat, *pair)
            horizon = float(rng.randrange(-1, 11))
            assert _bisect_right(flat, horizon, float("inf")) == bisect.bisect_right(pairs, (horizon, float("inf")))
        assert repr(list(zip(flat[::2], flat[1::2], strict=True))) == repr(pairs)


def test_profiles_store_only_metrics_that_differ_from_their_default() -> None:
    """Defaults are not stored, but read back through `metrics` and rules; 0.0 is kept (it is not 0)."""
    compiled = load_workspace(Path(__file__).parent / "workspaces" / "basic")
    h = Harness(compiled, start="2026-01-05T09:00:00Z")
    h.track("u1", "Order Completed", {"revenue": 0})
    profile = h.runtime.profile("u1")
    assert profile is not None
    assert profile.metric_values["revenue"] == 0.0 and type(profile.metric_values["revenue"]) is float
    assert "feature_uses_7d" not in profile.metric_values
    assert profile.metrics == {**compiled.metrics.defaults, **profile.metric_values}
    assert profile.metrics["feature_uses_7d"] == 0


def test_the_wake_up_round_trips_through_its_epoch_exactly() -> None:
    """`wake` is kept as epoch seconds; microsecond datetimes come back unchanged."""
    rng = random.Random(3)
    profile = Profile("u1")
    for _ in range(10_000):
        at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(2**52))
        profile.wake = at
        assert profile.wake == at


@pytest.mark.parametrize("names", [None, codec.Names()], ids=["portable", "numbered names"])
def test_a_profile_with_every_field_set_survives_the_codec(names: codec.Names | None) -> None:
    """Every compact field (windows, entries, ledger, choices, deferred, sends...) comes back as it was,
    in the stores' format and in the memory store's, with names as numbers."""
    at = datetime(2026, 1, 5, 9, 0, 0, 123456, tzinfo=UTC)
    profile = Profile("u1", {"n": 0})
    profile.traits = {"plan": "pro", "since": at}
    profile.metric_values = {"n": 3.0}
    profile.windows = {"w": (1.5, 1.0, 2.5, 1.0)}
    profile.segments = ("a", "b")
    profile.for_since = {"a": at}
    inst = Instance(journey="j", version="v1", key="k", state="s", entered_at=at, data={"x": 1}, holdout=True,
                    run=42)
    inst.timers = ((at, 1),)
    inst.sent = [("m", at, "s")]
    inst.visit = 3
    profile.add_instance(("j", "k"), inst)
    profile.entries = ("j", "k", 1.5, "i", "", 2.5)
    profile.ledger = ((1.5, "email"),)
    profile.choices = {"news": False}
    profile.deferred = [Deferred(due=at, journey="j", key="k", state="s", message="m", visit=3, run=7,
                                 data={"x": 1})]
    profile.engagements = [1.0, 2.0]
    profile.wake = at
    profile.segments_due_at = 12.5
    profile.bounced, profile.held = ("a@example.com",), ("j",)
    profile.stamps = {"n": 1.5}
    back = codec.decode(codec.encode(profile, names=names), {"n": 0}, names)
    for name in native.fields(Profile):
        if name not in ("instances", "deferred", "windows"):
            assert getattr(back, name) == getattr(profile, name), name
    assert back.windows == profile.windows
    [(key, got)] = back.instances.items()
    assert key == ("j", "k")
    assert vars_of(got) == vars_of(inst)
    assert [vars_of(d) for d in back.deferred or ()] == [vars_of(d) for d in profile.deferred]


def vars_of(obj: Any) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in native.fields(obj)}

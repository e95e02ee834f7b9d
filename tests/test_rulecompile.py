"""Specification of journey_engine.rulecompile: closures that agree with rule-engine, and time anchors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import rule_engine
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rule_engine import DataType as T
from rule_engine import errors
from rule_engine.types import coerce_value

from journey_engine.ruleanalysis import TICK, thresholds, time_anchors
from journey_engine.rulecompile import compile_rule

UTC = UTC
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
METRICS = {"feature_uses_7d": T.FLOAT, "orders": T.FLOAT, "revenue": T.FLOAT, "last_order_at": T.DATETIME,
           "first_seen_at": T.DATETIME, "last_plan": T.UNDEFINED}


def get(obj: Any, name: str) -> Any:
    """An OBJECT accessor; rule-engine hands it an OrderedDict, the closures the plain dict."""
    return obj.get(name) if isinstance(obj, dict) else None


def make_context(now: datetime = NOW, objects: bool = False) -> rule_engine.Context:
    """The brief's context; with objects=True, event and journey are OBJECTs too (as journey_engine.rules)."""
    types = {
        "traits": T.MAPPING(T.STRING),
        "metrics": T.OBJECT("metrics", attributes=METRICS, accessor=lambda o, n: o.get(n)),
        "segments": T.SET(T.STRING),
        "event": T.MAPPING(T.STRING),
        "properties": T.MAPPING(T.STRING),
        "journey": T.MAPPING(T.STRING),
        "user_id": T.STRING,
    }
    if objects:
        types["event"] = T.OBJECT("event", attributes={
            "name": T.STRING, "properties": T.MAPPING(T.STRING), "timestamp": T.DATETIME}, accessor=get)
        types["journey"] = T.OBJECT("journey", attributes={
            "entered_at": T.DATETIME, "state_entered_at": T.DATETIME, "key": T.UNDEFINED,
            "data": T.MAPPING(T.STRING)}, accessor=get)
    ctx = rule_engine.Context(type_resolver=types, default_timezone="utc", default_value=None)
    ctx._mapping_fallback_warned = True
    # pin $now and $today so rule-engine sees the same clock as the closures
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ctx.builtins = rule_engine.builtins.Builtins.from_defaults(
        values={"now": now, "today": today}, timezone=ctx.default_timezone)
    return ctx


def rule(text: str, now: datetime = NOW, objects: bool = False) -> rule_engine.Rule:
    return rule_engine.Rule(text, context=make_context(now, objects))


def engine_input(scope: dict[str, Any]) -> dict[str, Any]:
    """The same scope as rule-engine accepts it (it has no frozenset type)."""
    return {k: set(v) if isinstance(v, frozenset) else v for k, v in scope.items()}


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", call()
    except Exception as error:
        return "error", type(error)


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal once our plain values are coerced the way rule-engine coerces them."""
    ours = set(ours) if isinstance(ours, frozenset) else coerce_value(ours, verify_type=False)
    return type(ours) is type(theirs) and (ours == theirs or (ours != ours and theirs != theirs))


def assert_agrees(text: str, scope: dict[str, Any], now: datetime = NOW) -> Any:
    r = rule(text, now)
    fn = compile_rule(r)
    assert fn is not None, f"{text!r} should be supported"
    ours = outcome(lambda: fn(scope, now))
    theirs = outcome(lambda: r.evaluate(engine_input(scope)))
    assert ours[0] == theirs[0], f"{text!r}: ours={ours} rule-engine={theirs}"
    if ours[0] == "error":
        assert ours[1] is theirs[1], f"{text!r}: ours={ours} rule-engine={theirs}"
    else:
        assert same_value(ours[1], theirs[1]), f"{text!r}: ours={ours} rule-engine={theirs}"
    return ours[1]


SCOPE: dict[str, Any] = {
    "traits": {"plan": "pro", "age": 31, "score": 0.1, "created_at": NOW - timedelta(days=3),
               "tags": ["a", "b"], "nested": {"x": 1}, "a b": "spaced", "naive": datetime(2026, 1, 1),
               "birthday": date(1990, 5, 4), "empty": ""},
    "metrics": {"feature_uses_7d": 4, "orders": 0, "revenue": 10.5, "last_order_at": NOW - timedelta(days=40),
                "first_seen_at": None},
    "segments": frozenset({"power_users", "trial"}),
    "event": {"name": "Order Completed", "properties": {"price": 120}, "timestamp": NOW},
    "properties": {"price": 120},
    "journey": {"entered_at": NOW - timedelta(hours=2), "state_entered_at": NOW, "key": None, "data": {}},
    "user_id": "u1",
}


@pytest.mark.parametrize(("text", "expected"), [
    ("metrics.feature_uses_7d >= 3 and traits.plan == 'pro'", True),
    ("traits.missing", None),
    ("traits.missing.deeper", None),
    ("traits&['not there']", None),
    ("traits['a b']", "spaced"),
    ("traits.nested.x + 1", 2),
    ("traits.score + 0.2 == 0.3", True),
    ("metrics.orders == 0 and not metrics.orders", True),
    ("'trial' in segments and 'a' in traits.tags and 'pr' in traits.plan", True),
    ("traits.plan in ['pro', 'team']", True),
    ("traits.plan =~ 'p.*' and traits.plan =~~ 'r' and traits.plan !~ 'x'", True),
    ("$now - traits.created_at < t'P7D'", True),
    ("metrics.last_order_at != null and $now - metrics.last_order_at > t'P30D'", True),
    ("traits.naive == d'2026-01-01'", True),
    ("traits.birthday < d'2000-01-01'", True),
    ("$today == d'2026-03-01'", True),
    ("$now + t'PT1H' > $now", True),
    ("-t'P1D' < t'P0D'", True),
    ("traits.age > 30 ? 'adult' : 'young'", "adult"),
    ("traits.missing ?? 'fallback'", "fallback"),
    ("null != traits.plan and 'pro' == traits.plan and 31 == traits.age", True),
    ("-traits.age", -31),
    ("7 // 2 == 3 and -7 // 2 == -3 and -7 % 2 == -1", True),
    ("traits.tags[0] == 'a' and traits.tags[-1] == 'b'", True),
    ("null >= null and not (null > null)", True),
    ("traits.empty or 'x'", True),
], ids=lambda v: v if isinstance(v, str) else None)
def test_closure_agrees_with_rule_engine_on_examples(text: str, expected: Any) -> None:
    """The closure returns the documented value and the same value as rule-engine."""
    result = assert_agrees(text, SCOPE)
    assert same_value(result, coerce_value(expected))


@pytest.mark.parametrize(("text", "error"), [
    ("traits.plan > 3", errors.EvaluationError),
    ("traits.missing < 3", errors.EvaluationError),
    ("metrics.first_seen_at < $now", errors.EvaluationError),
    ("traits['not there']", errors.LookupError),
    ("traits.missing['x']", errors.EvaluationError),
    ("1 + traits.plan", errors.EvaluationError),
    ("traits.plan + 1", TypeError),  # rule-engine checks only the left operand of a string '+'

    ("traits.age / 0", errors.ArithmeticError),
    ("traits.age =~ 'x'", errors.EvaluationError),
    ("traits.plan =~ traits.bad_regex", errors.RegexSyntaxError),
    ("1 in traits.plan", errors.EvaluationError),
    ("'x' in traits.age", TypeError),
], ids=lambda v: v if isinstance(v, str) else None)
def test_closure_raises_what_rule_engine_raises(text: str, error: type[Exception]) -> None:
    """A run-time type error, a missing item or a division by zero raises the same error class as rule-engine."""
    scope = {**SCOPE, "traits": {**SCOPE["traits"], "bad_regex": "("}}
    r = rule(text)
    fn = compile_rule(r)
    assert fn is not None
    with pytest.raises(error):
        fn(scope, NOW)
    with pytest.raises(error):
        r.evaluate(engine_input(scope))


@pytest.mark.parametrize("text", [
    "[x for x in traits.tags]",
    "$abs(traits.age) > 1",
    "traits.tags[0:1]",
    "traits.plan.length > 2",
    "traits.length",
    "$re_groups",
], ids=str)
def test_unsupported_nodes_return_none(text: str) -> None:
    """Comprehensions, calls, slices, builtin attributes and other builtins are left to rule-engine."""
    assert compile_rule(rule(text)) is None


def test_missing_symbols_and_frozen_segments_are_accepted() -> None:
    """A symbol absent from the scope is null, and segments may be a frozenset."""
    fn = compile_rule(rule("user_id == null and not ('a' in segments)"))
    assert fn is not None
    assert fn({"segments": frozenset()}, NOW) is True


@pytest.mark.parametrize(("text", "anchors"), [
    ("$now - traits.created_at > t'P30D'", [(("traits", "created_at"), timedelta(days=30) + TICK)]),
    ("$now - traits.created_at < t'PT1H'", [(("traits", "created_at"), timedelta(hours=1))]),
    ("metrics.last_order_at + t'P7D' < $now", [(("metrics", "last_order_at"), timedelta(days=7) + TICK)]),
    ("metrics.last_order_at < $now - t'P7D'", [(("metrics", "last_order_at"), timedelta(days=7) + TICK)]),
    ("$now > traits.trial_ends_at + t'P7D'", [(("traits", "trial_ends_at"), timedelta(days=7) + TICK)]),
    ("$now - t'P7D' >= traits.x", [(("traits", "x"), timedelta(days=7))]),
    ("t'P30D' < $now - traits.x", [(("traits", "x"), timedelta(days=30) + TICK)]),
    ("traits.x - $now < -t'P1D'", [(("traits", "x"), timedelta(days=1) + TICK)]),
    ("$now + t'P1D' > traits.x", [(("traits", "x"), timedelta(days=-1) + TICK)]),
    ("$now > traits.trial_ends_at", [(("traits", "trial_ends_at"), TICK)]),
    ("traits['signed up'] <= $now", [(("traits", "signed up"), timedelta(0))]),
    ("journey.state_entered_at + t'P7D' <= $now", [(("journey", "state_entered_at"), timedelta(days=7))]),
    ("$now - traits.x == t'P1D'", [(("traits", "x"), timedelta(days=1)), (("traits", "x"), timedelta(days=1) + TICK)]),
    ("metrics.last_order_at != null and not ($now - metrics.last_order_at > t'P30D') or "
     "$now - traits.created_at < t'PT1H'",
     [(("metrics", "last_order_at"), timedelta(days=30) + TICK), (("traits", "created_at"), timedelta(hours=1))]),
    ("$now - traits.a > $now - traits.b", []),
    ("traits.a - traits.b > t'P1D'", []),
    ("$now > d'2026-01-01'", []),
    ("metrics.orders > 3", []),
], ids=lambda v: v if isinstance(v, str) else None)
def test_time_anchors_find_now_against_path_plus_duration(text: str, anchors: list[Any]) -> None:
    """Each comparison of $now with a path shifted by a duration literal yields (path, D)."""
    assert time_anchors(rule(text)) == anchors


@pytest.mark.parametrize("text", [
    "$now - traits.x > t'P30D'", "traits.x + t'P7D' < $now", "$now + t'P1D' >= traits.x", "traits.x <= $now",
    "traits.x > $now - t'P1D'", "$now - t'PT1H' < traits.x",
], ids=str)
def test_time_anchor_is_the_first_tick_of_the_new_value(text: str) -> None:
    """From value(X) + D on the comparison has its new value, and a tick before it the old one: a strict
    comparison turns just after X + D, so its anchor carries the tick (one wake-up, not one at X + D that
    finds nothing and another a second later)."""
    x = datetime(2026, 1, 1, tzinfo=UTC)
    ((_path, shift),) = time_anchors(rule(text))
    anchor = x + shift
    before = [anchor - timedelta(days=d) for d in (30, 1)] + [anchor - TICK]
    after = [anchor, anchor + timedelta(microseconds=1)] + [anchor + timedelta(days=d) for d in (1, 30)]

    def evaluate_at(when: datetime) -> Any:
        fn = compile_rule(rule(text, when))
        assert fn is not None
        return fn({"traits": {"x": x}}, when)

    values = {when: evaluate_at(when) for when in before + after}
    assert len({values[w] for w in before}) == 1
    assert len({values[w] for w in after}) == 1
    assert values[before[0]] != values[after[0]]


# ---------------------------------------------------------------------------------------------------------
# Property: random rules over the context above agree with rule-engine on random scopes.
# ---------------------------------------------------------------------------------------------------------
ATOMS = [
    "traits.plan", "traits.age", "traits.score", "traits.created_at", "traits.tags", "traits.nested",
    "traits.nested.x", "traits.missing", "traits['a b']", "traits&['zz']", "traits&.nested&.x", "traits.flag",
    "traits.tags[0]", "metrics.feature_uses_7d", "metrics.revenue", "metrics.last_order_at", "metrics.last_plan",
    "event.name", "event.properties.price", "properties.price", "journey.key", "journey.entered_at",
    "journey.data", "user_id", "segments", "$now", "$today",
    "1", "0", "-3", "2.5", "0.1", "0.30000000000000004", "1e20", "9007199254740993", "'pro'", "'a'", "''",
    "'^p'", "true", "false", "null", "t'P7D'", "t'PT1H'", "d'2026-01-01'", "d'2026-03-01T12:00:00'",
    "[1, 'a']", "['pro', 'free']", "{'a', 'b'}", "{1, 2.5}", "[]", "{'x': 1}", "$pi",
    "traits.tags[traits.age]", "traits.nested['x']", "traits.plan[0]",
]
BINARY = ["==", "!=", "<", "<=", ">", ">=", "and", "or", "+", "-", "*", "/", "//", "%", "**", "in", "=~",
          "=~~", "!~", "??"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(BINARY), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"not ({c})"),
        children.map(lambda c: f"-({c})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        st.tuples(children, children).map(lambda t: f"[{t[0]}, {t[1]}]"),
        st.tuples(children, st.sampled_from(["[", "&["]), children).map(lambda t: f"({t[0]}){t[1]}{t[2]}]"),
    )


RULES = st.recursive(st.sampled_from(ATOMS), _combine, max_leaves=6)

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.1, 0.2, 0.3, 2.5, -0.0, 1e20]),
    st.sampled_from(["pro", "free", "a", "", "p.*", "(", "Order Completed"]),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1)),
    st.timedeltas(min_value=timedelta(days=-60), max_value=timedelta(days=60)),
    st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 1, 1)),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["x", "y"]), SCALARS, max_size=2))
TRAITS = st.dictionaries(
    st.sampled_from(["plan", "age", "score", "created_at", "tags", "nested", "a b", "flag", "zz"]), VALUES)
METRIC_VALUES = st.fixed_dictionaries({
    "feature_uses_7d": st.one_of(st.integers(0, 10), st.floats(0, 10)),
    "revenue": st.one_of(st.none(), st.floats(-100, 1000), st.integers(0, 10**20)),
    "last_order_at": st.one_of(st.none(), st.datetimes(min_value=datetime(2025, 1, 1), timezones=st.just(UTC))),
    "last_plan": VALUES,
})
SCOPES = st.fixed_dictionaries(
    {"traits": TRAITS, "metrics": METRIC_VALUES,
     "segments": st.frozensets(st.sampled_from(["a", "b", "pro", "power_users"]))},
    optional={"event": st.fixed_dictionaries({"name": st.sampled_from(["Signed Up", "pro"]),
                                              "properties": st.dictionaries(st.just("price"), VALUES)}),
              "properties": st.dictionaries(st.just("price"), VALUES),
              "journey": st.fixed_dictionaries({"key": VALUES, "data": st.dictionaries(st.just("x"), VALUES),
                                                "entered_at": st.datetimes(timezones=st.just(UTC))}),
              "user_id": st.sampled_from(["u1", "pro", ""])},
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=RULES, scope=SCOPES, now=st.datetimes(min_value=datetime(2025, 6, 1), max_value=datetime(2026, 6, 1),
                                                  timezones=st.just(UTC)), objects=st.booleans())
def test_random_rules_agree_with_rule_engine(text: str, scope: dict[str, Any], now: datetime,
                                             objects: bool) -> None:
    """Any rule the grammar produces and rule-engine compiles evaluates to the same value or the same error."""
    try:
        r = rule(text, now, objects)
    except Exception:  # type errors, and Python errors from rule-engine's constant folding
        event("rejected by rule-engine at compile time")
        return  # the rule never reaches the closures
    fn = compile_rule(r)
    if fn is None:
        event("unsupported")
        return
    ours = outcome(lambda: fn(scope, now))
    theirs = outcome(lambda: r.evaluate(engine_input(scope)))
    event(f"{theirs[0]}: {theirs[1].__name__ if theirs[0] == 'error' else type(theirs[1]).__name__}")
    assert ours[0] == theirs[0], f"ours={ours} rule-engine={theirs}"
    if ours[0] == "error":
        assert ours[1] is theirs[1], f"ours={ours} rule-engine={theirs}"
    else:
        assert same_value(ours[1], theirs[1]), f"ours={ours} rule-engine={theirs}"


def test_decimal_results_are_exact() -> None:
    """Arithmetic follows rule-engine's Decimal arithmetic, not binary floats."""
    fn = compile_rule(rule("traits.a + traits.b"))
    assert fn is not None
    assert fn({"traits": {"a": 0.1, "b": 0.2}}, NOW) == Decimal("0.3")


@pytest.mark.parametrize(("text", "expected"), [
    ("metrics.uses >= 3", {"uses": (("ge", Decimal(3)),)}),
    ("3 < metrics.uses and metrics.opens == 0", {"uses": (("gt", Decimal(3)),), "opens": (("eq", Decimal(0)),)}),
    ("metrics.uses > 0 or metrics.uses != 5", {"uses": (("ne", Decimal(5)), ("gt", Decimal(0)))}),
    ("metrics.uses + 1 > 2", {"uses": None}),  # in arithmetic: any change may matter
    ("metrics.uses > metrics.opens", {"uses": None, "opens": None}),
    ("metrics.uses > 2 and metrics['uses'] * 2 < 9", {"uses": None}),  # read another way as well
    ("metrics.last_order_at < $now - P30D", {"last_order_at": None}),
    ("'uses' in metrics", {"*": None}),  # the mapping whole
    ("traits.plan == 'pro'", {}),
])
def test_thresholds_are_the_comparisons_with_numbers_through_which_a_rule_reads_a_metric(
        text: str, expected: dict[str, Any]) -> None:
    assert thresholds(rule_engine.Rule(text)) == expected

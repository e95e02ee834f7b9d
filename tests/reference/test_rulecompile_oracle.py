"""rulecompile's closures against rule-engine itself: random rule texts over random typed contexts give
the same result, or an error of the same class, as `rule_engine.Rule.evaluate`.

The rules are compiled by the workspace's own RuleCompiler (the typed context of SPEC §3 item 1), so
only texts a workspace could hold are tried; the closure is `CompiledRule.fast`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import rule_engine
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as hevent
from hypothesis import strategies as st

from journey_engine.model import Metric
from journey_engine.rules import RuleCompiler, RuleProblem

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COMPILER = RuleCompiler({"orders": Metric(count="Order Completed"), "revenue": Metric(sum="amount", of="Order"),
                         "last_order_at": Metric(last_seen="Order Completed"),
                         "last_plan": Metric(last="plan", of="Plan Changed")}, {"vip", "new_users"})

ATOMS = ["traits.plan", "traits.age", "traits.created_at", "traits.tags", "traits.missing", "metrics.orders",
         "metrics.revenue", "metrics.last_order_at", "metrics.last_plan", "$now", "user_id", "journey.entered_at",
         "journey.key", "event.name", "event.properties.amount", "'pro'", "''", "0", "3", "2.5", "-1", "null",
         "true", "false", "t'P1D'", "t'PT90M'", "d'2026-02-01T00:00:00Z'", "segments", "[1, 'a']"]
OPS = ["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "and", "or", "in", "=~", "=~~"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 50), st.sampled_from([2.5, 0.1, -0.0, 1e20]),
                   st.sampled_from(["pro", "", "p.*", "2026-02-01"]),
                   st.sampled_from([NOW - timedelta(days=2), NOW + timedelta(hours=1), NOW]),
                   st.lists(st.sampled_from(["a", 1, None]), max_size=2), st.sampled_from([{"x": 1}, {}]))


def expressions(depth: int = 2) -> st.SearchStrategy[str]:
    atom = st.sampled_from(ATOMS)
    if depth == 0:
        return atom
    inner = expressions(depth - 1)
    return st.one_of(
        atom,
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(OPS), inner),
        st.builds(lambda a: f"not {a}", inner),
        st.builds(lambda a, b, c: f"({a} ? {b} : {c})", inner, inner, inner),
    )


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    traits = {k: draw(VALUES) for k in draw(st.lists(st.sampled_from(["plan", "age", "created_at", "tags"]),
                                                     unique=True))}
    metrics = {"orders": draw(st.integers(0, 5)), "revenue": draw(st.sampled_from([0, 12.5, 100])),
               "last_order_at": draw(st.sampled_from([None, NOW - timedelta(days=40)])),
               "last_plan": draw(VALUES)}
    scope: dict[str, Any] = {"traits": traits, "metrics": metrics,
                             "segments": tuple(draw(st.lists(st.sampled_from(["vip", "new_users"]), unique=True))),
                             "user_id": draw(st.sampled_from(["u1", "42"]))}
    if draw(st.booleans()):
        scope["journey"] = {"entered_at": NOW - timedelta(hours=3), "state_entered_at": NOW,
                            "key": draw(st.sampled_from([None, "A"])), "data": {}}
    if draw(st.booleans()):
        props = {"amount": draw(VALUES)}
        scope["event"] = {"name": "Order Completed", "properties": props, "timestamp": NOW}
        scope["properties"] = props
    return scope


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        value = run()
    except (rule_engine.EngineError, TypeError, ValueError, ArithmeticError) as exc:
        return "error", type(exc).__name__
    if isinstance(value, bool) or value is None:
        return "value", value
    if isinstance(value, int | float | Decimal):
        return "number", Decimal(value)
    if isinstance(value, set | frozenset | tuple | list):  # the closures keep `segments` as a tuple
        return "collection", sorted(map(repr, value))
    return "value", value


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(text=expressions(), scope=scopes())
def test_compiled_rules_agree_with_rule_engine(text: str, scope: dict[str, Any]) -> None:
    """A closure gives rule-engine's value, or fails with the same error class."""
    try:
        compiled = COMPILER.compile(text)
    except RuleProblem:
        assume(False)
        return
    assume(compiled.fast is not None)
    view = dict(scope)
    view["segments"] = set(scope["segments"])

    def slow() -> Any:
        compiled.clock.now = NOW
        return compiled.rule.evaluate(view)

    fast, expected = _outcome(lambda: compiled.fast(scope, NOW)), _outcome(slow)
    hevent(expected[0])
    if expected[0] == "error":
        assert fast[0] == "error", f"{text} over {scope}: rule-engine fails ({expected[1]}), the closure gives {fast}"
    else:
        assert fast == expected, f"{text} over {scope}: rule-engine {expected}, closure {fast}"

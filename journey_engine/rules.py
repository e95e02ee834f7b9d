"""Rules: rule-engine expressions compiled once at load against a typed context (SPEC §3 item 1).

rule-engine parses and type-checks (an undeclared metric or a type mismatch is a load error);
`rulecompile` turns the typed tree into Python closures, much cheaper to call than `Rule.matches`
(tests/reference/test_rulecompile_oracle.py holds them to rule-engine's own answers).
`$now` is the engine clock, passed in on every evaluation, never the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import rule_engine
from rule_engine import DataType as T
from rule_engine import ast as rast
from rule_engine.builtins import Builtins, BuiltinValueGenerator

from .errors import did_you_mean
from .model import Metric
from .ruleanalysis import Threshold, _anchor, thresholds, time_anchors  # _anchor: tests
from .rulecompile import compile_rule

Scope = Mapping[str, Any]
MAX_RULE_LENGTH = 2000

METRIC_DEFAULTS: dict[str, Any] = {"count": 0, "sum": 0, "last": None, "last_seen": None, "first_seen": None}
_SYMBOLS = ("traits", "metrics", "segments", "event", "properties", "journey", "user_id")
_METRIC_TYPES = {"count": T.FLOAT, "sum": T.FLOAT, "last_seen": T.DATETIME, "first_seen": T.DATETIME,
                 "last": T.UNDEFINED}


# where a rule that failed at run time is noted in the scope it was evaluated with: (rule, error text)
RULE_ERRORS = "!errors"


def _error_text(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


class RuleProblem(ValueError):
    """A rule that does not compile; the loader adds file, line and column."""


class UnknownDeclaration(RuleProblem):
    """A rule naming a metric or segment the workspace does not declare (perhaps in a file that did not parse)."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to evaluate, with what it reads (so only rules whose inputs changed are re-run)."""

    text: str
    rule: rule_engine.Rule = field(repr=False)
    fast: Callable[[Scope, datetime], Any] | None = field(repr=False)
    clock: _Clock = field(repr=False)
    metrics: frozenset[str]
    segments: frozenset[str]
    traits: bool
    now: bool
    event: bool
    journey: bool
    anchors: tuple[tuple[tuple[str, ...], timedelta], ...]
    # every `$now` is in a comparison with an anchor: time alone changes the value only at an anchor
    anchored: bool
    # how it reads each metric: comparisons with numbers, or None (any other way; see rulecompile.thresholds)
    thresholds: Mapping[str, tuple[Threshold, ...] | None] = field(default_factory=dict)
    where: str = ""  # file:line of the rule, for `rule_error` records

    def __call__(self, scope: Scope, now: datetime) -> bool:
        """True when the rule holds. An evaluation error (a trait of the wrong type) counts as False and is
        noted in the scope under RULE_ERRORS, when the scope is a dict, for the caller to trace."""
        try:
            if self.fast is not None:
                return bool(self.fast(scope, now))
            self.clock.now = now
            return bool(self.rule.matches(_rule_engine_view(scope)))
        except (rule_engine.EngineError, TypeError, ValueError, ArithmeticError) as exc:
            if isinstance(scope, dict):
                scope.setdefault(RULE_ERRORS, []).append((self, _error_text(exc)))
            return False

    def next_change(self, scope: Scope, now: datetime) -> datetime | None:
        """The earliest time after `now` at which time alone may change this rule's value.

        A comparison `$now - x > d` turns at x + d exactly for `>=` and one tick later for `>`: each
        anchor is already the instant its comparison turns (rulecompile._anchor).
        """
        return next_anchor(self.anchors, scope, now)


def next_anchor(anchors: Iterable[tuple[tuple[str, ...], timedelta]], scope: Scope,
                now: datetime) -> datetime | None:
    """The earliest anchor instant x + d later than `now`; see next_change."""
    best: datetime | None = None
    for path, offset in anchors:
        value = _lookup(scope, path)
        if not isinstance(value, datetime):
            continue
        at = value + offset
        if at <= now:
            continue
        if best is None or at < best:
            best = at
    return best


def path_reader(path: tuple[str, ...]) -> Callable[[Scope], Any]:
    """`_lookup` of one fixed path, unrolled for the usual `traits.x` / `metrics.x` (read on every call)."""
    if len(path) != 2:
        return lambda scope: _lookup(scope, path)
    first, second = path

    def read(scope: Scope) -> Any:
        value = scope.get(first)
        return value.get(second) if type(value) is dict else None
    return read


def _lookup(scope: Scope, path: tuple[str, ...]) -> Any:
    value: Any = scope
    for part in path:
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


class _Clock:
    """Holds the engine's `now` for the rare rules evaluated by rule-engine itself."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = datetime(1970, 1, 1, tzinfo=UTC)


class RuleCompiler:
    """Compiles every rule of a workspace against one typed context."""

    def __init__(self, metrics: Mapping[str, Metric], segments: set[str]) -> None:
        self.segments = set(segments)
        self.metric_names = set(metrics)
        self.clock = _Clock()
        metric_type = T.OBJECT("metrics", attributes={n: _METRIC_TYPES[m.kind] for n, m in metrics.items()},
                               accessor=_metric_reader({n: METRIC_DEFAULTS[m.kind] for n, m in metrics.items()}))
        event_type = T.OBJECT("event", attributes={"name": T.STRING, "properties": T.MAPPING(T.STRING),
                                                   "timestamp": T.DATETIME}, accessor=_get)
        journey_type = T.OBJECT("journey", attributes={"entered_at": T.DATETIME, "state_entered_at": T.DATETIME,
                                                       "key": T.UNDEFINED, "data": T.MAPPING(T.STRING)},
                                accessor=_get)
        types = {"traits": T.MAPPING(T.STRING), "metrics": metric_type, "segments": T.SET(T.STRING),
                 "event": event_type, "properties": T.MAPPING(T.STRING), "journey": journey_type,
                 "user_id": T.STRING}
        self.context = rule_engine.Context(type_resolver=types, default_timezone="utc", default_value=None)
        # attribute-style access on mappings (`traits.plan`) is the language; the deprecation warning is noise
        self.context._mapping_fallback_warned = True
        clock = self.clock
        self.context.builtins = Builtins.from_defaults(
            values={"now": BuiltinValueGenerator(lambda _: clock.now),
                    "today": BuiltinValueGenerator(lambda _: clock.now.replace(hour=0, minute=0, second=0,
                                                                                microsecond=0)),
                    "random": None},
            timezone=self.context.default_timezone)
        # `$random` is switched off above: simulations must be reproducible
        self.builtins = frozenset(n for n in self.context.builtins if n != "random")

    def compile(self, text: str) -> CompiledRule:
        """Compile or raise RuleProblem with a message that says how to fix the rule."""
        if len(text) > MAX_RULE_LENGTH:
            raise RuleProblem(f"rule is longer than {MAX_RULE_LENGTH} characters")
        try:
            rule = rule_engine.Rule(text, context=self.context)
        except rule_engine.RuleSyntaxError as exc:
            token = getattr(exc, "token", None)
            where = f" near `{token.value}`" if token is not None and getattr(token, "value", None) else ""
            raise RuleProblem(f"rule `{text}` has a syntax error{where}") from None
        except rule_engine.SymbolResolutionError as exc:
            raise RuleProblem(_symbol_message(text, exc.symbol_name)) from None
        except rule_engine.AttributeResolutionError as exc:
            raise self._attribute_problem(text, exc) from None
        except rule_engine.EngineError as exc:
            raise RuleProblem(f"rule `{text}`: {exc.message}") from None
        return self._finish(text, rule)

    def _attribute_problem(self, text: str, exc: rule_engine.AttributeResolutionError) -> RuleProblem:
        name = exc.attribute_name
        if getattr(exc.object, "name", None) == "metrics":
            return UnknownDeclaration(f"rule `{text}`: unknown metric `{name}`{did_you_mean(name, self.metric_names)}")
        known = getattr(exc.object, "attributes", None) or {}
        return RuleProblem(f"rule `{text}`: unknown attribute `{name}`{did_you_mean(name, known)}")

    def _builtin_message(self, text: str, name: str) -> str:
        if name == "$random":
            return f"rule `{text}`: `$random` is not available: a rule gives the same answer in every run"
        close = did_you_mean(name, [f"${b}" for b in self.builtins])
        hint = close if "did you mean" in close else "; write `$now` for the engine clock"
        return f"rule `{text}`: unknown built-in `{name}`{hint}"

    def _finish(self, text: str, rule: rule_engine.Rule) -> CompiledRule:
        metrics: set[str] = set()
        segments: set[str] = set()
        symbols: set[str] = set()
        for node in _walk(rule.statement.expression):
            if isinstance(node, rast.SymbolExpression):
                symbols.add(("$" if node.scope else "") + node.name)
            elif isinstance(node, rast.GetAttributeExpression) and _is_symbol(node.object, "metrics"):
                metrics.add(node.name)
            elif (isinstance(node, rast.ContainsExpression) and _is_symbol(node.container, "segments")
                  and isinstance(node.member, rast.StringExpression)):
                segments.add(node.member.value)
        unknown_builtins = sorted(n for n in symbols if n.startswith("$") and n[1:] not in self.builtins)
        if unknown_builtins:
            raise RuleProblem(self._builtin_message(text, unknown_builtins[0]))
        unknown = sorted(segments - self.segments)
        if unknown:
            raise UnknownDeclaration(f"rule `{text}`: unknown segment `{unknown[0]}`"
                              f"{did_you_mean(unknown[0], self.segments)}")
        return CompiledRule(text=text, rule=rule, fast=compile_rule(rule), clock=self.clock,
                            metrics=frozenset(metrics), segments=frozenset(segments),
                            traits="traits" in symbols, now="$now" in symbols or "$today" in symbols,
                            event="event" in symbols or "properties" in symbols, journey="journey" in symbols,
                            anchors=tuple(time_anchors(rule)), anchored=_only_anchored_clock(rule),
                            thresholds=thresholds(rule))


def _symbol_message(text: str, name: str) -> str:
    """An unknown top-level name: the close symbol, else what rules see (a bare word is often a trait)."""
    close = did_you_mean(name, _SYMBOLS)
    if "did you mean" in close:
        return f"rule `{text}`: unknown name `{name}`{close}"
    return (f"rule `{text}`: unknown name `{name}`; rules see traits, metrics, segments, event, properties, "
            f"journey, user_id and $now (a trait is written `traits.{name}`)")


def _only_anchored_clock(rule: rule_engine.Rule) -> bool:
    """True when every `$now` in the rule sits in a comparison `time_anchors` understands (and no `$today`).

    Such a rule is a step function of time between anchors, so it need not be re-run when none has passed.
    """
    stack: list[Any] = [rule.statement.expression]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list | tuple | set | frozenset):
            stack.extend(node)
            continue
        if isinstance(node, rast.SymbolExpression) and node.scope:
            return False  # a `$now` or `$today` outside an anchored comparison
        anchored = (isinstance(node, rast.ComparisonExpression)
                    and not isinstance(node, rast.FuzzyComparisonExpression) and _anchor(node) is not None)
        if not anchored and isinstance(node, rast.ExpressionBase):
            stack.extend(_children(node))
    return True


def _rule_engine_view(scope: Scope) -> dict[str, Any]:
    """The scope as rule-engine's own evaluator wants it: the segments tuple as the set it is typed as."""
    view = dict(scope)
    if type(view.get("segments")) is tuple:
        view["segments"] = set(view["segments"])
    return view


def _metric_reader(defaults: dict[str, Any]) -> Callable[[Any, str], Any]:
    """`metrics.x`: profiles store only values that differ from the default, so the default fills in."""
    def read(obj: Any, name: str) -> Any:
        return obj.get(name, defaults.get(name)) if isinstance(obj, dict) else None  # rule-engine: an OrderedDict
    return read


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else None  # rule-engine hands over an OrderedDict


def _is_symbol(node: Any, name: str) -> bool:
    return isinstance(node, rast.SymbolExpression) and node.name == name and not node.scope


def _walk(node: Any) -> Iterator[Any]:
    """Every AST node below `node` (rule-engine has no visitor)."""
    stack = [node]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, rast.ExpressionBase):
            yield item
            stack.extend(_children(item))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)


def _children(node: Any) -> list[Any]:
    names: list[str] = []
    for klass in type(node).__mro__:
        names.extend(getattr(klass, "__slots__", ()))
    values = [getattr(node, n, None) for n in names]
    values.extend(getattr(node, "__dict__", {}).values())
    return [v for v in values if isinstance(v, rast.ExpressionBase | list | tuple)]

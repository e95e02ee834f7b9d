"""What a rule reads, found in rule-engine's typed AST: when time alone can flip it (`time_anchors`) and the
metric thresholds it compares against (`thresholds`), so the engine re-checks it only when it may change.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import rule_engine
from rule_engine import ast
from rule_engine.builtins import Builtins

Anchor = tuple[tuple[str, ...], timedelta]
Threshold = tuple[str, Decimal]  # ("ge", 3): the rule reads `metrics.x >= 3`, the metric on the left

__all__ = ["EVERY_METRIC", "TICK", "Anchor", "Threshold", "holds", "thresholds", "time_anchors"]


# ---------------------------------------------------------------------------------------------------------
# Time anchors: comparisons of $now against a path shifted by a duration literal.
# ---------------------------------------------------------------------------------------------------------
_CHILD_ATTRS = ("left", "right", "container", "member", "object", "item", "condition", "case_true",
                "case_false", "iterable", "function", "start", "stop")
_Linear = tuple[int, dict[tuple[str, ...], int], timedelta]  # coefficient of $now, of each path, constant


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.ComprehensionExpression):  # its body refers to the loop variable, not the scope
        yield node.iterable
        return
    for attr in _CHILD_ATTRS:
        child = getattr(node, attr, None)
        if isinstance(child, ast.ExpressionBase):
            yield child
    if isinstance(node, (ast.ArrayExpression, ast.SetExpression)):
        yield from node.value
    yield from getattr(node, "arguments", ())


def _path(node: Any) -> tuple[str, ...] | None:
    if isinstance(node, ast.SymbolExpression):
        return (node.name,) if node.scope is None else None
    if isinstance(node, ast.GetAttributeExpression):
        parent = _path(node.object)
        return None if parent is None else (*parent, node.name)
    if isinstance(node, ast.GetItemExpression) and isinstance(node.item, ast.StringExpression):
        parent = _path(node.container)
        return None if parent is None else (*parent, node.item.value)
    return None


def _linear(node: Any) -> _Linear | None:
    """node as a*$now + sum(b_i*path_i) + duration, or None if it is not of that form."""
    if isinstance(node, ast.TimedeltaExpression):
        return 0, {}, node.value
    if isinstance(node, ast.SymbolExpression) and node.scope == Builtins.scope_name:
        return (1, {}, timedelta()) if node.name == "now" else None
    path = _path(node)
    if path is not None:
        return 0, {path: 1}, timedelta()
    if isinstance(node, ast.UnaryExpression) and node.type == "uminus":
        inner = _linear(node.right)
        return None if inner is None else _scale(inner, -1)
    if isinstance(node, (ast.AddExpression, ast.SubtractExpression)):
        left, right = _linear(node.left), _linear(node.right)
        if left is None or right is None:
            return None
        return _plus(left, right if isinstance(node, ast.AddExpression) else _scale(right, -1))
    return None


def _scale(form: _Linear, k: int) -> _Linear:
    return k * form[0], {p: k * v for p, v in form[1].items()}, k * form[2]


def _plus(a: _Linear, b: _Linear) -> _Linear:
    paths = dict(a[1])
    for p, v in b[1].items():
        paths[p] = paths.get(p, 0) + v
    return a[0] + b[0], {p: v for p, v in paths.items() if v}, a[2] + b[2]


TICK = timedelta(seconds=1)  # "just after" an anchor: when a strict comparison is seen to have turned


def _anchor(node: Any) -> list[Anchor] | None:
    """When time alone can flip this comparison: [(path of X, D)], re-check at X + D; None if it is not
    a comparison of `$now` with X ± a duration.

    left - right = s*($now - X) + K changes sign at T = X - s*K. Whether the comparison's value is new
    at T itself or only just after it depends on the operator and the sign: `$now >= T` is true at T,
    `$now > T` one tick later, so one instant is enough (==, != change at T and again after it).
    """
    left, right = _linear(node.left), _linear(node.right)
    if left is None or right is None:
        return None
    s, paths, k = _plus(left, _scale(right, -1))
    if s not in (1, -1) or len(paths) != 1:
        return None
    ((path, coefficient),) = paths.items()
    if coefficient != -s:
        return None
    at = -s * k
    if node.type in ("eq", "ne"):
        return [(path, at), (path, at + TICK)]
    after = node.type in (("gt", "le") if s == 1 else ("ge", "lt"))  # true only once $now passes T
    return [(path, at + TICK if after else at)]


def time_anchors(rule: rule_engine.Rule) -> list[Anchor]:
    """(path of X, D) for each comparison of ``$now`` with ``X ± duration literal`` (or with X alone, D = 0).

    The comparison can change its truth value only at value(X) + D, or for a strict one a tick after it
    (see `_anchor`, which folds the tick into D), so that is when to re-check it.
    """
    found: list[Anchor] = []
    stack = [rule.statement.expression]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ComparisonExpression) and not isinstance(node, ast.FuzzyComparisonExpression):
            for anchor in _anchor(node) or ():
                if anchor not in found:
                    found.append(anchor)
        stack.extend(reversed(list(_children(node))))
    return found


# Thresholds: how a rule reads each metric, so a window's expiry that cannot change the rule wakes nobody.
# ---------------------------------------------------------------------------------------------------------
_MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
EVERY_METRIC = "*"  # the key under which a rule that reads `metrics` as a whole says so


def thresholds(rule: rule_engine.Rule) -> dict[str, tuple[Threshold, ...] | None]:
    """For each metric the rule reads: the comparisons with a number literal through which it reads it
    (the metric on the left), or None when it reads it any other way, as a value or in arithmetic (then
    any change of the metric may change the rule). A rule reading `metrics` whole has EVERY_METRIC: None.
    """
    found: dict[str, list[Threshold] | None] = {}

    def opaque(name: str) -> None:
        found[name] = None

    stack = [rule.statement.expression]
    while stack:
        node = stack.pop()
        path = _path(node)
        if path is not None:
            if path[0] == "metrics":
                opaque(path[1] if len(path) > 1 else EVERY_METRIC)
            continue
        if isinstance(node, ast.ComparisonExpression) and not isinstance(node, ast.FuzzyComparisonExpression):
            read = _compared(node)
            if read is not None:
                name, threshold = read
                kept = found.get(name, [])
                if kept is not None:
                    found[name] = [*kept, threshold]
                continue
        stack.extend(_children(node))
    return {name: None if kept is None else tuple(kept) for name, kept in found.items()}


def _compared(node: Any) -> tuple[str, Threshold] | None:
    """(metric, threshold) when the comparison is `metrics.x <op> number` or `number <op> metrics.x`."""
    for side, other, op in ((node.left, node.right, node.type), (node.right, node.left, _MIRROR.get(node.type))):
        path = _path(side)
        if (op is not None and path is not None and len(path) == 2 and path[0] == "metrics"
                and isinstance(other, ast.FloatExpression) and isinstance(other.value, Decimal)):
            return path[1], (op, other.value)
    return None


def holds(threshold: Threshold, value: int) -> bool:
    """The comparison of a threshold for a whole number (a count: exact against the decimal literal)."""
    op, literal = threshold
    if op == "eq":
        return value == literal
    if op == "ne":
        return value != literal
    if op == "lt":
        return value < literal
    if op == "le":
        return value <= literal
    if op == "gt":
        return value > literal
    return value >= literal

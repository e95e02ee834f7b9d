"""Compile rule-engine rules to plain Python closures, and find when time-driven rules can flip.

rule-engine still parses and type-checks; its typed AST becomes closures that read the scope directly.
"""

from __future__ import annotations

import collections.abc
import decimal
import operator
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import rule_engine
from rule_engine import ast, errors
from rule_engine.builtins import Builtins
from rule_engine.types import DataType, coerce_value, is_integer_number

Scope = Mapping[str, Any]
Fn = Callable[[Scope, datetime], Any]

__all__ = ["compile_rule"]


class _Unsupported(Exception):
    """Raised while compiling a node the closures do not cover; compile_rule then returns None."""


# Types that rule-engine's per-access coercion (numbers -> Decimal, list -> tuple, dict -> OrderedDict) may
# leave "raw" here: every operation below either treats raw and coerced forms alike or coerces first.
_PLAIN = frozenset({str, int, float, bool, type(None), dict, set, frozenset, timedelta, Decimal, tuple,
                    bytes})
# Same-type pairs whose native Python comparison is exactly rule-engine's comparison of the coerced values.
_EQ_FAST = frozenset({str, int, float, bool, type(None), datetime, timedelta, Decimal, bytes})
# The type each scalar has once rule-engine has coerced it: equality across different kinds is false.
_KIND: dict[type, type] = {int: Decimal, float: Decimal, Decimal: Decimal, str: str, bool: bool,
                           type(None): type(None), datetime: datetime, timedelta: timedelta, bytes: bytes}
_ORD_FAST = frozenset({str, int, bool, datetime, timedelta, Decimal, bytes})
_STR_CONTAINERS = frozenset({set, frozenset, dict, tuple, list})
_EXACT_INT = 2**53  # ints up to this are exact floats, so int/float comparisons need no Decimal
_ORDER_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt,
}
_ATTR_TYPES = (DataType.ARRAY, DataType.BYTES, DataType.DATETIME, DataType.FLOAT, DataType.MAPPING,
               DataType.SET, DataType.STRING, DataType.TIMEDELTA)
_NOT_CONST = object()


# ---------------------------------------------------------------------------------------------------------
# Runtime helpers: the slow paths replay rule-engine's own code on coerced values, so rare cases stay exact.
# ---------------------------------------------------------------------------------------------------------
def _co(value: Any) -> Any:
    """The value rule-engine would hold (frozenset accepted as a set)."""
    if type(value) is frozenset:
        return set(value)
    return coerce_value(value, verify_type=False)


def _dec(value: Any) -> Decimal:
    if type(value) is Decimal:
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(int(value))


def _native_numbers(a: Any, b: Any) -> bool:
    """True when a and b are int/float that Python compares exactly as rule-engine compares their Decimals."""
    ta, tb = type(a), type(b)
    if ta is float:
        if a != a:  # NaN: rule-engine's Decimal('NaN') raises on ordering
            return False
        return (tb is float and b == b) or (tb is int and -_EXACT_INT <= b <= _EXACT_INT)
    if ta is int:
        return tb is int or (tb is float and b == b and -_EXACT_INT <= a <= _EXACT_INT)
    return False


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (Decimal, float, int)) and not isinstance(value, bool)


def _mismatch(what: str = "") -> errors.EvaluationError:
    return errors.EvaluationError("data type mismatch" + (f" ({what})" if what else ""))


def _eq(a: Any, b: Any) -> bool:
    ka, kb = _KIND.get(type(a)), _KIND.get(type(b))
    if ka is not None and kb is not None:  # scalars: compare the kinds rule-engine's values would have
        if ka is not kb:
            return False
        if type(a) is type(b) or _native_numbers(a, b):
            return bool(a == b)
        return _dec(a) == _dec(b)
    a, b = _co(a), _co(b)
    return type(a) is type(b) and bool(a == b)


def _order(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    ta = type(a)
    if (ta is type(b) and ta in _ORD_FAST) or _native_numbers(a, b):
        return op(a, b)
    return _order_values(op, _co(a), _co(b))


def _order_values(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    # mirrors ArithmeticComparisonExpression.__op_arithmetic_values / __op_arithmetic_arrays
    if a is None and b is None:
        return op in (operator.ge, operator.le)
    if isinstance(a, tuple) and isinstance(b, tuple):
        for sub_a, sub_b in zip(a, b, strict=False):
            if _order_values(operator.ne, sub_a, sub_b):
                return _order_values(op, sub_a, sub_b)
        if len(a) != len(b):
            return _order_values(op, Decimal(len(a)), Decimal(len(b)))
        return op in (operator.ge, operator.le)
    if type(a) is not type(b):
        raise _mismatch()
    return op(a, b)


def _contains_slow(container: Any, member: Any) -> bool:
    container, member = _co(container), _co(member)
    kind = DataType.from_value(container)
    if kind in (DataType.BYTES, DataType.STRING) and DataType.from_value(member) != kind:
        raise _mismatch()
    return bool(member in container)


def _integer_index(item: Any) -> int:
    if not is_integer_number(item):
        raise _mismatch("not an integer number")
    return int(item)


def _add(dec: decimal.Context, a: Any, b: Any) -> Any:
    # mirrors AddExpression._op_add
    if isinstance(a, datetime):
        if not isinstance(b, timedelta):
            raise _mismatch("not a timedelta value")
    elif isinstance(a, timedelta):
        if not isinstance(b, (timedelta, datetime)):
            raise _mismatch("not a datetime or timedelta value")
    elif isinstance(a, bytes) or isinstance(b, bytes):
        if not isinstance(a, bytes):  # rule-engine checks only the left one; Python rejects the right one
            raise _mismatch("not a bytes value")
    elif isinstance(a, str) or isinstance(b, str):
        if not isinstance(a, str):
            raise _mismatch("not a string value")
    else:
        if not (_is_numeric(a) and _is_numeric(b)):
            raise _mismatch("not a numeric value")
        return _int_or(dec, dec.add, a, b, operator.add)
    return a + b


def _sub(dec: decimal.Context, a: Any, b: Any) -> Any:
    # mirrors SubtractExpression._op_sub
    if isinstance(a, datetime):
        if not isinstance(b, (datetime, timedelta)):
            raise _mismatch("not a datetime or timedelta value")
    elif isinstance(a, timedelta):
        if not isinstance(b, timedelta):
            raise _mismatch("not a timedelta value")
    else:
        if not (_is_numeric(a) and _is_numeric(b)):
            raise _mismatch("not a numeric value")
        return _int_or(dec, dec.subtract, a, b, operator.sub)
    return a - b


def _int_or(dec: decimal.Context, dec_op: Callable[[Decimal, Decimal], Decimal], a: Any, b: Any,
            int_op: Callable[[int, int], int] | None) -> Any:
    """Exact int arithmetic while the result fits the Decimal precision (so it equals the Decimal)."""
    if int_op is not None and type(a) is int and type(b) is int:
        result = int_op(a, b)
        if abs(result) < 10**dec.prec:
            return result
    return dec_op(_dec(a), _dec(b))


_ARITH: dict[str, tuple[str, Callable[[int, int], int] | None]] = {
    "mul": ("multiply", operator.mul), "tdiv": ("divide", None), "fdiv": ("divide_int", None),
    "mod": ("remainder", None), "pow": ("power", None),
}


# ---------------------------------------------------------------------------------------------------------
# The compiler: one builder per AST node class.
# ---------------------------------------------------------------------------------------------------------
class _Compiler:
    def __init__(self, context: rule_engine.Context) -> None:
        if context.default_value is not None:
            raise _Unsupported("closures implement default_value=None (missing -> null) only")
        self.context = context
        self.tz = context.default_timezone
        self.dec = context.decimal_context.copy()  # a private copy: our flags never leak into the caller's

    def build(self, node: Any) -> Fn:
        builder = _BUILDERS.get(type(node))
        if builder is None:
            raise _Unsupported(type(node).__name__)
        return builder(self, node)

    def const(self, node: Any) -> Any:
        """The value of a fully reduced literal, or _NOT_CONST."""
        if not (isinstance(node, ast.LiteralExpressionBase) and node.is_reduced):
            return _NOT_CONST
        value = node.evaluate(None)
        return _fast_number(value) if type(value) is Decimal else value

    def norm(self, value: Any) -> Any:
        """What ExpressionBase._new_value does for a value read from the scope, short of coercing numbers."""
        if type(value) is datetime:
            return value if value.tzinfo is not None else value.replace(tzinfo=self.tz)
        if type(value) is list:
            return tuple(value)
        value = coerce_value(value, verify_type=False)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=self.tz)
        return value


def _fast_number(value: Decimal) -> int | float | Decimal:
    # a literal is kept as int/float only when that compares exactly like the Decimal rule-engine holds
    if not value.is_finite():
        return value
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    return as_float if Decimal(repr(as_float)) == value else value


def _b_literal(c: _Compiler, node: Any) -> Fn:
    value = c.const(node)
    if value is _NOT_CONST:
        raise _Unsupported("non-reduced literal")
    return lambda s, n: value


def _b_collection(c: _Compiler, node: Any) -> Fn:
    if node.is_reduced:
        return _b_literal(c, node)
    members = tuple(c.build(m) for m in node.value)
    if isinstance(node, ast.SetExpression):  # a set holds the coerced members, as rule-engine's does
        return lambda s, n: {_co(m(s, n)) for m in members}
    return lambda s, n: tuple([m(s, n) for m in members])


def _b_symbol(c: _Compiler, node: Any) -> Fn:
    name = node.name
    if node.scope == Builtins.scope_name:
        if name == "now":
            return lambda s, n: n
        if name == "today":
            return lambda s, n: n.replace(hour=0, minute=0, second=0, microsecond=0)
        if name in ("e", "pi"):
            value = c.context.builtins[name]
            return lambda s, n: value
        raise _Unsupported(f"${name}")
    if node.scope is not None:
        raise _Unsupported(f"symbol scope {node.scope!r}")
    norm = c.norm

    def symbol(s: Scope, n: datetime) -> Any:
        v = s.get(name)
        return v if type(v) in _PLAIN else norm(v)
    return symbol


def _b_getattr(c: _Compiler, node: Any) -> Fn:
    name, safe, norm = node.name, node.safe, c.norm
    nullable = DataType.is_type(node.object.result_type, DataType.NULLABLE)
    # `traits.plan`: read the symbol inline, saving a call (an attribute of a value ignores its normalisation)
    symbol = node.object
    top = symbol.name if isinstance(symbol, ast.SymbolExpression) and symbol.scope is None else None
    obj = c.build(node.object)
    if node._object_type is not None:
        return _getattr_object(obj, top, name, safe, nullable, node._object_type.accessor, norm)
    static = DataType.NULLABLE.unwrap(node.object.result_type)
    kinds = (static,) if DataType.is_type(static, DataType.MAPPING) else _ATTR_TYPES
    if _is_builtin_attribute(c.context, kinds, name) or not c.context.mapping_attribute_lookup:
        raise _Unsupported(f"builtin attribute .{name}")  # e.g. .length: depends on the runtime type

    def getattr_(s: Scope, n: datetime) -> Any:
        o = obj(s, n) if top is None else s.get(top)
        if type(o) is dict:
            v = o.get(name)
        elif o is None:
            if safe:
                return None
            if nullable:
                raise errors.EvaluationError("attribute access on a null value")
            return None
        elif isinstance(o, collections.abc.Mapping):
            v = o.get(name)
        else:
            return None  # rule-engine resolves a non-mapping's unknown attribute to the default value
        return v if type(v) in _PLAIN else norm(v)
    return getattr_


def _getattr_object(obj: Fn, top: str | None, name: str, safe: bool, nullable: bool,
                    accessor: Callable[[Any, str], Any], norm: Callable[[Any], Any]) -> Fn:
    def getattr_object(s: Scope, n: datetime) -> Any:
        o = obj(s, n) if top is None else s.get(top)
        if o is None and (safe or nullable):
            if safe:
                return None
            raise errors.EvaluationError("attribute access on a null value")
        try:
            v = accessor(o, name)
        except (AttributeError, KeyError):
            return None
        return v if type(v) in _PLAIN else norm(v)
    return getattr_object


def _is_builtin_attribute(context: rule_engine.Context, kinds: tuple[Any, ...], name: str) -> bool:
    for kind in kinds:
        try:
            context.resolve_attribute_type(kind, name)
        except errors.AttributeResolutionError:
            continue
        return True
    return False


def _b_getitem(c: _Compiler, node: Any) -> Fn:
    container, item, safe, norm = c.build(node.container), c.build(node.item), node.safe, c.norm

    def getitem(s: Scope, n: datetime) -> Any:
        o = container(s, n)
        if o is None:
            if safe:
                return None
            raise _mismatch("container is null")
        i = item(s, n)
        t, ti = type(o), type(i)
        if not ((t is dict and ti is str) or (ti is int and (t is tuple or t is list or t is str))):
            o = _co(o)  # rare shapes: replay rule-engine on the coerced values
            i = _co(i)
            if isinstance(o, (bytes, str, tuple)):
                i = _integer_index(i)
        try:
            v = o[i]
        except (IndexError, KeyError):
            if safe:
                return None
            raise errors.LookupError(o, i) from None
        return v if type(v) in _PLAIN else norm(v)
    return getitem


def _b_contains(c: _Compiler, node: Any) -> Fn:
    container, member = c.build(node.container), c.build(node.member)

    def contains(s: Scope, n: datetime) -> bool:
        o = container(s, n)
        m = member(s, n)
        if type(m) is str and (type(o) is str or type(o) in _STR_CONTAINERS):
            return m in o
        return _contains_slow(o, m)
    return contains


def _b_equality(c: _Compiler, node: Any) -> Fn:
    left_node, right_node, negate = node.left, node.right, node.type == "ne"
    if c.const(left_node) is not _NOT_CONST:  # `null != x`: equality is symmetric and literals cannot raise
        left_node, right_node = right_node, left_node
    left, const = c.build(left_node), c.const(right_node)
    if const is None:  # `x != null`: nothing else coerces to None
        return lambda s, n: (left(s, n) is None) is not negate
    if const is not _NOT_CONST and type(const) in _EQ_FAST:
        kind = type(const)  # the common `x == 'literal'`: one type check, no second call

        def eq_const(s: Scope, n: datetime) -> bool:
            a = left(s, n)
            return ((a == const) if type(a) is kind else _eq(a, const)) is not negate
        return eq_const
    right = c.build(right_node)
    return lambda s, n: _eq(left(s, n), right(s, n)) is not negate


def _b_order(c: _Compiler, node: Any) -> Fn:
    left, op = c.build(node.left), _ORDER_OPS[node.type]
    const = c.const(node.right)
    if const is not _NOT_CONST and type(const) in _ORD_FAST:
        kind = type(const)

        def order_const(s: Scope, n: datetime) -> bool:
            a = left(s, n)
            return op(a, const) if type(a) is kind else _order(op, a, const)
        return order_const
    right = c.build(node.right)
    return lambda s, n: _order(op, left(s, n), right(s, n))


def _b_regex(c: _Compiler, node: Any) -> Fn:
    left, regex_type = c.build(node.left), node.type  # eq_fzm, eq_fzs, ne_fzm, ne_fzs
    use_search, negate = regex_type.endswith("fzs"), regex_type.startswith("ne")
    right = _regex_operand(c, node)

    def regex(s: Scope, n: datetime) -> bool:
        text = left(s, n)
        if not isinstance(text, str) and text is not None:
            raise _mismatch()
        compiled = right(s, n)
        if text is None or compiled is None:
            return (text is compiled) is not negate
        found = compiled.search(text) if use_search else compiled.match(text)
        return (found is not None) is not negate
    return regex


def _regex_operand(c: _Compiler, node: Any) -> Fn:
    if isinstance(node.right, ast.StringExpression):
        pattern = node._right  # already compiled by rule-engine with the context's flags
        return lambda s, n: pattern
    dynamic, flags = c.build(node.right), c.context.regex_flags

    def compiled(s: Scope, n: datetime) -> Any:
        value = dynamic(s, n)
        if isinstance(value, str):
            try:
                return re.compile(value, flags=flags)
            except re.error as error:
                message = "invalid regular expression"
                raise errors.RegexSyntaxError(message, error=error, value=value) from None
        if value is not None:
            raise _mismatch()
        return None
    return compiled


def _b_logic(c: _Compiler, node: Any) -> Fn:
    left, right = c.build(node.left), c.build(node.right)
    if node.type == "and":
        return lambda s, n: bool(left(s, n) and right(s, n))
    return lambda s, n: bool(left(s, n) or right(s, n))


def _b_add(c: _Compiler, node: Any) -> Fn:
    left, right, dec = c.build(node.left), c.build(node.right), c.dec
    return lambda s, n: _add(dec, left(s, n), right(s, n))


def _b_sub(c: _Compiler, node: Any) -> Fn:
    left, right, dec = c.build(node.left), c.build(node.right), c.dec
    return lambda s, n: _sub(dec, left(s, n), right(s, n))


def _b_arith(c: _Compiler, node: Any) -> Fn:
    left, right, dec = c.build(node.left), c.build(node.right), c.dec
    method, int_op = _ARITH[node.type]
    dec_op = getattr(dec, method)

    def arith(s: Scope, n: datetime) -> Any:
        a = left(s, n)
        if not _is_numeric(a):  # rule-engine checks the left operand before evaluating the right one
            raise _mismatch("not a numeric value")
        b = right(s, n)
        if not _is_numeric(b):
            raise _mismatch("not a numeric value")
        try:
            return _int_or(dec, dec_op, a, b, int_op)
        except ZeroDivisionError:
            raise errors.ArithmeticError("arithmetic error: division by zero") from None
        except ArithmeticError:
            raise errors.ArithmeticError("arithmetic error") from None
    return arith


def _b_unary(c: _Compiler, node: Any) -> Fn:
    right = c.build(node.right)
    if node.type == "not":
        return lambda s, n: not right(s, n)
    dec = c.dec

    def minus(s: Scope, n: datetime) -> Any:
        v = right(s, n)
        if not _is_numeric(v) and not isinstance(v, timedelta):
            raise _mismatch("not a numeric or timedelta value")
        return dec.minus(v) if type(v) is Decimal else -v
    return minus


def _b_ternary(c: _Compiler, node: Any) -> Fn:
    cond, yes, no = c.build(node.condition), c.build(node.case_true), c.build(node.case_false)
    return lambda s, n: yes(s, n) if cond(s, n) else no(s, n)


def _b_coalesce(c: _Compiler, node: Any) -> Fn:
    left, right = c.build(node.left), c.build(node.right)

    def coalesce(s: Scope, n: datetime) -> Any:
        v = left(s, n)
        return right(s, n) if v is None else v
    return coalesce


_BUILDERS: dict[type, Callable[[_Compiler, Any], Fn]] = {
    ast.BooleanExpression: _b_literal, ast.BytesExpression: _b_literal, ast.DatetimeExpression: _b_literal,
    ast.FloatExpression: _b_literal, ast.NullExpression: _b_literal, ast.StringExpression: _b_literal,
    ast.TimedeltaExpression: _b_literal, ast.MappingExpression: _b_literal,
    ast.ArrayExpression: _b_collection, ast.SetExpression: _b_collection,
    ast.SymbolExpression: _b_symbol, ast.GetAttributeExpression: _b_getattr,
    ast.GetItemExpression: _b_getitem, ast.ContainsExpression: _b_contains,
    ast.ComparisonExpression: _b_equality, ast.ArithmeticComparisonExpression: _b_order,
    ast.FuzzyComparisonExpression: _b_regex, ast.LogicExpression: _b_logic,
    ast.AddExpression: _b_add, ast.SubtractExpression: _b_sub, ast.ArithmeticExpression: _b_arith,
    ast.UnaryExpression: _b_unary, ast.TernaryExpression: _b_ternary, ast.CoalesceExpression: _b_coalesce,
}


def compile_rule(rule: rule_engine.Rule) -> Fn | None:
    """A closure ``fn(scope, now)`` equal to ``rule.evaluate``, or None if the rule uses an unsupported node.

    ``scope`` holds the plain top-level values (a missing symbol is null); ``now`` is ``$now``.
    """
    try:
        return _Compiler(rule.context).build(rule.statement.expression)
    except _Unsupported:
        return None

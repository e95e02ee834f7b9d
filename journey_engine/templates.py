"""Message templates (SPEC §3.9): Liquid, sandboxed. A template sees only plain data, cannot read
files (there is no loader, and `include` / `render` are not tags here), and its loops, output and
assignments are bounded; `'now' | date` reads the engine clock passed in, never the wall clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from io import StringIO
from typing import Any, ClassVar, TextIO

from liquid import BoundTemplate, DictLoader, Environment, RenderContext
from liquid.builtin.filters.misc import date as liquid_date
from liquid.exceptions import LiquidError
from liquid.filter import with_context
from liquid.output import LimitedStringIO

from .errors import did_you_mean

_CACHE_SIZE = 1024
_OUTPUT_LIMIT = 1_000_000  # bytes
# Tags that load other templates: the loader reads template files at load time and passes text.
_FILE_TAGS = ("include", "render")


class TemplateError(ValueError):
    """A template failed to render: a resource limit, or a filter given a value it cannot use."""


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A mistake found in template text before any render; line and column count from 1."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class _SandboxEnvironment(Environment):
    # Generous for a message, small enough that a runaway template fails in milliseconds.
    loop_iteration_limit: ClassVar[int | None] = 10_000
    output_stream_limit: ClassVar[int | None] = _OUTPUT_LIMIT
    local_namespace_limit: ClassVar[int | None] = 1_000_000
    context_depth_limit: ClassVar[int] = 20  # scopes: four base ones plus one per nested loop


class _Context(RenderContext):
    def get_buffer(self, buf: TextIO | None = None) -> StringIO:
        # python-liquid 2.3's limited buffer reads back with universal newlines, turning `\r\n` into
        # `\n` (or two); `newline=""` keeps text as written.
        carry = buf.size if isinstance(buf, LimitedStringIO) else 0
        return LimitedStringIO(limit=_OUTPUT_LIMIT - carry, newline="")


class Renderer:
    """Renders Liquid text against plain data, parsing each distinct source once."""

    def __init__(self) -> None:
        self._environments = {html: _environment(autoescape=html) for html in (False, True)}
        self._parsed: dict[tuple[str, bool], BoundTemplate] = {}

    def render(
        self, source: str, context: Mapping[str, Any], *, now: datetime | None = None, html: bool = False
    ) -> str:
        """Render `source`; unset variables render empty. `html` escapes values for HTML bodies.

        `now` is the engine clock: the `now` / `today` variables and what `'now' | date` shows
        (without it they render empty).
        Raises `TemplateError` when the template breaks a limit or misuses a filter.
        """
        data = {key: _plain(value) for key, value in context.items()}
        # Liquid's built-in `now` and `today` read the wall clock: always shadow them.
        data["now"], data["today"] = now, (now.date() if now is not None else None)
        try:
            template = self._template(source, html)
            scope = _Context(template, globals=template.make_globals(data))
            buffer = scope.get_buffer()
            template.render_with_context(scope, buffer)
            return buffer.getvalue()
        except LiquidError as error:
            raise TemplateError(_describe(error, source)) from error

    def check(self, source: str, metrics: Collection[str] = ()) -> TemplateProblem | None:
        """The first syntax error, unknown filter, or variable outside what templates see (SPEC §3: `traits`,
        `metrics` as declared, `segments`, `user_id`, `journey`, `message`), for the loader to report."""
        try:
            template = self._template(source, False)
        except LiquidError as error:
            return _problem(error, source)
        analysis = template.analyze(include_partials=False)
        filters = self._environments[False].filters
        for name, spans in analysis.filters.items():
            if name not in filters:
                line, column = _position(source, spans[0].index)
                return TemplateProblem(line, column, f"unknown filter '{name}'")
        for variables in analysis.globals.values():
            for variable in variables:
                message = _outside(list(variable.segments), metrics)
                if message is not None:
                    line, column = _position(source, variable.span.index)
                    return TemplateProblem(line, column, message)
        return None

    def _template(self, source: str, html: bool) -> BoundTemplate:
        template = self._parsed.get((source, html))
        if template is None:
            # A workspace has a fixed set of templates; the bound only guards against callers that
            # render ad-hoc text. Plain dict operations keep concurrent renders safe.
            if len(self._parsed) >= _CACHE_SIZE:
                self._parsed.clear()
            template = self._parsed[(source, html)] = self._environments[html].from_string(source)
        return template


# what a template's top-level names hold: the names below them it may read (None: any)
_CONTEXT: dict[str, frozenset[str] | None] = {
    "traits": None, "metrics": None, "segments": frozenset({"size", "first", "last"}),
    "user_id": frozenset({"size"}), "journey": frozenset({"name", "key", "data"}),
    "message": frozenset({"id", "channel"}), "now": frozenset(), "today": frozenset()}


def _outside(path: list[object], metrics: Collection[str]) -> str | None:
    """Why a variable path names nothing a template can see, or None when it is fine."""
    root = str(path[0])
    if root not in _CONTEXT:
        return f"unknown variable `{root}`{did_you_mean(root, _CONTEXT)}"
    if len(path) < 2 or not isinstance(path[1], str):
        return None
    name = path[1]
    if root == "metrics" and name not in metrics:
        return f"unknown metric `{name}`{did_you_mean(name, metrics)}: declare it under `metrics:`"
    allowed = _CONTEXT[root]
    if allowed is not None and name not in allowed:
        return f"`{root}` has no `{name}`{did_you_mean(name, allowed)}"
    return None


def _environment(*, autoescape: bool) -> Environment:
    environment = _SandboxEnvironment(loader=DictLoader({}), autoescape=autoescape)
    for tag in _FILE_TAGS:
        del environment.tags[tag]
    environment.add_filter("date", _date)
    return environment


@with_context
def _date(value: object, fmt: object, *, context: RenderContext) -> object:
    """Liquid's `date`, with `now` / `today` taken from the render's clock, not the wall clock."""
    if value in ("now", "today"):
        value = context.resolve("now", default=None)
        if not isinstance(value, datetime):
            return ""
    return liquid_date(value, fmt, environment=context.env)


def _plain(value: object) -> object:
    """Plain data only: whatever else a caller passes is shown as text, never exposed as an object."""
    if value is None or isinstance(value, bool | int | float | Decimal | date):
        return value
    if isinstance(value, str):
        return str(value)  # drops str subclasses such as Markup, which would skip escaping
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Set):
        return sorted((_plain(item) for item in value), key=str)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def _position(source: str, index: int) -> tuple[int, int]:
    index = min(max(index, 0), len(source))
    return source.count("\n", 0, index) + 1, index - (source.rfind("\n", 0, index) + 1) + 1


def _problem(error: LiquidError, source: str) -> TemplateProblem:
    token = error.token
    # Errors found at the end of the text (an unclosed block) carry no position: point at the end.
    index = token.start_index if token is not None and token.start_index >= 0 else len(source)
    line, column = _position(source, index)
    return TemplateProblem(line, column, str(error.message))


def _describe(error: LiquidError, source: str) -> str:
    return str(_problem(error, source)) if error.token is not None else str(error.message)

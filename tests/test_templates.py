"""Sandboxed Liquid templates: plain data in, text out, bounded work, no files, no wall clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journey_engine import templates
from journey_engine.templates import Renderer, TemplateError, TemplateProblem

CONTEXT: dict[str, Any] = {
    "traits": {"first_name": "Ada", "plan": "pro", "created_at": datetime(2026, 1, 5, 9, tzinfo=UTC)},
    "metrics": {"orders": 3},
    "user_id": "u1",
    "journey": {"name": "onboarding", "key": None, "data": {"source": "ads"}},
    "message": {"id": "welcome_email", "channel": "email"},
}
NOW = datetime(2026, 2, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


def test_renders_the_spec_context(renderer: Renderer) -> None:
    """Templates see traits, metrics, user_id, journey and message."""
    source = "{{ traits.first_name }} {{ metrics.orders }} {{ user_id }} {{ journey.data.source }} "
    source += "{{ message.id }}"
    assert renderer.render(source, CONTEXT) == "Ada 3 u1 ads welcome_email"


def test_undefined_renders_empty_and_default_works(renderer: Renderer) -> None:
    """An unset trait renders as nothing, however deep, and `default` fills it in."""
    source = "[{{ traits.last_name }}][{{ nothing.at.all }}][{{ traits.nickname | default: 'there' }}]"
    assert renderer.render(source, CONTEXT) == "[][][there]"


def test_undefined_values_in_tags_do_not_fail(renderer: Renderer) -> None:
    """Loops and conditions over unset values render nothing rather than failing."""
    source = "{% for x in traits.missing %}x{% endfor %}{% if traits.missing > 3 %}big{% endif %}ok"
    assert renderer.render(source, CONTEXT) == "ok"


@pytest.mark.parametrize(
    "expression",
    [
        "traits.__class__",
        "traits.__class__.__mro__",
        "traits.items",
        "traits.first_name.upper",
        "traits.first_name.__len__",
        "traits.created_at.year",
        "traits.created_at.__class__.__init__.__globals__",
        "traits['__class__']",
        "user_id.__class__.__base__.__subclasses__",
    ],
)
def test_python_attributes_are_out_of_reach(renderer: Renderer, expression: str) -> None:
    """Only keys and indexes resolve: a template cannot reach a Python attribute or method."""
    assert renderer.render("{{ " + expression + " }}", CONTEXT) == ""


def test_objects_in_the_context_are_shown_as_text_only(renderer: Renderer) -> None:
    """A non-plain value that slips into the context is rendered as text, never looked into."""

    class Leaky:
        def __getitem__(self, key: str) -> str:
            return "secret"

        def __str__(self) -> str:
            return "leaky"

    assert renderer.render("{{ thing }}|{{ thing.password }}", {"thing": Leaky()}) == "leaky|"


def test_sets_render_as_sorted_lists(renderer: Renderer) -> None:
    """Segments (a set) can be joined and tested like a list, in a stable order."""
    context = {"segments": {"power_users", "new_users"}}
    source = "{{ segments | join: ', ' }}{% if segments contains 'new_users' %}!{% endif %}"
    assert renderer.render(source, context) == "new_users, power_users!"


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in (1..100000000) %}x{% endfor %}",
        "{% for i in (1..1000) %}{% for j in (1..1000) %}{% endfor %}{% endfor %}",
        "{% for i in (1..5000) %}{% for j in (1..5000) %}{% endfor %}{% endfor %}",
    ],
    ids=["long", "nested", "nested-long"],
)
def test_unbounded_loops_are_stopped(renderer: Renderer, source: str) -> None:
    """Loop iterations are bounded (nested loops multiply), so a runaway loop fails fast."""
    with pytest.raises(TemplateError, match="loop iteration limit"):
        renderer.render(source, CONTEXT)


def test_output_is_bounded(renderer: Renderer) -> None:
    """A template cannot produce more than a megabyte of text."""
    source = "{% for i in (1..5000) %}" + "x" * 1000 + "{% endfor %}"
    with pytest.raises(TemplateError, match="output stream limit"):
        renderer.render(source, CONTEXT)


def test_assignments_are_bounded(renderer: Renderer) -> None:
    """Doubling a string in a loop is stopped long before memory runs out."""
    source = "{% assign s = 'xxxxxxxxxx' %}{% for i in (1..60) %}{% assign s = s | append: s %}{% endfor %}"
    with pytest.raises(TemplateError, match="namespace limit"):
        renderer.render(source, CONTEXT)


@pytest.mark.parametrize(
    "source",
    ["{% include 'secret.txt' %}", "{% render 'secret.txt' %}", "{% liquid\ninclude 'secret.txt' %}"],
    ids=["include", "render", "liquid-tag"],
)
def test_templates_cannot_read_files(
    renderer: Renderer, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`include` and `render` are not tags here: a load-time error, and never the file's content."""
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    monkeypatch.chdir(tmp_path)
    problem = renderer.check(source)
    assert problem is not None and "unexpected tag" in problem.message
    with pytest.raises(TemplateError, match="unexpected tag") as raised:
        renderer.render(source, CONTEXT)
    assert "TOP SECRET" not in str(raised.value)


def test_now_is_the_engine_clock(renderer: Renderer) -> None:
    """`now`, `today` and `'now' | date` show the time passed in, e.g. the virtual clock."""
    source = "{{ 'now' | date: '%Y-%m-%d %H:%M' }}|{{ now | date: '%H:%M' }}|{{ today }}"
    assert renderer.render(source, CONTEXT, now=NOW) == "2026-02-01 12:30|12:30|2026-02-01"


def test_without_a_clock_now_is_empty_never_the_wall_clock(renderer: Renderer) -> None:
    """Without `now`, Liquid's built-in wall-clock `now` and `today` are shadowed and render empty."""
    assert renderer.render("[{{ 'now' | date: '%Y' }}][{{ now }}][{{ today }}]", CONTEXT) == "[][][]"


def test_dates_format(renderer: Renderer) -> None:
    """Date-times in the context can be formatted with `date`."""
    assert renderer.render("{{ traits.created_at | date: '%d %b %Y' }}", CONTEXT) == "05 Jan 2026"


def test_html_escapes_values_not_markup(renderer: Renderer) -> None:
    """With `html=True` values are escaped for HTML bodies; the template's own markup is kept."""
    context = {"traits": {"first_name": "<script>x</script>"}}
    assert renderer.render("<p>{{ traits.first_name }}</p>", context, html=True) == (
        "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    )
    assert renderer.render("{{ traits.first_name }}", context) == "<script>x</script>"


def test_filter_misuse_is_a_render_error_with_its_place(renderer: Renderer) -> None:
    """A filter given a value it cannot use raises `TemplateError` naming line and column."""
    with pytest.raises(TemplateError, match=r"line 2, column \d+: divided_by"):
        renderer.render("total\n{{ metrics.orders | divided_by: 0 }}", CONTEXT)


def test_check_accepts_good_templates(renderer: Renderer) -> None:
    """A template without mistakes has no problem."""
    source = "Hi {{ traits.first_name | default: 'there' | upcase }}{% if traits.vip %}!{% endif %}"
    assert renderer.check(source) is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello\n  {% if %}", TemplateProblem(2, 6, "missing expression")),
        ("Hi {{ traits.first_name", TemplateProblem(1, 4, "expected '}}', found end of file")),
        ("a\nb\n  {{ x | upcasse }}", TemplateProblem(3, 10, "unknown filter 'upcasse'")),
        ("{% for x in y %}\nno end", TemplateProblem(2, 7, "expected tag endfor, found end of expression")),
    ],
    ids=["syntax", "unclosed-output", "unknown-filter", "unclosed-block"],
)
def test_check_reports_line_and_column(renderer: Renderer, source: str, expected: TemplateProblem) -> None:
    """Mistakes are found at load time with their line and column (an unclosed block points at the end)."""
    assert renderer.check(source) == expected


def test_problem_reads_as_a_location_and_a_message() -> None:
    """A problem prints as `line L, column C: message` for the loader to prefix with the file."""
    assert str(TemplateProblem(2, 6, "missing expression")) == "line 2, column 6: missing expression"


def test_each_source_is_parsed_once(renderer: Renderer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering the same text again reuses the parsed template."""
    parsed: list[str] = []
    original = templates._SandboxEnvironment.from_string

    def counting(self: Any, source: str, **kwargs: Any) -> Any:
        parsed.append(source)
        return original(self, source, **kwargs)

    monkeypatch.setattr(templates._SandboxEnvironment, "from_string", counting)
    for _ in range(3):
        renderer.render("Hi {{ user_id }}", CONTEXT)
    renderer.render("Bye {{ user_id }}", CONTEXT)
    assert parsed == ["Hi {{ user_id }}", "Bye {{ user_id }}"]


@given(text=st.text().filter(lambda t: "{" not in t))
def test_text_without_markup_renders_unchanged(text: str) -> None:
    """Plain text (no `{`) is its own rendering: templates never alter what they do not mark up."""
    assert Renderer().render(text, CONTEXT) == text


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)


@given(value=plain)
def test_any_plain_value_renders_without_error(value: object) -> None:
    """Whatever plain data a trait holds, outputting it never fails."""
    Renderer().render("{{ traits.x }}{% for y in traits.x %}{{ y }}{% endfor %}", {"traits": {"x": value}})


def test_line_endings_are_kept(renderer: Renderer) -> None:
    """CRLF and lone CR in template text, values and captures come out exactly as written."""
    source = "a\r\nb {{ x }}\r\n{% capture c %}1\r\n2{% endcapture %}{{ c }}\r"
    assert renderer.render(source, {"x": "c\rd"}) == "a\r\nb c\rd\r\n1\r\n2\r"


def test_nesting_depth_is_bounded(renderer: Renderer) -> None:
    """A dozen nested loops render; far deeper nesting is stopped by the context depth limit."""

    def nested(depth: int) -> str:
        return "".join(f"{{% for i{k} in (1..1) %}}" for k in range(depth)) + "x" + "{% endfor %}" * depth

    assert renderer.render(nested(12), CONTEXT) == "x"
    with pytest.raises(TemplateError, match="context depth"):
        renderer.render(nested(25), CONTEXT)

"""Rules that do not compile say what is wrong and what was probably meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine.compiler import load_workspace
from journey_engine.errors import WorkspaceError
from journey_engine.model import Metric
from journey_engine.rules import RuleCompiler, RuleProblem


@pytest.fixture(scope="module")
def compiler() -> RuleCompiler:
    return RuleCompiler({"orders": Metric.model_validate({"count": "Order Completed"})}, {"vip"})


@pytest.mark.parametrize(("text", "expected"), [
    ('event.nam == "Signed Up"', "unknown attribute `nam`; did you mean `name`?"),
    ("journey.entred_at != null", "unknown attribute `entred_at`; did you mean `entered_at`?"),
    ("metrics.ordrs > 0", "unknown metric `ordrs`; did you mean `orders`?"),
    ("traitz.plan == 'pro'", "unknown name `traitz`; did you mean `traits`?"),
    ("foo == 1", "unknown name `foo`; rules see traits, metrics, segments, event, properties, journey, "
                 "user_id and $now (a trait is written `traits.foo`)"),
    ("$nowz > traits.created_at", "unknown built-in `$nowz`; did you mean `$now`?"),
    ("$tody == null", "unknown built-in `$tody`; did you mean `$today`?"),
    ("$xyzzy == null", "unknown built-in `$xyzzy`; write `$now` for the engine clock"),
    ("$random() < 0.5", "`$random` is not available: a rule gives the same answer in every run"),
    ("'vip2' in segments", "unknown segment `vip2`; did you mean `vip`?"),
], ids=["event-attribute", "journey-attribute", "metric", "symbol-close", "symbol-far", "builtin-close",
        "builtin-today", "builtin-far", "random", "segment"])
def test_an_unknown_name_is_refused_with_a_suggestion(compiler: RuleCompiler, text: str, expected: str) -> None:
    """Misspelled attributes, symbols, built-ins and segments are load errors naming the likely fix."""
    with pytest.raises(RuleProblem) as caught:
        compiler.compile(text)
    assert str(caught.value) == f"rule `{text}`: {expected}"


@pytest.mark.parametrize("text", ["$now > traits.created_at", "$today == null", "$parse_datetime('2026-01-01') < $now",
                                  "$abs(-1) == 1"])
def test_real_builtins_compile(compiler: RuleCompiler, text: str) -> None:
    """The engine clock and rule-engine's own functions are accepted."""
    assert compiler.compile(text).text == text


def test_a_misspelled_builtin_fails_the_workspace_at_its_line(tmp_path: Path) -> None:
    """`$nowz` in a segment rule stops the load with file:line:col instead of compiling silently."""
    (tmp_path / "segments.yaml").write_text(
        'version: 1\nsegments:\n  recent: "$nowz - traits.created_at < t\'P7D\'"\n', encoding="utf-8")
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    [problem] = [p for p in caught.value.problems if p.severity == "error"]
    assert (Path(problem.file).name, problem.line, problem.column) == ("segments.yaml", 3, 3)
    assert "unknown built-in `$nowz`; did you mean `$now`?" in problem.message

"""A scenario that does not load is refused with file:line:col naming the step's own line (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.cli import app
from journey_engine.errors import ScenarioError
from journey_engine.simulation import load_scenario, run_scenario

WORKSPACE = Path(__file__).parent / "workspaces" / "simulation"
HEAD = f"scenario: errors\nworkspace: {WORKSPACE}\nstart: 2026-01-05T09:00:00Z\nsteps:\n  - identify: u1\n"


def scenario(tmp_path: Path, steps: str) -> Path:
    """A scenario file of HEAD (whose steps start on line 5) and `steps`."""
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + steps, encoding="utf-8")
    return path


def refusal(path: Path) -> str:
    """The text of the ScenarioError that loading and running `path` raises, relative to its folder."""
    with pytest.raises(ScenarioError) as caught:
        run_scenario(load_scenario(path))
    return str(caught.value).replace(f"{path.parent}/", "")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param("  - track: u1\n    evnt: Signed Up\n",
                     "s.yaml:6:5: `event` is required in steps.1\n"
                     "s.yaml:7:5: unknown key `evnt` in steps.1; did you mean `event`?", id="misspelled-key"),
        pytest.param("  - wait: 1d\n  - expect: {user: u1, sentt: []}\n",
                     "s.yaml:7:24: unknown key `sentt` in steps.2.expect; did you mean `sent`?", id="expect-key"),
        pytest.param('  - track: ""\n    event: Signed Up\n',
                     "s.yaml:6:5: steps.1.track: must not be empty: write the user id or event name", id="empty-user"),
        pytest.param("  - alias: u2\n    previous_id: ' '\n",
                     "s.yaml:7:5: steps.1.previous_id: must not be empty: write the user id or event name",
                     id="blank-previous-id"),
        pytest.param("  - wait: 2x\n",
                     "s.yaml:6:5: steps.1.wait: `2x` is not a duration: write it like 30s, 5m, 4h, 2d, 1w, 1h30m "
                     "or PT90M", id="bad-duration"),
        pytest.param("  - expect: {user: u1, state: done}\n",
                     "s.yaml:6:5: steps.1.expect: `state`, `exited` and `key` belong to a journey: "
                     "add `journey: <name>`",
                     id="state-without-journey"),
    ],
)
def test_a_bad_step_is_named_at_its_own_line_and_column(tmp_path: Path, steps: str, expected: str) -> None:
    """Step mistakes point inside the step, never at `the file`, and say how to fix them."""
    assert refusal(scenario(tmp_path, steps)) == expected


@pytest.mark.parametrize(
    ("expect", "expected"),
    [
        pytest.param("{user: u1, journey: onbording}",
                     "s.yaml:6:24: unknown journey `onbording`; did you mean `onboarding`?", id="journey"),
        pytest.param("{user: u1, segments_include: [pros]}",
                     "s.yaml:6:43: unknown segment `pros`; did you mean `pro`?", id="segments-include"),
        pytest.param("{user: u1, segments_exclude: [pro, vip]}",
                     "s.yaml:6:48: unknown segment `vip`; known: `pro`", id="segments-exclude"),
    ],
)
def test_an_expectation_naming_what_the_workspace_lacks_is_refused(tmp_path: Path, expect: str,
                                                                   expected: str) -> None:
    """Unknown journeys and segments in an `expect` are load errors with a suggestion, not failed checks."""
    assert refusal(scenario(tmp_path, f"  - expect: {expect}\n")) == expected


def test_an_expectation_without_state_does_not_check_the_state(tmp_path: Path) -> None:
    """`journey` without `state` checks the rest (here: what was sent), not "not in the journey"."""
    path = scenario(tmp_path, "  - track: u1\n    event: Signed Up\n"
                              "  - expect: {user: u1, journey: onboarding, sent: [hello]}\n")
    result = run_scenario(load_scenario(path))
    assert result.passed, [f.describe(str(path)) for f in result.failures]
    assert result.expectations == 1


def test_state_null_still_means_not_in_the_journey(tmp_path: Path) -> None:
    """An explicit `state: null` is checked: a user in the journey fails it with a diff."""
    path = scenario(tmp_path, "  - track: u1\n    event: Signed Up\n"
                              "  - expect: {user: u1, journey: onboarding, state: null}\n")
    [failure] = run_scenario(load_scenario(path)).failures
    assert (failure.expected, failure.actual) == ({"state": None}, {"state": "welcome"})


@pytest.mark.parametrize("steps", ['  - track: ""\n    event: Signed Up\n', "  - track: u1\n    evnt: Signed Up\n"],
                         ids=["empty-user", "misspelled-key"])
def test_the_cli_refuses_a_bad_step_with_exit_2(tmp_path: Path, steps: str) -> None:
    """`journey simulate` prints file:line:col: message for a bad step and exits 2."""
    path = scenario(tmp_path, steps)
    result = CliRunner().invoke(app, ["simulate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:6:5: " in result.output.replace("\n", "")
